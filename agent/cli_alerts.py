"""`sightline alerts check|list --tenant T`: a tenant's quality against the alert thresholds,
raised once per window to the log and the webhook (run it from cron), and the alerts raised."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from .cli_common import counted, duration, identifier, one_line, positive_int
from .config import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("alerts", help="check a tenant's quality against the alert thresholds "
                                      "(cron), or list the alerts raised")
    actions = p.add_subparsers(dest="action", required=True)
    check = actions.add_parser(
        "check", help="evaluate the window; each alert is raised (logged, POSTed to "
                      "SIGHTLINE_ALERT_WEBHOOK) once per window, and again if it turns "
                      "critical")
    check.add_argument("--tenant", type=identifier, required=True)
    check.add_argument("--since", type=duration, default=3600.0,
                       help="the window: 30m, 1h, 24h (default 1h); an alert is raised once "
                            "per window-long bucket (again if it turns critical), however often "
                            "this runs")
    check.add_argument("--min-turns", type=positive_int, default=5,
                       help="a rate over fewer turns is not judged (default 5); failed "
                            "speech is, however few")
    check.add_argument("--json", action="store_true", help="the alerts raised now, as JSON")
    listing = actions.add_parser("list", help="the alerts raised for the tenant, newest first")
    listing.add_argument("--tenant", type=identifier, required=True)
    listing.add_argument("--json", action="store_true")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    import time
    from datetime import UTC, datetime, timedelta

    import aiohttp

    from memory.alert_log import claim, recent, undelivered
    from memory.db import Database
    from memory.quality import window_quality

    from .alerts import deliver, evaluate, log_alert

    db = await Database.open(settings.database_url, settings.data_dir)
    try:
        if args.action == "list":
            rows = await recent(db.pool, args.tenant)
            if args.json:
                print(json.dumps(rows, indent=2))
                return 0
            if not rows:
                print(f"No alerts raised for tenant {args.tenant}.")
            for r in rows:
                sent = "delivered" if r["delivered_at"] else "not delivered"
                print(f"{r['raised_at'][:19]}  {one_line(r['severity']):<8} "
                      f"{one_line(r['message'])} ({sent})")
            return 0
        until = datetime.now(UTC)
        quality = await window_quality(db.pool, args.tenant,
                                       until - timedelta(seconds=args.since), until)
        bucket = int(time.time() // args.since)
        raised: dict[str, dict[str, Any]] = {}
        resent: list[str] = []
        for alert in evaluate(quality, args.min_turns):
            key = f"{args.tenant}:{alert['alert']}:{args.since:g}s:{bucket}"
            # else raised already in this window, at this severity or a higher one
            if await claim(db.pool, key, alert):
                log_alert(alert)
                raised[key] = alert
        if settings.alert_webhook:  # this window's new alerts, and those not taken before
            async with undelivered(db.pool, args.tenant, until - timedelta(seconds=args.since)
                                   ) as pending, aiohttp.ClientSession() as http:
                # at once: a receiver that is down costs each alert its retries, not the sum
                took = await asyncio.gather(*(
                    deliver(http, settings.alert_webhook, alert)
                    for alert in pending.alerts.values()))
                sent = [key for key, ok in zip(pending.alerts, took, strict=True) if ok]
                await pending.mark_delivered(sent)
            resent = [key for key in sent if key not in raised]
    finally:
        await db.close()
    if args.json:
        print(json.dumps(list(raised.values()), indent=2))
    else:
        for alert in raised.values():
            print(f"{one_line(alert['severity']):<8} {one_line(alert['message'])}")
        if not raised:
            print(f"No new alert for tenant {args.tenant} ({quality['turns']} turns in the "
                  "window).")
        if resent:
            print(f"Sent {counted(len(resent), 'alert')} raised earlier in the window that the "
                  "webhook had not taken.")
    return 0
