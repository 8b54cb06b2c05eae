"""`sightline replay PATH`: replay a fixture offline through the live pipeline."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from .cli_common import counted, one_line
from .cli_kb import secrets_note
from .config import Settings

if TYPE_CHECKING:  # imported by `run`: `sightline --help` loads no replay machinery
    from .replay import ReplayResult
    from .replay_script import Fixture


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
    marked `interrupted`) and exits 130 after one line; any other failure closes it too, and
    what the replay did before it is printed as a finished replay's is, then the failure in
    one line (`_unforeseen`)."""
    from memory.db import Database

    from .replay import ReplayResult, isolated_settings, replay
    from .replay_script import load_fixture
    from .session_record import INTERRUPTED

    fixture = load_fixture(args.path)
    result = ReplayResult(fixture=fixture.name)
    try:
        db = await Database.open(settings.database_url, settings.data_dir, scratch=args.fresh)
        try:
            await replay(fixture, isolated_settings(settings, db), db, result)
        finally:
            await db.close()
    except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels this task
        closed = [s["session_id"] for s in result.sessions if s.get("outcome") == INTERRUPTED]
        print(f"interrupted: session {', '.join(closed)} closed" if closed
              else "interrupted: no session was open", file=sys.stderr)
        return 130
    except Exception as exc:
        # the sessions it closed were spent on and their cost logs are on disk: they are
        # shown, then the failure, rather than the bare failure (or a traceback) alone
        if result.turns or result.sessions:
            _print_result(result, fixture, as_json=args.json)
            sys.stdout.flush()  # before the failure's line, wherever both streams go
        line = _unforeseen(exc)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 1
    _print_result(result, fixture, as_json=args.json)
    return 0


def _unforeseen(exc: Exception) -> str | None:
    """The line for a failure that stopped a replay and that the command line's handler would
    print as a traceback, or None: a failure the user can fix, or the database's, goes up to
    that handler for its usual line and status (2; 1). No fixture should cause another (the
    loader refuses what it knows cannot be replayed), but one that does is still one line,
    as the failed session's summary says it: status 1."""
    from .cli import database_failure, is_user_error  # the handler's own classification
    from .session_record import describe_failure

    if is_user_error(exc) or database_failure(exc) is not None:
        return None
    return f"sightline: the replay stopped: {one_line(describe_failure(exc)[1])}"


def _print_result(result: ReplayResult, fixture: Fixture, *, as_json: bool) -> None:
    """The replayed turns and each session's summary; the same for a replay that stopped part
    way, as far as it went (its failed session's summary says how it ended)."""
    from .cli_costs import format_summary

    problem = (result.video or {}).get("problem")
    warnings = ([f"warning: {one_line(problem)}"] if problem else []) + [
        one_line(f"warning: knowledge file skipped: {why}") for why in result.knowledge_skipped]
    whose = f"tenant{'s' * (len(fixture.tenants) > 1)} {', '.join(fixture.tenants)}"
    notes = [secrets_note(seen, whose) for seen in result.knowledge_secrets]
    if as_json:  # what is in "video" and "knowledge" too; said on stderr, as `vision scan
        # --json` does
        print(json.dumps({"fixture": result.fixture, "video": result.video,
                          "knowledge": {"skipped": result.knowledge_skipped,
                                        "secrets": [asdict(s) for s in result.knowledge_secrets]},
                          "turns": [t.__dict__ for t in result.turns],
                          "sessions": result.sessions}, indent=2))
        for line in warnings + notes:
            print(line, file=sys.stderr)
        return
    # the fixture's words and the models' replies are printed escaped, as every stored text is
    print("\n".join([one_line(f"Replayed fixture '{result.fixture}' ({fixture.video.name}, "
                              f"{fixture.duration_s:.1f}s)"), *warnings, *notes]) + "\n")
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
