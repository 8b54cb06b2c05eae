"""How much faster than real time the demo replays, end to end, on this machine.

The reference is the recording's own duration: a live session takes that long. The replay does
the whole pipeline (VP8 decode of every frame, 1 FPS sampling, JPEG encoding, the real SDK over
HTTP to the local wire-format server, ledger and Postgres writes) on a fresh embedded Postgres.

    .venv/bin/python -m bench.replay [--runs 3]

The last line is JSON: {"video_s", "replay_s_median", "speedup_vs_realtime", "runs"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent.config import Settings
from agent.replay import replay
from agent.replay_script import load_fixture
from memory.db import Database

REPO = Path(__file__).resolve().parent.parent


async def run(runs: int) -> dict[str, float]:
    fixture = load_fixture(REPO / "fixtures" / "demo")
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env({"SIGHTLINE_DATA_DIR": tmp})
        db = await Database.open(None, settings.data_dir)
        try:
            timings = []
            for i in range(runs):
                started = time.perf_counter()
                await replay(fixture, settings, db)
                timings.append(time.perf_counter() - started)
                print(f"run {i + 1}: {timings[-1]:.2f}s", file=sys.stderr)
        finally:
            await db.close()
    median = statistics.median(timings)
    return {
        "video_s": round(fixture.duration_s, 2),
        "replay_s_median": round(median, 3),
        "speedup_vs_realtime": round(fixture.duration_s / median, 2),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    result = asyncio.run(run(parser.parse_args().runs))
    print(f"demo fixture: {result['video_s']}s of video replayed in "
          f"{result['replay_s_median']}s (median) = {result['speedup_vs_realtime']}x real time")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
