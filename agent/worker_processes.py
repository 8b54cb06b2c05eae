"""One machine's worker as several processes: `sightline start` with
`SIGHTLINE_WORKER_PROCESSES` above 1 runs that many worker processes, each registered with
LiveKit on its own and hosting its share of the sessions as threads.

Why: a process hosts its sessions' Python (rtc events and frames, change detection, turns)
under one GIL, and LiveKit's rtc SDK delivers every room's events through one callback thread
per process. On a 2-core machine 30 sessions of 5 fps shares in one process answered with a
steady-window p95 overhead of 259-423 ms over four runs, and in two processes of 15 with
214-224 ms (`bench/load.py`, README: Many sessions per worker). livekit-agents' process
executor would give each *job* a process (~480 MB each, measured before the thread executor);
here each process hosts many.

This parent starts the embedded Postgres (when no DATABASE_URL is set) and the migrations
once, then the processes, each `sightline start --process I/N` with its own settings:
- its share of `SIGHTLINE_MAX_SESSIONS`, `SIGHTLINE_WORKER_MEMORY_MB` and the cores, so the
  load each reports to LiveKit is its own (agent/capacity.py: `Limits.share`);
- the webhook (`SIGHTLINE_WEBHOOK_PORT`) in the first process alone: LiveKit's webhook
  configuration names one port per host;
- its own health port, picked free here; the parent serves `SIGHTLINE_HEALTH_PORT` itself
  and answers `OK` only while every process answers `OK` on its own;
- metrics (`SIGHTLINE_METRICS_PORT`, when set) on that port plus the process's index.

A process that ends while the worker is not stopping (a crash, the OOM killer) is started
again (at once, then after 1, 2, 4... s up to a minute while it keeps failing within a minute
of its start); its sessions' rooms are dispatched again by the fleet as for any lost worker,
and its open sessions are closed by the process that replaces it (agent/left_open.py). A start
that fails itself (the fork refused under the memory pressure that just ended the process, no
free health port) is one line and is tried again on the same backoff: the parent ending with
a traceback instead would take every other process down with it (`PR_SET_PDEATHSIG`, below),
their sessions killed undrained. A process that exits with status 2 (a setting it refuses)
stops the worker with that status.
SIGTERM and SIGINT are passed on (the processes drain; a second one ends them at once), also
to a process being started as the signal came. Each process runs in a session (and process
group) of its own, so a signal to the worker's group (a terminal's Ctrl-C) reaches it once,
through the parent (systemd's default KillMode signals every process of the unit itself:
`KillMode=mixed`), and is killed by the kernel if the parent dies (`PR_SET_PDEATHSIG`), so a
worker killed with SIGKILL leaves no process behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import math
import os
import signal
import sys
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from .capacity import usable_cores
from .config import ConfigError, Settings
from .ports import free_port

CONFIG_EXIT = 2  # a setting the process refused: starting it again would not help
PORT_TAKEN_EXIT = 3  # the health port picked for it was taken first: started again on another
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 60.0
HEALTHY_AFTER_S = 60.0  # a process that ran this long before it ended restarts at once
HEALTH_TIMEOUT_S = 2.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class ProcessSlot:
    """Which of the worker's processes this one is: `index` of `count`, from 0."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> ProcessSlot:
        """`I/N` as `--process` gives it, I from 1."""
        number, _, count = text.partition("/")
        try:
            slot = cls(int(number) - 1, int(count))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not I/N") from None
        if not 0 <= slot.index < slot.count:
            raise argparse.ArgumentTypeError(f"{text!r}: I must be from 1 to N")
        return slot

    def __str__(self) -> str:
        return f"{self.index + 1}/{self.count}"


