"""`sightline screen timeline|search`: what appeared on users' screens, from the timeline."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from .cli_common import identifier, one_line, positive_int, query
from .config import Settings

if TYPE_CHECKING:
    from memory.screen_timeline import ScreenEvent


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    screen = sub.add_parser("screen", help="the screen timeline: what appeared on users' screens")
    screen_sub = screen.add_subparsers(dest="screen_command", required=True)
    p = screen_sub.add_parser("timeline", help="one session's screen events, in screen time")
    p.add_argument("session_id", type=identifier, help="the session (see `sightline costs`)")
    p.add_argument("--tenant", type=identifier, help="only if the session is this tenant's")
    p.add_argument("--json", action="store_true", help="the events as JSON")
    p = screen_sub.add_parser("search", help="screen events that match a question, best first")
    p.add_argument("query", type=query, help="words or a question, e.g. \"JSONDecodeError\"")
    p.add_argument("--tenant", type=identifier,
                   required=True, help="search this tenant's timeline only")
    p.add_argument("--user", type=identifier,
                   help="only this user's screens (default: every user's)")
    p.add_argument("--k", type=positive_int, default=10, help="how many events (default 10)")
    p.add_argument("--json", action="store_true", help="the events as JSON")


def _print(events: list[ScreenEvent], *, with_session: bool) -> None:
    for event in events:
        where = f"{one_line(event.session_id)} " if with_session else ""
        flag = "  ERROR" if event.is_error else ""
        print(f"{where}t={event.t:7.1f}s  {event.at:%Y-%m-%d %H:%M:%S}  "
              f"{one_line(event.content_type):<5} {one_line(event.reason)}{flag}")
        for line in event.text.splitlines():
            print(f"    {one_line(line)}")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    from memory.db import Database
    from memory.screen_timeline import ScreenTimeline
    from memory.store import Store

    from .command_ledger import CommandLedger
    from .components import embedder_on_use

    db = await Database.open(settings.database_url, settings.data_dir)
    # a search's question embedded by Gemini is billed: the tenant's, with no session
    ledger, meter = CommandLedger.metered(settings, args.tenant or "", "screen search")
    embedder = embedder_on_use(settings, record=meter.embedding_call)
    try:
        async with ledger.saving(Store(db.pool)):
            try:
                timeline = ScreenTimeline(db.pool, embedder)
                if args.screen_command == "timeline":
                    events = await timeline.session_events(args.tenant, args.session_id)
                else:
                    events = await timeline.search(args.tenant, args.query, user_id=args.user,
                                                   k=args.k)
            finally:
                await embedder.aclose()
    finally:
        await db.close()
    if args.json:
        print(json.dumps([event.as_dict() for event in events], indent=2))
    elif not events and args.screen_command == "timeline":
        print(f"No screen events for session {args.session_id}"
              + (f" of tenant {args.tenant}." if args.tenant else "."))
    elif not events:
        print(f"No screen events of tenant {args.tenant} match.")
    else:
        _print(events, with_session=args.screen_command == "search")
    return 0
