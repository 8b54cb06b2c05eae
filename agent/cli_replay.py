"""`sightline replay PATH`: replay a fixture offline through the live pipeline."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from .cli_common import counted, one_line
from .config import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("replay", help="replay a fixture session offline and print its costs")
    p.add_argument("path", type=Path, help="fixture directory (with session.json)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--fresh", action="store_true",
                   help="replay in isolation: a scratch database schema (dropped afterwards) and "
                        "its own cost-log directory, so earlier runs' memory, knowledge and "
                        "screen timeline play no part and every run prints the same")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Replay the fixture. Ctrl-C closes the open session (its cost log and row complete,
    marked `interrupted`) and exits 130 after one line; any other failure closes it too."""
    from memory.db import Database

    from .cli_costs import format_summary
    from .replay import ReplayResult, replay
    from .replay_script import load_fixture
    from .session_record import INTERRUPTED

    fixture = load_fixture(args.path)
    result = ReplayResult(fixture=fixture.name)
    try:
        db = await Database.open(settings.database_url, settings.data_dir, scratch=args.fresh)
        if db.scratch_schema is not None:
            # its own cost logs (and spill files): nothing of other sessions is imported into it
            settings = settings.with_overrides(
                cost_log_dir=settings.data_dir / "replays" / db.scratch_schema)
        try:
            await replay(fixture, settings, db, result)
        finally:
            await db.close()
    except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels this task
        closed = [s["session_id"] for s in result.sessions if s.get("outcome") == INTERRUPTED]
        print(f"interrupted: session {', '.join(closed)} closed" if closed
              else "interrupted: no session was open", file=sys.stderr)
        return 130
    problem = (result.video or {}).get("problem")
    if args.json:  # the problem is in "video" too; said on stderr, as `vision scan --json` does
        print(json.dumps({"fixture": result.fixture, "video": result.video,
                          "turns": [t.__dict__ for t in result.turns],
                          "sessions": result.sessions}, indent=2))
        if problem:
            print(f"warning: {one_line(problem)}", file=sys.stderr)
        return 0
    # the fixture's words and the models' replies are printed escaped, as every stored text is
    print(one_line(f"Replayed fixture '{result.fixture}' ({fixture.video.name}, "
                   f"{fixture.duration_s:.1f}s)")
          + (f"\nwarning: {one_line(problem)}" if problem else "") + "\n")
    for turn in result.turns:
        screen = "no screen"
        if turn.screen_t is not None:
            shot = {"sent": "new screenshot", "unchanged": "screen unchanged, no new screenshot"}
            screen = f"screen at t={turn.screen_t:.0f}s ({shot.get(turn.screenshot, 'none')})"
        if turn.unheard is not None:
            print(one_line(f"[{turn.t:6.1f}s] {turn.user}: (spoken, not heard by the STT: "
                           f"{turn.unheard}; the recording said: {turn.spoken!r})") + "\n")
            continue
        print(one_line(f"[{turn.t:6.1f}s] {turn.user}: {turn.text}"))
        if turn.spoken is not None:
            print(f"         (spoken; heard by the STT, the recording said: {turn.spoken!r})")
        asked = " > ".join(turn.models_asked) or "no model"
        if turn.tools_called:
            asked += f" (tools called: {', '.join(turn.tools_called)})"
        if turn.knowledge_used:
            asked += f"; knowledge: {', '.join(turn.knowledge_used)}"
        if turn.memory_used:
            asked += f"; memory: {', '.join(turn.memory_used)}"
        if turn.screen_used:
            asked += f"; screen text: {', '.join(turn.screen_used)}"
        print(one_line(f"         asked {asked}; {turn.origin} response, {screen}, "
                       f"{counted(turn.images_sent, 'image')} in the requests"))
        print(one_line(f"         Sightline: {turn.reply}") + "\n")
    for summary in result.sessions:
        print(format_summary(summary))
    return 0
