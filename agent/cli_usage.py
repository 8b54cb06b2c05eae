"""`sightline usage --tenant T --month 2026-11`: what a tenant used in a month, for billing."""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from typing import Any

from .cli_common import counted, identifier, month, one_line
from .config import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("usage", help="a tenant's usage in a month: sessions, screen and voice "
                                     "minutes, turns, model dollars by tier, knowledge, memory")
    p.add_argument("--tenant", type=identifier, required=True)
    p.add_argument("--month", type=month, help="YYYY-MM, UTC (default: this month)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object")
    out.add_argument("--csv", action="store_true",
                     help="CSV rows tenant,month,metric,value (nested figures get dotted names)")


def format_usage(u: dict[str, Any]) -> str:
    """The month's usage as text, with what sessions recorded (model names) escaped."""
    k, m = u["knowledge"], u["memory"]
    lines = [
        f"Usage of tenant {u['tenant']} in {u['month']} (UTC)",
        f"  sessions: {u['sessions']} ({u['live_sessions']} live), {counted(u['users'], 'user')}",
        f"  screen share: {u['screen_share_minutes']:.2f} min ({u['frames_sampled']} frames "
        f"sampled, {u['frames_kept']} kept)",
        f"  voice: {u['voice_minutes']:.2f} min heard, {u['spoken_minutes']:.2f} min spoken "
        f"({u['tts_characters']} characters)",
        f"  turns: {u['turns']}, {u['turns_answered']} answered",
        f"  model and speech cost: ${u['model_cost_usd']:.6f}",
    ]
    for use, figures in u["cost_by_use"].items():
        models = ", ".join(f"{name} {counted(f['calls'], 'call')}"
                           for name, f in figures["models"].items())
        lines.append(f"    {use}: ${figures['cost_usd']:.6f} ({models})")
    for command, figures in u["outside_sessions"].items():
        lines.append(f"    of which outside sessions, `{command}`: ${figures['cost_usd']:.6f} "
                     f"({counted(figures['calls'], 'call')})")
    lines += [
        f"  image tokens: {u['image_tokens']}",
        f"  knowledge: {k['recalls']} recalls ({k['recalls_lost']} timed out or failed), "
        f"{k['hits']} chunks used; "
        f"{k['documents_ingested']} documents ingested, {k['documents_stored']} stored "
        f"({k['chunks_stored']} chunks)",
        f"  memory: {m['recalled']} items recalled, {m['updates']} updates, "
        f"{m['facts_written']} facts written",
        f"  handed off to a human: {u['handoffs']}",
    ]
    if u["unpriced_models"]:
        lines.append("  not priced (counted as $0): " + ", ".join(u["unpriced_models"]))
    return "\n".join(map(one_line, lines))


# a spreadsheet runs a cell that starts with one of these as a formula (OWASP: CSV injection)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def csv_cell(value: Any) -> Any:
    """The value as a CSV cell a spreadsheet shows as text: names come from users (a tenant
    `=HYPERLINK(...)`, a model's name), so text that would start a formula gets a leading `'`.
    Numbers, negative ones too, are left as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) \
            and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


async def run(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from memory.db import Database
    from memory.usage import month_usage, usage_rows

    chosen = args.month or datetime.now(UTC).strftime("%Y-%m")
    db = await Database.open(settings.database_url, settings.data_dir)
    try:
        usage = await month_usage(db.pool, args.tenant, chosen)
    finally:
        await db.close()
    if args.json:
        print(json.dumps(usage, indent=2))
    elif args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(("tenant", "month", "metric", "value"))
        writer.writerows(tuple(map(csv_cell, row)) for row in usage_rows(usage))
    else:
        print(format_usage(usage))
    return 0
