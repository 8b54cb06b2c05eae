"""When a screen-text read may start: only while the machine has CPU to spare.

Reading screen text is background work with no deadline; replies have one. A low scheduling
priority is not enough to keep it out of their way. Measured with `bench/load.py` at 30 sessions
of 5 fps (README, Many sessions): a reader thread at nice 10, a reader process at
`SCHED_IDLE`, and, with reading off, a `SCHED_IDLE` busy loop doing nothing else all took the
steady reply overhead p95 from 220–375 ms (reading off) to 400–520 ms. What costs the replies is
the machine being kept busy at all, not who is preferred on it.

So a read starts only while the machine's recent CPU use is under `limit` of its cores (the
reads' own use counted: they fill what the rest leaves up to the limit, no further). When the
rest alone is over it, a read still starts once it has waited `max_wait_s`, so screen memory
slows down instead of stopping. Meanwhile the sessions' newer frames fold into the waiting read
(`ScreenTextReader`). Each read is told how long it waited and whether it was let through by
the limit or forced by the wait: forced reads mean the worker is fuller than screen memory can
keep up with (exported per session and as a metric). A read a question hurries (its screenshot
covers what the read finds; SIGHTLINE_COVER_HURRY) starts at once: its `hurry` is set.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_S = 1.0  # the recent CPU use a decision looks at
MIN_SPAN_S = 0.15  # a shorter measurement is noise
POLL_S = 0.1


@dataclass(frozen=True)
class GateWait:
    """How one read got through the gate."""

    seconds: float  # measuring the machine included
    forced: bool  # it started after max_wait_s with the machine still over the limit


UNGATED = GateWait(0.0, forced=False)  # a read with no gate in its way


class CpuGate:
    """Shared by a process's reader threads (thread-safe); `wait` blocks the calling thread."""

    def __init__(
        self, busy_seconds: Callable[[], float], cores: float, *, limit: float,
        max_wait_s: float, clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[threading.Event, float], object] = threading.Event.wait,
    ) -> None:
        """`busy_seconds`: CPU seconds the machine (or container) has been busy in all, on
        all its cores; `limit`: the share of `cores` under which a read may start; `sleep`
        waits the seconds given unless the event is set."""
        if cores <= 0 or not 0 < limit <= 1 or max_wait_s < 0:
            raise ValueError(f"cores={cores}, limit={limit}, max_wait_s={max_wait_s}")
        self._busy_seconds, self._cores = busy_seconds, cores
        self.limit, self.max_wait_s = limit, max_wait_s
        self._clock, self._sleep = clock, sleep
        self._samples: deque[tuple[float, float]] = deque()  # (clock, busy seconds)
        self._lock = threading.Lock()

    def share(self) -> float | None:
        """The machine's CPU use over about the last `WINDOW_S`, as a share of its cores
        (None until two samples far enough apart are known)."""
        now, busy = self._clock(), self._busy_seconds()
        samples = self._samples
        if samples and now - samples[-1][0] > 2 * WINDOW_S:  # idle for long: start over
            samples.clear()
        samples.append((now, busy))
        while len(samples) > 2 and samples[1][0] <= now - WINDOW_S:
            samples.popleft()
        start, started_busy = samples[0]
        if now - start < MIN_SPAN_S:
            return None
        return (busy - started_busy) / ((now - start) * self._cores)

    def wait(self, hurry: threading.Event | None = None) -> GateWait:
        """Block until a read may start, or `hurry` is set."""
        hurry = hurry or threading.Event()
        with self._lock:  # one decision at a time: a read that starts is in the next one's use
            started, busy = self._clock(), False
            while True:
                share = self.share()
                waited = self._clock() - started
                if (share is not None and share <= self.limit) or hurry.is_set():
                    return GateWait(waited, forced=False)
                busy = busy or share is not None
                if waited >= self.max_wait_s:
                    return GateWait(waited, forced=busy)
                self._sleep(hurry, POLL_S)
