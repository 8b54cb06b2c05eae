"""`sightline quality --tenant T --since 24h`: a tenant's quality signals over a window."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .cli_common import counted, duration, identifier, one_line
from .config import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("quality", help="a tenant's quality signals over a window: retries, "
                                       "escalations, confidence, latency, completion, "
                                       "lookups lost")
    p.add_argument("--tenant", type=identifier, required=True)
    p.add_argument("--since", type=duration, default=86400.0,
                   help="how far back: 30m, 24h, 7d (default 24h)")
    p.add_argument("--sessions", action="store_true", help="also list each session")
    p.add_argument("--json", action="store_true", help="one JSON object")


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def _ms(values: dict[str, float | None]) -> str:
    return " / ".join("-" if v is None else f"{v:.0f}" for v in values.values()) + " ms"


_SPEECH_WORDS = {"stt": "failed recognitions", "tts": "failed syntheses"}


def format_quality(q: dict[str, Any]) -> str:
    """The signals as text, one line per signal (what a session recorded, escaped)."""
    tiers = ", ".join(f"{n} by tier {t}" if t != "none" else f"{n} unanswered"
                      for t, n in q["answered_by_tier"].items()) or "-"
    confidence = ("-" if q["mean_confidence"] is None
                  else f"{q['mean_confidence']:.2f} over {q['turns_with_confidence']} turns")
    s, lk = q["sessions"], q["lookups"]
    speech = ", ".join(
        f"{f['failures']} {_SPEECH_WORDS[engine]} in {counted(f['sessions'], 'session')}"
        for engine, f in q["speech_failures"].items()) or "none"
    completion = ", ".join(f"{n} {k}" for k, n in sorted(s["by_completion"].items())) or "-"
    return "\n".join(map(one_line, [
        f"Quality of tenant {q['tenant']}  {q['since'][:19]} .. {q['until'][:19]} UTC",
        f"  turns: {q['turns']} ({tiers}; {q['failed_turns']} failed"
        + (f", {q['handed_off_turns']} handed to a person" if q["handed_off_turns"] else "")
        + ")",
        f"  retry rate: {_pct(q['retry_rate'])} (rephrased or repeated; "
        f"{q['said_unhelpful']} said it did not help)",
        f"  escalation rate: {_pct(q['escalation_rate'])} climbed a tier within the turn; "
        f"{_pct(q['top_tier_rate'])} answered by the top tier",
        f"  mean stated confidence: {confidence}",
        f"  first words p50/p95/p99: {_ms(q['first_token_ms'])}",
        f"  end of turn p50/p95/p99: {_ms(q['turn_latency_ms'])} "
        f"({q['timed_turns']} timed turns)",
        f"  interruptions: {q['interruptions']}",
        f"  sessions: {s['started']} started, {s['ended']} ended ({completion}); "
        f"completion {_pct(s['completion_rate'])}; {s['handoffs']} handed off to a human",
        f"  speech failures: {speech}",
        f"  lookups lost: {_pct(lk['lost_rate'])} ({lk['lost']} of {lk['questions']} questions "
        f"answered without knowledge or memory: timed out or failed); "
        f"wait p50/p95/p99: {_ms(lk['wait_ms'])}",
    ]))


async def run(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from memory.db import Database
    from memory.quality import session_quality, window_quality

    until = datetime.now(UTC)
    since = until - timedelta(seconds=args.since)
    db = await Database.open(settings.database_url, settings.data_dir)
    try:
        quality = await window_quality(db.pool, args.tenant, since, until)
        if args.sessions:
            quality["session_list"] = await session_quality(db.pool, args.tenant, since, until)
    finally:
        await db.close()
    if args.json:
        print(json.dumps(quality, indent=2, default=float))
        return 0
    print(format_quality(quality))
    for s in quality.get("session_list", []):
        print(one_line(f"  {s['session_id']:<30} {s['user_id'] or '-':<12} "
                       f"{s['started_at'][:19]}  {s['completion']:<16} "
                       f"{counted(s['turns'], 'turn')}, "
                       f"{counted(s['retries'], 'retry', 'retries')}, "
                       f"{s['interruptions']} interrupted"))
    return 0
