"""How full this worker is: its sessions, memory and CPU against their limits, as one number.

LiveKit balances a fleet by the load each worker reports: a server routes a job only while
some worker's load is below its `agents.target_load` (0.7 by default), offers it to a worker
that is not full, weighted by free share, and moves on to the next worker when one refuses.
So the load must be what the worker measures, and it must reach LiveKit's "full" exactly when
one more session would not fit: Sightline reports 0.7 x the fullest of three shares:

- sessions: the count against `SIGHTLINE_MAX_SESSIONS` (default 15 per usable core:
  `bench/load.py` measured one core serving 30 sessions sharing 720p at 5 fps with replies
  within 0.2 s at p95 in the steady window, the core 71% busy, once the publishers were on
  another core; README: Many sessions per worker);
- memory: the worker process's resident memory against `SIGHTLINE_WORKER_MEMORY_MB` (default
  80% of the machine's or container's memory);
- CPU: the worker process's CPU time over the last 20 s, against 85% of its usable cores
  (a window that long so the seconds of a burst of joins do not refuse the burst itself).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psutil
from livekit.agents.utils.hw import get_cpu_monitor

from vision.cpu_gate import CpuGate

from .config import Settings

FULL_LOAD = 0.7  # LiveKit's "full": the server's agents.target_load, the worker's threshold
SESSIONS_PER_CORE = 15
MEMORY_SHARE = 0.8
CPU_FULL = 0.85
CPU_WINDOW_S = 20.0

# the CPU time a container has used: cgroup v2 (microseconds, a `usage_usec` line), v1 (ns)
_CGROUP_CPU_USAGE = ((Path("/sys/fs/cgroup/cpu.stat"), "usage_usec", 1e-6),
                     (Path("/sys/fs/cgroup/cpuacct/cpuacct.usage"), "", 1e-9))
_CGROUP_MEMORY_LIMITS = (Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
                         Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))  # v1


def usable_cores() -> float:
    """Cores this process may use: the CPU quota of its container, else its CPU affinity
    (livekit-agents reads the cgroup quota; it is what LiveKit's own load uses)."""
    return get_cpu_monitor().cpu_count()


def _taken(times: Any) -> float:
    """Seconds of psutil's CPU times that were not free for more work: busy (on Linux `user`
    holds guests' time) or stolen (a virtual machine's CPU waiting while the hypervisor ran
    something else: with 10-40% stolen a 2-core VM has 1.2-1.8 cores, and a gate that lets
    reads through as if it had 2 slows the replies)."""
    return sum(getattr(times, field, 0.0) for field in ("user", "nice", "system", "irq",
                                                       "softirq", "steal"))


def _allowed_cpus() -> set[int] | None:
    """The CPUs this process may run on, when that is fewer than the machine's (pinned)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return allowed if allowed and len(allowed) < (psutil.cpu_count() or 0) else None


def _cgroup_cpu_seconds(path: Path, key: str, unit: float) -> float | None:
    """A cgroup's CPU time in all, in seconds (None when the file is not there or not read)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.rpartition(" ") if key else ("", "", line)
        if name == key and value.strip().isdigit():
            return int(value) * unit
    return None


def _cgroup_cpu_total(path: Path, key: str, unit: float, steal_share: float) -> float:
    """As `_cgroup_cpu_seconds`, plus the container's part of the machine's stolen time (a
    cgroup's usage has none; its part is its cores' share of the machine's); a file that stops
    being readable reads as no progress, so screen-text reads are not held on its account."""
    stolen = getattr(psutil.cpu_times(), "steal", 0.0)
    return (_cgroup_cpu_seconds(path, key, unit) or 0.0) + steal_share * stolen


def machine_cpu() -> tuple[Callable[[], float], float]:
    """A running total of the CPU seconds used (or stolen by the hypervisor) on the cores this
    process can use, and how many cores that is: the CPUs it is pinned to, else its container
    (its cgroup), else the whole machine. The source is chosen once, here: the screen-text gate
    reads the total every tenth of a second while a read waits. (livekit-agents' CPU monitor
    reads the same cgroup files, but only as a share over an interval that it sleeps through.)"""
    allowed = _allowed_cpus()
    if allowed is not None:
        cpus = sorted(allowed)

        def pinned() -> float:
            per_cpu = psutil.cpu_times(percpu=True)
            return sum(_taken(per_cpu[cpu]) for cpu in cpus if cpu < len(per_cpu))
        return pinned, float(len(cpus))
    cores = usable_cores()
    for path, key, unit in _CGROUP_CPU_USAGE:
        if _cgroup_cpu_seconds(path, key, unit) is not None:
            steal_share = min(1.0, cores / (psutil.cpu_count() or cores))
            return partial(_cgroup_cpu_total, path, key, unit, steal_share), cores
    return lambda: _taken(psutil.cpu_times()), cores


_read_gate: CpuGate | None = None
_read_gate_lock = threading.Lock()


def shared_read_gate(settings: Settings) -> CpuGate:
    """The process's gate for screen-text reads, shared like its OCR threads (sessions start
    in threads of their own, hence the lock): a live session's reads wait while the machine
    is busier than `SIGHTLINE_OCR_CPU_LIMIT`."""
    global _read_gate
    with _read_gate_lock:
        if _read_gate is None:
            busy_seconds, cores = machine_cpu()
            _read_gate = CpuGate(busy_seconds, cores, limit=settings.ocr_cpu_limit,
                                 max_wait_s=settings.ocr_max_wait_s)
        return _read_gate


def usable_memory_mb() -> float:
    """The machine's memory, or its container's limit when that is lower."""
    total = psutil.virtual_memory().total
    for path in _CGROUP_MEMORY_LIMITS:
        try:
            raw = path.read_text().strip()
        except OSError:
            continue
        if raw.isdigit():
            total = min(total, int(raw))
    return total / 2**20


@dataclass(frozen=True)
class Limits:
    """What fills this worker: its session count, memory (MB) and cores."""

    sessions: int
    memory_mb: float
    cores: float

    @classmethod
    def for_host(cls, max_sessions: int, memory_mb: int) -> Limits:
        """The configured limits; 0 sizes a limit from the machine."""
        cores = usable_cores()
        return cls(
            sessions=max_sessions or max(1, round(SESSIONS_PER_CORE * cores)),
            memory_mb=float(memory_mb) if memory_mb else MEMORY_SHARE * usable_memory_mb(),
            cores=cores,
        )

    def share(self, index: int, count: int) -> Limits:
        """What process `index` of a worker's `count` takes: the sessions split as evenly as
        they go (the first processes take the remainder), memory and cores in equal parts."""
        sessions = self.sessions // count + (index < self.sessions % count)
        return Limits(sessions, self.memory_mb / count, self.cores / count)

    def describe(self) -> str:
        return (f"up to {self.sessions} sessions, {self.memory_mb:.0f} MB, "
                f"{CPU_FULL * self.cores:.1f} of {self.cores:g} cores")


@dataclass(frozen=True)
class LoadReading:
    sessions: int
    memory_mb: float
    cpu_cores: float
    limits: Limits

    def shares(self) -> dict[str, float]:
        """Each resource's used share of its limit."""
        return {
            "sessions": self.sessions / self.limits.sessions,
            "memory": self.memory_mb / self.limits.memory_mb,
            "cpu": self.cpu_cores / (CPU_FULL * self.limits.cores),
        }

    @property
    def fullness(self) -> float:
        """The fullest share, 1.0 when full."""
        return min(1.0, max(self.shares().values()))

    @property
    def load(self) -> float:
        """The fullness on LiveKit's scale."""
        return FULL_LOAD * self.fullness

    @property
    def limiting(self) -> str:
        shares = self.shares()
        return max(shares, key=shares.__getitem__)

    def describe(self) -> str:
        """The reading in words, the limiting resource first (for the worker's log)."""
        parts = {
            "sessions": f"{self.sessions} of {self.limits.sessions} sessions",
            "memory": f"{self.memory_mb:.0f} of {self.limits.memory_mb:.0f} MB",
            "cpu": f"{self.cpu_cores:.2f} of {CPU_FULL * self.limits.cores:.2f} cores "
                   f"(last {CPU_WINDOW_S:.0f} s)",
        }
        first = self.limiting
        return ", ".join([parts.pop(first), *parts.values()])


class LoadMeter:
    """Reads this process's memory and CPU; called by livekit-agents from a thread pool every
    half second and before each job offer is answered, hence the lock."""

    def __init__(self, limits: Limits, process: psutil.Process | None = None) -> None:
        self.limits = limits
        self._process = process or psutil.Process()
        self._cpu: deque[tuple[float, float]] = deque()  # (monotonic time, CPU seconds)
        self._lock = threading.Lock()

    def read(self, sessions: int) -> LoadReading:
        with self._lock:
            now = time.monotonic()
            times = self._process.cpu_times()
            self._cpu.append((now, times.user + times.system))
            while len(self._cpu) > 2 and now - self._cpu[1][0] >= CPU_WINDOW_S:
                self._cpu.popleft()
            (t0, cpu0), (t1, cpu1) = self._cpu[0], self._cpu[-1]
            # over the whole window even before it has filled: the seconds before the first
            # reading count as idle, so a start-up spike (a burst's sessions joining at once)
            # does not read as a full worker and refuse the burst's last jobs
            cpu_cores = (cpu1 - cpu0) / max(t1 - t0, CPU_WINDOW_S)
            memory_mb = self._process.memory_info().rss / 2**20
        return LoadReading(sessions, memory_mb, cpu_cores, self.limits)
