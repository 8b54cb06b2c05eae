"""A `sightline start` worker with faults injected, for the tests that run real workers
(tests/test_fleet.py, tests/test_worker_shutdown.py).

`python tests/fault_worker.py start` runs Sightline's own CLI after replacing the screen
watcher's per-frame entry with one that, in a room whose name holds
* `crash`: raises on every frame (a bug in the frame analysis);
* `stuck`: spins forever in Python on its first frame (a runaway session), once per room and
  `SIGHTLINE_FAULT_DIR`, so that the agent dispatched to that room again is healthy;
and, with `SIGHTLINE_FAULT_WARMUP_S` set, makes every job thread's warm-up take that long (a
loaded machine, slowed down: threads still warming when the worker is told to stop).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from livekit import rtc
from livekit.agents import get_job_context

from agent import worker
from agent.cli import main
from agent.config import Settings
from agent.worker_processes import ProcessSlot
from vision.frames import SampledFrame
from vision.screen import ScreenWatcher

_offer = ScreenWatcher.offer
_build_server = worker.build_server


def faulty_offer(self: ScreenWatcher, t: float, frame: rtc.VideoFrame) -> SampledFrame | None:
    room = get_job_context().room.name
    if "crash" in room:
        raise RuntimeError("injected fault: this session's frame analysis fails")
    marker = Path(os.environ["SIGHTLINE_FAULT_DIR"]) / f"stuck-{room}"
    if "stuck" in room and not marker.exists():
        marker.touch()
        while True:  # blocks this session's event loop; sleep(0) lets the other threads run
            time.sleep(0)
    return _offer(self, t, frame)


def slow_warmup_server(settings: Settings, exit_deadline_s: float | None = None,
                       slot: ProcessSlot | None = None) -> worker.SightlineServer:
    server = _build_server(settings, exit_deadline_s, slot)
    warmup_s = float(os.environ.get("SIGHTLINE_FAULT_WARMUP_S", "0"))
    if warmup_s > 0:
        server.setup_fnc = lambda _: time.sleep(warmup_s)  # runs in each job thread
    return server


if __name__ == "__main__":
    ScreenWatcher.offer = faulty_offer  # type: ignore[method-assign]
    worker.build_server = slow_warmup_server
    sys.exit(main())