def process_count(settings: Settings, sessions: int) -> int:
    """How many processes `sightline start` runs: the setting, or with 0 one per usable core
    (a process's Python runs on one core at a time), never more than the sessions it takes."""
    wanted = settings.worker_processes or max(1, math.floor(usable_cores()))
    return max(1, min(wanted, sessions))


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when the worker's parent process (`parent`, its pid)
    dies (Linux). The parent may be pid 1 (a container's first process), so a parent that
    died first is told by the pid, not by being reparented to 1."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request was made
        os.kill(os.getpid(), signal.SIGKILL)


def metrics_ports(settings: Settings, count: int) -> list[int]:
    """Each process's metrics port: `SIGHTLINE_METRICS_PORT` and the ones after it (0: off)."""
    if not settings.metrics_port:
        return [0] * count
    if settings.metrics_port + count - 1 > 65535:
        raise ConfigError(f"SIGHTLINE_METRICS_PORT={settings.metrics_port}: the worker's "
                          f"{count} processes serve metrics on it and the {count - 1} after "
                          "it; choose a lower one")
    return [settings.metrics_port + i for i in range(count)]


def process_env(settings: Settings, slot: ProcessSlot, database_url: str) -> dict[str, str]:
    """The settings of one process that differ from the worker's (its health port, picked at
    each start, apart)."""
    metrics = metrics_ports(settings, slot.count)[slot.index]
    return {
        "DATABASE_URL": database_url,
        "SIGHTLINE_WEBHOOK_PORT": str(settings.webhook_port if slot.index == 0 else 0),
        "SIGHTLINE_METRICS_PORT": str(metrics),
    }


class WorkerProcess:
    """One of the worker's processes: started, watched and started again when it ends."""

    def __init__(self, slot: ProcessSlot, env: dict[str, str], log_level: str, *,
                 health: bool) -> None:
        """`health`: the process serves livekit-agents' health check, on a port picked free at
        each start (the worker's own health port asks it)."""
        self.slot = slot
        self.health_port = 0
        self._health = health
        self._env = env
        self._log_level = log_level
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0

    def start_env(self) -> dict[str, str]:
        """The settings of the next start: a port picked afresh, since a port picked free can
        be taken by someone else before the process binds it (it then ends with
        `PORT_TAKEN_EXIT`, and is started again on another)."""
        self.health_port = free_port() if self._health else 0
        return {**os.environ, **self._env, "SIGHTLINE_HEALTH_PORT": str(self.health_port)}

    def command(self) -> list[str]:
        """The process's command line. sys.argv[0] is the program that runs Sightline's CLI:
        the `sightline` script, or a test's wrapper of it."""
        return [sys.executable, sys.argv[0], "start", "--process", str(self.slot),
                "--parent", str(os.getpid()), "--log-level", self._log_level]

    async def start(self) -> None:
        """Start the process in a session of its own, so that a signal sent to the worker's
        process group (a terminal's Ctrl-C) reaches the parent alone, which passes it on once:
        livekit-agents ends a process at once, without draining, on its second signal. The
        process still dies with the parent (`die_with_parent`, in the process). `proc` is set
        last, with nothing awaited after it (`Supervisor._start` relies on that)."""
        self.proc = await asyncio.create_subprocess_exec(
            *self.command(), env=self.start_env(), start_new_session=True)
        self.started_at = time.monotonic()

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)


def describe_exit(code: int) -> str:
    """A process's exit status as a person reads it. A real-time signal (SIGRTMIN+n) has no
    name in `signal.Signals`: it is given by its number rather than raising in the watcher."""
    if code >= 0:
        return f"status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


