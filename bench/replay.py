"""How much faster than real time the demo replays, end to end, on this machine.

The reference is the recording's own duration: a live session takes that long, so the replay
must beat it (`speedup_vs_realtime` > 1). The replay does the whole pipeline (VP8 decode of
every frame, 1 FPS sampling, JPEG encoding, the fixture's knowledge ingested, the real SDK over
HTTP to the local wire-format server, ledger and Postgres writes).

Each run is a fresh replay, as `sightline replay --fresh` makes one: a scratch schema of its
own on the embedded Postgres (migrated, dropped afterwards) and its own cost-log directory.
Runs sharing one database were not the same work: the first ingested the knowledge, the later
ones skipped it and recalled the earlier runs' conversation and screen timeline, so their
median timed a warm replay. Opening and dropping the schema is not timed; the process stays
warm after the first run (the embedder loaded, the imports done), which is what `--runs`
greater than 1 and the median are for.

Checked in every run, or the run fails: each of the fixture's turns replayed, answered (a
reply with words), by the models its script names in order; and every run's turns used the
same knowledge, memory and screen text as the first run's (a run that recalled more was not
fresh).

    .venv/bin/python -m bench.replay [--runs 3]

The last line is JSON: {"video_s", "replay_s_median", "speedup_vs_realtime", "runs",
"replay_s" (each run), "targets_met", "missed"}; exit status 1 when a target was missed or a
check failed, 2 for a bad setting.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.cli_common import positive_int
from agent.config import Settings
from agent.replay import ReplayedTurn, ReplayResult, isolated_settings, replay
from agent.replay_script import Fixture, load_fixture
from bench.verdict import Target, exit_status, parser, verdict
from memory.db import Database

REPO = Path(__file__).resolve().parent.parent

# the recording's own duration is the reference: a replay slower than real time beats nothing
TARGETS: dict[str, Target] = {"speedup_vs_realtime": (">", 1.0)}


async def fresh_replay(fixture: Fixture, settings: Settings) -> tuple[float, ReplayResult]:
    """One replay as `sightline replay --fresh` runs it (agent/cli_replay.py): a scratch schema
    and the cost-log directory named after it, so nothing of another run is read, recalled or
    imported. Seconds of the replay alone (not the schema's migration or drop), and its
    result."""
    db = await Database.open(settings.database_url, settings.data_dir, scratch=True)
    assert db.scratch_schema is not None
    try:
        started = time.perf_counter()
        result = await replay(fixture, isolated_settings(settings, db), db)
        return time.perf_counter() - started, result
    finally:
        await db.close()


def _used(turn: ReplayedTurn) -> tuple[tuple[str, ...], ...]:
    """What a turn's request carried from the database: knowledge, memory, screen text."""
    return turn.knowledge_used, turn.memory_used, turn.screen_used


def problems(fixture: Fixture, results: list[ReplayResult]) -> list[str]:
    """What makes the runs no measure of a fresh replay of `fixture`, turn by turn: a turn
    missing, without a reply, asked of other models than its script's tiers (in order), or
    carrying other knowledge, memory or screen text than in the first run (which recalled
    nothing of another run: its schema was new)."""
    found = []
    for number, result in enumerate(results, 1):
        if len(result.turns) != len(fixture.turns):
            found.append(f"run {number}: {len(result.turns)} of {len(fixture.turns)} turns "
                         "replayed")
        firsts: list[ReplayedTurn | None] = [*results[0].turns, *[None] * len(result.turns)]
        for scripted, turn, first in zip(fixture.turns, result.turns, firsts, strict=False):
            expected = tuple(tier.model for tier in scripted.response.tiers)
            if number > 1 and first is not None and _used(turn) != _used(first):
                found.append(f"run {number}: the turn at t={turn.t:.1f}s used {_used(turn)} "
                             f"where run 1 used {_used(first)} (knowledge, memory, screen "
                             "text): not a fresh replay")
            if not turn.reply.strip():
                found.append(f"run {number}: the turn at t={turn.t:.1f}s got no reply")
            if expected and turn.models_asked != expected:
                found.append(f"run {number}: the turn at t={turn.t:.1f}s asked "
                             f"{' > '.join(turn.models_asked) or 'no model'}, its script "
                             f"{' > '.join(expected)}")
    return found


async def run(runs: int) -> dict[str, Any]:
    """`runs` fresh replays of the demo fixture: the timings, and the verdict printed."""
    fixture = load_fixture(REPO / "fixtures" / "demo")
    timings: list[float] = []
    results: list[ReplayResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env({"SIGHTLINE_DATA_DIR": tmp})
        for i in range(runs):
            seconds, result = await fresh_replay(fixture, settings)
            timings.append(seconds)
            results.append(result)
            print(f"run {i + 1}: {seconds:.2f}s", file=sys.stderr)
    median = statistics.median(timings)
    figures: dict[str, Any] = {
        "video_s": round(fixture.duration_s, 2),
        "replay_s_median": round(median, 3),
        "speedup_vs_realtime": round(fixture.duration_s / median, 2),
        "runs": runs,
        "replay_s": [round(t, 3) for t in timings],
    }
    print(f"demo fixture: {figures['video_s']}s of video replayed in "
          f"{figures['replay_s_median']}s (median of {runs} fresh runs) = "
          f"{figures['speedup_vs_realtime']}x real time")
    return figures | verdict(figures, TARGETS, problems(fixture, results))


def main() -> int:
    cli = parser("bench.replay", __doc__)
    cli.add_argument("--runs", type=positive_int, default=3,
                     help="fresh replays to take the median of (default 3)")
    result = asyncio.run(run(cli.parse_args().runs))
    print(json.dumps(result))
    return exit_status(result)


if __name__ == "__main__":
    sys.exit(main())
