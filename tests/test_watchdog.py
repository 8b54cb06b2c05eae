"""The session watchdog (agent/watchdog.py) on sessions of its own: event loops in threads
whose coroutines stop them for a while or for good, watched as a worker's sessions are.

A loop stopped past the stall time is asked to end its session; one that turns again ends it
that way, never hit by `SessionStalled` (which, landing in asyncio's own code, would break the
loop and skip the session's shutdown); one stopped for good is interrupted and ends the same.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import re
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from agent import watchdog
from agent.watchdog import SessionStalled, Watchdog

STALL_S = 2.0
GIVE_UP_S = 60.0  # a stuck test session ends itself by then


@pytest.fixture(autouse=True)
def quick_beats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beats and checks every 50 ms, so a session is seen stopped soon after `STALL_S`."""
    monkeypatch.setattr(watchdog, "BEAT_S", 0.05)


class Session:
    """A session's thread: its loop runs `body(ended)` under the watchdog's watch, where
    `ended` is set by the end the watchdog asks for; `outcome` is how the thread ended."""

    def __init__(self, dog: Watchdog,
                 body: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
        self.reasons: list[str] = []
        self.outcome = ""
        self._dog, self._body = dog, body
        self._thread = threading.Thread(target=self._run, name="test-session")
        self._thread.start()

    def _run(self) -> None:
        async def session() -> None:
            ended = asyncio.Event()

            def end(reason: str) -> None:
                self.reasons.append(reason)
                ended.set()
            watch = self._dog.watch("test", end)
            try:
                await self._body(ended)
                await asyncio.wait_for(ended.wait(), GIVE_UP_S)
                await asyncio.sleep(0.2)  # the loop turns on, as a session's shutdown does
            finally:
                watch.stop()
        try:
            asyncio.run(session())
            self.outcome = "ended"
        except BaseException as exc:  # what ended the thread is the result
            self.outcome = repr(exc)

    async def ended(self) -> None:
        await asyncio.to_thread(self._thread.join)


def hold(seconds: float) -> None:
    """Code that keeps the loop for `seconds` (a slow tool, a pathological input)."""
    time.sleep(seconds)


@pytest.fixture
def raised(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The exceptions the watchdog raised into a thread (raised as ever)."""
    calls: list[object] = []
    set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc

    def spy(ident: ctypes.c_ulong, exc: ctypes.py_object) -> int:  # type: ignore[type-arg]
        calls.append(exc.value)
        return int(set_async_exc(ident, exc))
    monkeypatch.setattr(ctypes.pythonapi, "PyThreadState_SetAsyncExc", spy)
    return calls


async def test_a_loop_that_turns_again_ends_its_session_without_an_interruption(
        monkeypatch: pytest.MonkeyPatch, raised: list[object]) -> None:
    """The loop turns again just after the watchdog saw it stopped (here: while it logs
    where): the session is ended by the end it asked for, and `SessionStalled` is not raised
    into the loop (in asyncio's own code, it would end the thread without the shutdown)."""
    resumed = threading.Event()
    where = watchdog.where_thread_is

    def slow_to_log(thread: threading.Thread) -> str:
        place = where(thread)
        resumed.wait(GIVE_UP_S)
        time.sleep(0.3)  # the loop is back in its select, waiting for its next beat
        return place
    monkeypatch.setattr(watchdog, "where_thread_is", slow_to_log)

    async def stops_a_while(_: asyncio.Event) -> None:
        hold(STALL_S * 1.5)
        resumed.set()
    session = Session(Watchdog(STALL_S), stops_a_while)
    await session.ended()
    assert raised == []
    assert session.outcome == "ended"
    assert session.reasons == [f"watchdog: the session stopped running for {STALL_S:g} s"]


async def test_a_loop_stopped_past_the_stall_time_is_asked_to_end_first(
        raised: list[object]) -> None:
    """Stopped longer than the stall time, not twice as long: the session ends, and the code
    that held the loop ran to its end, uninterrupted."""
    finished = []

    async def stops_a_while(_: asyncio.Event) -> None:
        hold(STALL_S * 1.5)
        finished.append(True)
    session = Session(Watchdog(STALL_S), stops_a_while)
    await session.ended()
    assert raised == []
    assert (session.outcome, finished, len(session.reasons)) == ("ended", [True], 1)


async def test_a_loop_stopped_for_good_is_interrupted_and_its_session_ends(
        raised: list[object], caplog: pytest.LogCaptureFixture) -> None:
    """Python code that never gives the loop back gets `SessionStalled`, in the task that
    runs it; the end asked for then runs, and the log says where the loop was held."""
    stuck_ended: list[BaseException] = []

    def spin() -> None:
        give_up = time.monotonic() + GIVE_UP_S
        while time.monotonic() < give_up:
            time.sleep(0.01)

    async def spins() -> None:
        spin()

    async def stops_for_good(ended: asyncio.Event) -> None:
        stuck = asyncio.create_task(spins())
        await ended.wait()
        stuck_ended.extend(await asyncio.gather(stuck, return_exceptions=True))
    dog = Watchdog(STALL_S)
    with caplog.at_level(logging.ERROR, logger="sightline.watchdog"):
        session = Session(dog, stops_for_good)
        await session.ended()
    assert raised == [SessionStalled]
    assert (session.outcome, len(session.reasons), dog.ended) == ("ended", 1, 1)
    assert len(stuck_ended) == 1 and isinstance(stuck_ended[0], SessionStalled)
    assert re.search(r"session test has not run for \d+ s \(its event loop is blocked at "
                     r".*spin", caplog.text)