class Supervisor:
    """Runs the worker's processes until they have all ended after a stop signal."""

    def __init__(self, settings: Settings, count: int, database_url: str,
                 log_level: str) -> None:
        self._settings = settings
        self._stopping = asyncio.Event()
        self._stop_signal: int = signal.SIGTERM  # the first stop signal, once `_stopping` is set
        self.processes = [
            WorkerProcess(slot, process_env(settings, slot, database_url), log_level,
                          health=bool(settings.health_port))
            for slot in (ProcessSlot(i, count) for i in range(count))]

    async def run(self) -> int:
        """Start the processes and keep them until they have all ended after a stop signal.
        Should `run` end otherwise (an exception out of a watcher: a bug; its caller cancelling
        it), it first stops the processes as a SIGTERM would and waits for them to drain, since
        the parent's end would kill them undrained (`PR_SET_PDEATHSIG`), and leaves no watcher
        running behind it (one would go on restarting its process for a parent that is gone)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        health = await self._serve_health() if self._settings.health_port else None
        keeping: list[asyncio.Task[int]] = []
        try:
            for process in self.processes:
                if not self._stopping.is_set():  # a stop signal while they start
                    await self._start(process)
            print(f"sightline: started {len(self.processes)} worker processes (pids "
                  f"{', '.join(str(p.proc.pid) for p in self.processes if p.proc)})",
                  file=sys.stderr, flush=True)
            keeping = [asyncio.create_task(self._keep(p), name=f"keep worker process {p.slot}")
                       for p in self.processes]
            codes = await asyncio.gather(*keeping)
        except BaseException:
            if not self._stopping.is_set():  # a second SIGTERM would end them undrained
                self._on_signal(signal.SIGTERM)
            await asyncio.gather(*keeping, *(p.proc.wait() for p in self.processes if p.proc),
                                 return_exceptions=True)
            raise
        finally:
            for task in keeping:  # all done but when `run` was cancelled again while waiting
                task.cancel()
            await asyncio.gather(*keeping, return_exceptions=True)
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            if health is not None:
                await health.cleanup()
        return max(codes, key=lambda code: code != 0)  # the first failure's, else 0

    def _on_signal(self, signum: int) -> None:
        """Pass the signal on: the first one drains the processes, a second ends them."""
        if not self._stopping.is_set():
            self._stop_signal = signum
            self._stopping.set()
        for process in self.processes:
            process.signal(signum)

    async def _start(self, process: WorkerProcess) -> None:
        """Start the process. A stop signal that came while it was being started was passed
        to no one (its `proc` was not set yet, or was the one that had ended), so it is passed
        now, once: the process drains like the others."""
        await process.start()
        if self._stopping.is_set():
            process.signal(self._stop_signal)

    async def _keep(self, process: WorkerProcess) -> int:
        """Wait for the process; start it again when it ends while the worker runs on.
        Returns its last exit status (0 for a process ended by a stop signal).

        A start that fails (the fork refused with EAGAIN or ENOMEM just after the OOM killer
        ended the process, `free_port` finding none) is one line and is tried again after
        the next wait of the backoff, for as long as it fails: whatever the cause, the other
        processes' sessions go on meanwhile, and the parent's health port names this one as
        not running. `process.proc` stays the ended process until a start succeeds (`start`
        sets it last)."""
        failing_s = RESTART_FIRST_S
        while process.proc is not None:
            code = await process.proc.wait()
            if self._stopping.is_set():
                return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else code
            ran_s = time.monotonic() - process.started_at
            if code == CONFIG_EXIT:
                print(f"sightline: worker process {process.slot} refused its settings "
                      "(above); stopping the worker", file=sys.stderr, flush=True)
                self._on_signal(signal.SIGTERM)
                return code
            wait_s = 0.0 if ran_s >= HEALTHY_AFTER_S else failing_s
            failing_s = RESTART_FIRST_S if ran_s >= HEALTHY_AFTER_S else min(
                RESTART_MAX_S, failing_s * 2)
            print(f"sightline: worker process {process.slot} (pid {process.proc.pid}) ended "
                  f"({describe_exit(code)}) after {ran_s:.0f} s; starting it again"
                  + (f" in {wait_s:.0f} s" if wait_s else ""), file=sys.stderr, flush=True)
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._stopping.wait()
                if self._stopping.is_set():
                    return 0
                try:
                    await self._start(process)
                    break
                except Exception as exc:  # whatever the cause: the other processes run on
                    if self._stopping.is_set():
                        return 0
                    wait_s, failing_s = failing_s, min(RESTART_MAX_S, failing_s * 2)
                    print(f"sightline: worker process {process.slot} could not be started "
                          f"again ({type(exc).__name__}: {exc}); trying again in "
                          f"{wait_s:.0f} s", file=sys.stderr, flush=True)
        return 0

    async def _serve_health(self) -> web.AppRunner:
        """`SIGHTLINE_HEALTH_PORT`: `OK` while every process answers `OK` on its own port
        (livekit-agents' check: connected to LiveKit), else 503 naming the ones that do not."""
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S))

        async def health(_: web.Request) -> web.Response:
            answers = await asyncio.gather(*(self._health_of(session, p) for p in self.processes))
            failing = [f"worker process {p.slot}: {answer}"
                       for p, answer in zip(self.processes, answers, strict=True)
                       if answer != "OK"]
            if failing:
                return web.Response(status=503, text="; ".join(failing))
            return web.Response(text="OK")

        app = web.Application()
        app.router.add_get("/", health)
        app.on_cleanup.append(lambda _: session.close())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, port=self._settings.health_port).start()
        return runner

    @staticmethod
    async def _health_of(session: aiohttp.ClientSession, process: WorkerProcess) -> str:
        if process.proc is None or process.proc.returncode is not None:
            return "not running"
        try:
            async with session.get(f"http://127.0.0.1:{process.health_port}/") as response:
                text = (await response.text()).strip()
                return text if response.status == 200 else f"{response.status} {text}"
        except (aiohttp.ClientError, TimeoutError):
            return "not answering yet"


def run_processes(settings: Settings, count: int, database_url: str, log_level: str) -> int:
    """Run `count` worker processes until they have ended (the parent's whole job)."""
    return asyncio.run(Supervisor(settings, count, database_url, log_level).run())
