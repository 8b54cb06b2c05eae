"""What the product costs to have running: a worker's memory with one session, and the CLI's
start-up.

    .venv/bin/python -m bench.footprint [--sightline PATH] [--reference PATH] [--runtime-venv DIR]

A real `livekit-server` on loopback and a real `sightline start` worker (this checkout's, or the
`sightline` executable given, so another checkout can be measured the same way); the worker is
left idle, then one user joins a dispatched room. Printed: the RSS of the worker's process tree
idle and with the session (sessions are threads of the worker; bench/load.py measures many),
the wall time of `sightline --help` (median of 5) and, with `--runtime-venv`, the size
of that environment. With `--reference` (another build's `sightline` executable) that build is
measured the same way in the same run, right after this one, and the ratios printed (the
reference's figure over ours: above 1, ours is smaller or faster); they are not a verdict,
since the builds compared are usually meant to hold the same memory (a change elsewhere must
not grow it), and equal is then the expected result. Without it the figures are compared
across commits (README: Measured). The paths are checked before anything is started: a missing
one is one line and exit status 2 (it was a traceback after the whole measurement). Last line:
JSON ({"reference": {...}, "ratios": {...}} added with `--reference`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.livekit_harness import (
    API_KEY,
    API_SECRET,
    User,
    free_port,
    run_livekit_server,
    start_worker,
    worker_processes,
)
from bench.verdict import parser, ratio

REPO = Path(__file__).resolve().parent.parent
AGENT_NAME = "sightline-footprint"
SETTLE_S = 8.0
COMPARED = ("help_s", "worker_idle_mb", "worker_with_one_session_mb", "one_session_mb")


def executable(raw: str) -> Path:
    """A `sightline` to measure: checked before the measuring, which takes a minute."""
    path = Path(raw)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise argparse.ArgumentTypeError(f"is not an executable file: {raw!r}")
    return path


def directory(raw: str) -> Path:
    """An environment whose size is reported: `du` of a missing one failed after the
    measuring."""
    path = Path(raw)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"is not a directory: {raw!r} (`make runtime` builds build/runtime-venv)")
    return path


def help_seconds(sightline: Path, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([str(sightline), "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def python_tree(pid: int) -> dict[int, float]:
    """RSS in MB of each of the worker's Python processes."""
    found = {}
    for proc in worker_processes(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            found[proc.pid] = proc.memory_info().rss / 2**20
    return found


def du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sm", str(path)], check=True, capture_output=True, text=True)
    return float(out.stdout.split()[0])


async def measure(sightline: Path, workdir: Path) -> dict[str, object]:
    with run_livekit_server(workdir) as livekit:
        env = {
            "LIVEKIT_URL": livekit.ws_url, "LIVEKIT_API_KEY": API_KEY,
            "LIVEKIT_API_SECRET": API_SECRET, "SIGHTLINE_AGENT_NAME": AGENT_NAME,
            "GOOGLE_API_KEY": "footprint-fake-key", "ANTHROPIC_API_KEY": "footprint-fake-key",
            "SIGHTLINE_DATA_DIR": str(workdir / "data"),
            "SIGHTLINE_HEALTH_PORT": str(free_port()), "SIGHTLINE_WEBHOOK_PORT": "0",
            "SIGHTLINE_MAX_SESSIONS": "8",
        }
        if os.environ.get("DATABASE_URL"):
            env["DATABASE_URL"] = os.environ["DATABASE_URL"]
        worker = start_worker(workdir, env, sightline)
        try:
            await asyncio.sleep(SETTLE_S)
            idle = python_tree(worker.proc.pid)
            user = User(livekit, "footprint-room", agent_name=AGENT_NAME,
                        metadata={"tenant": "footprint"},
                        video=REPO / "fixtures" / "demo" / "screen.webm")
            await user.join("footprint-user")
            await user.wait_for_agent()
            await asyncio.sleep(SETTLE_S)
            busy = python_tree(worker.proc.pid)
            await user.leave()
        finally:
            worker.stop()
    # sessions are threads of the worker process (with any helper processes it starts): the
    # whole tree, idle and with one session
    idle_mb, busy_mb = sum(idle.values()), sum(busy.values())
    return {
        "worker_idle_mb": round(idle_mb, 1),
        "worker_with_one_session_mb": round(busy_mb, 1),
        "one_session_mb": round(busy_mb - idle_mb, 1),
        "worker_processes": len(busy),
    }


def measure_build(sightline: Path) -> dict[str, Any]:
    """`sightline --help`'s time, then a worker of that build idle and with one session."""
    result: dict[str, Any] = {"help_s": round(help_seconds(sightline), 3)}
    with tempfile.TemporaryDirectory() as tmp:
        result.update(asyncio.run(measure(sightline, Path(tmp))))
    return result


def main() -> int:
    cli = parser("bench.footprint", __doc__)
    cli.add_argument("--sightline", type=executable,
                     default=str(Path(sys.executable).with_name("sightline")),
                     help="the sightline executable to measure (default: this environment's)")
    cli.add_argument("--reference", type=executable,
                     help="another build's sightline executable, measured the same way in the "
                          "same run, right after")
    cli.add_argument("--runtime-venv", type=directory,
                     help="also report the size of this environment (`make runtime` builds "
                          "the runtime-only one in build/runtime-venv)")
    args = cli.parse_args()
    result = measure_build(args.sightline)
    if args.runtime_venv:
        result["runtime_venv_mb"] = du_mb(args.runtime_venv)
    for key, value in result.items():
        print(f"{key:<34} {value}")
    if args.reference:
        reference = measure_build(args.reference)
        result["reference"] = reference
        result["ratios"] = {key: ratio(reference[key], result[key]) for key in COMPARED}
        print(f"reference: {args.reference}")
        for key in COMPARED:
            print(f"{key:<34} {reference[key]}  (reference / ours {result['ratios'][key]})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
