"""What the product costs to have running: a worker's memory with one session, and the CLI's
start-up.

    .venv/bin/python -m bench.footprint [--sightline PATH] [--runtime-venv DIR]

A real `livekit-server` on loopback and a real `sightline start` worker (this checkout's, or the
`sightline` executable given, so another checkout can be measured the same way); the worker is
left idle, then one user joins a dispatched room. Printed: the RSS of the worker's process tree
idle and with the session (sessions are threads of the worker; bench/load.py measures many),
the wall time of `sightline --help` (median of 5) and, with `--runtime-venv`, the size
of that environment. There is no reference to beat in the same run: the figures are compared
across commits (README: Measured). Last line: JSON.
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

REPO = Path(__file__).resolve().parent.parent
AGENT_NAME = "sightline-footprint"
SETTLE_S = 8.0


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sightline", type=Path,
                        default=Path(sys.executable).with_name("sightline"),
                        help="the sightline executable to measure (default: this environment's)")
    parser.add_argument("--runtime-venv", type=Path,
                        help="also report the size of this environment (`make runtime` builds "
                             "the runtime-only one in build/runtime-venv)")
    args = parser.parse_args()
    result: dict[str, object] = {"help_s": round(help_seconds(args.sightline), 3)}
    with tempfile.TemporaryDirectory() as tmp:
        result.update(asyncio.run(measure(args.sightline, Path(tmp))))
    if args.runtime_venv:
        result["runtime_venv_mb"] = du_mb(args.runtime_venv)
    for key, value in result.items():
        print(f"{key:<34} {value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
