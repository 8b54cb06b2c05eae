"""Ends a session whose event loop stopped turning.

A worker hosts its sessions as threads of one process, each running its own event loop. A
session caught in a loop of its own (a runaway tool, a pathological input) would keep its
thread, its room and its share of the CPU forever, and nothing else in that session would run:
no reply, no frame, no cost record. Each session's loop stamps a heartbeat every second; one
thread per process checks the stamps. When a session's stamp is older than
`SIGHTLINE_SESSION_STALL_S`, the watchdog asks the session to end, on its loop: a loop that
turns again ends the session as its user leaving would, its shutdown writing its logs as usual.
A loop still stopped as long again is stuck for good: the watchdog raises `SessionStalled` in
that thread (which breaks out of the Python code holding it), and the end asked for runs once
the loop turns. The exception lands wherever the thread is when it is raised; in a loop that
turned again it could break the loop itself (asyncio's own code, which the session's shutdown
needs), so it is raised only while the stamp is still the one the session stopped at, checked
just before. Code blocked inside a C call cannot be interrupted from Python: that is logged,
once, as needing a worker restart.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("sightline.watchdog")

BEAT_S = 1.0


class SessionStalled(BaseException):
    """Raised inside a session's thread by the watchdog. Not an `Exception`: the session's
    own handlers that keep it going past one bad frame or one failed tool must not swallow
    it, so it ends the task that was stuck."""


@dataclass
class _Watched:
    name: str
    thread: threading.Thread
    loop: asyncio.AbstractEventLoop
    end: Callable[[str], None]
    beat: float = field(default_factory=time.monotonic)
    ended_at: float | None = None  # when the session was asked to end
    stopped_at: float = 0.0  # when its loop was last seen stopped, since `stopped_beat`
    stopped_beat: float = 0.0
    interrupted_at: float | None = None
    reported_stuck: bool = False


class Watch:
    """One session under watch: its heartbeat task runs on the session's loop."""

    def __init__(self, dog: Watchdog, watched: _Watched) -> None:
        self._dog = dog
        self._watched = watched
        self._task = asyncio.get_running_loop().create_task(self._beat(), name="watchdog-beat")

    async def _beat(self) -> None:
        while True:
            self._watched.beat = time.monotonic()
            await asyncio.sleep(BEAT_S)

    def stop(self) -> None:
        self._task.cancel()
        self._dog.forget(self._watched)


class Watchdog:
    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self.ended = 0  # sessions this watchdog ended
        self._watched: list[_Watched] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, name: str, end: Callable[[str], None]) -> Watch:
        """Watch the calling session (its thread and running loop); `end(reason)` is called on
        that loop to end it."""
        watched = _Watched(name, threading.current_thread(), asyncio.get_running_loop(), end)
        with self._lock:
            self._watched.append(watched)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="session-watchdog",
                                                daemon=True)
                self._thread.start()
        return Watch(self, watched)

    def forget(self, watched: _Watched) -> None:
        with self._lock:
            if watched in self._watched:
                self._watched.remove(watched)

    def _run(self) -> None:
        while True:
            time.sleep(BEAT_S)
            now = time.monotonic()
            with self._lock:
                stalled = [w for w in self._watched if now - w.beat > self.stall_s]
            for watched in stalled:
                self._handle(watched, now)

    def _handle(self, watched: _Watched, now: float) -> None:
        if not watched.thread.is_alive() or watched.loop.is_closed():
            # its thread ended without the session's shutdown: nothing left to interrupt (and
            # the thread's id may already belong to another thread)
            log.error("session %s stopped without ending (its thread is gone)", watched.name)
            self.forget(watched)
        elif watched.ended_at is None:
            watched.ended_at = watched.stopped_at = now
            watched.stopped_beat = watched.beat
            self.ended += 1
            log.error("session %s has not run for %.0f s (its event loop is blocked at %s): "
                      "ending it", watched.name, now - watched.beat,
                      where_thread_is(watched.thread))
            reason = f"watchdog: the session stopped running for {self.stall_s:g} s"
            try:
                watched.loop.call_soon_threadsafe(watched.end, reason)
            except RuntimeError:  # its loop is already closed
                self.forget(watched)
        elif watched.interrupted_at is None and watched.beat != watched.stopped_beat:
            # it turned (and ran the end asked for), then stopped again while ending
            watched.stopped_at, watched.stopped_beat = now, watched.beat
            log.error("session %s stopped running again while ending, at %s", watched.name,
                      where_thread_is(watched.thread))
        elif watched.interrupted_at is None:
            if now - watched.stopped_at > self.stall_s and self._interrupt(watched):
                watched.interrupted_at = now
                log.error("session %s was still blocked %.0f s later: interrupted it",
                          watched.name, now - watched.stopped_at)
        elif not watched.reported_stuck and now - watched.interrupted_at > self.stall_s:
            watched.reported_stuck = True
            log.critical("session %s is still blocked %.0f s after it was interrupted, at %s "
                         "(inside native code, which Python cannot interrupt): restart this "
                         "worker when it has drained", watched.name, now - watched.interrupted_at,
                         where_thread_is(watched.thread))

    def _interrupt(self, watched: _Watched) -> bool:
        """Raise `SessionStalled` in the session's thread if its loop has still not turned
        since it was last seen stopped. Checked right before the raise: a loop that turned in
        the meantime is ending the session itself, and the exception would land in whatever
        it runs now. Returns whether it was raised."""
        with self._lock:
            if watched not in self._watched or watched.beat != watched.stopped_beat:
                return False
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(watched.thread.ident),
                                                       ctypes.py_object(SessionStalled))
        return True


def where_thread_is(thread: threading.Thread) -> str:
    """The innermost frames the thread is running, for the log."""
    frame = sys._current_frames().get(thread.ident or 0)
    if frame is None:
        return "an unknown place"
    stack = traceback.extract_stack(frame)[-3:]
    return " < ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
                      for f in reversed(stack))


_process_watchdog: Watchdog | None = None
_process_lock = threading.Lock()


def process_watchdog(stall_s: float) -> Watchdog:
    """The watchdog of this process's sessions (made by the first session)."""
    global _process_watchdog
    with _process_lock:
        if _process_watchdog is None:
            _process_watchdog = Watchdog(stall_s)
        return _process_watchdog
