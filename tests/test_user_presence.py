"""A live session's user leaving and coming back, as the session records it
(agent/user_presence.py).

Protects: each leaving and coming back is an event in the session's log (`left` with LiveKit's
reason, `back`); the row's `user_left_at` is written only for a leave the session ends on (the user
closed the page), and nothing is watched after it: a connection that dropped otherwise leaves the
session waiting for them and the row as it was, so a worker that dies meanwhile has lost a session,
not seen its user leave; the user back before the agent left is a new session's user, not this
one's return. Another participant's comings and goings change nothing; a reason this SDK does not
know is its number. A database that fails is tried again, then one warning line, the events kept
and the session's close held up 5 s at most. The live path (a real worker, a user removed by the
server and coming back) is tests/test_fleet.py's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from livekit import rtc

from agent.event_log import EventLog
from agent.user_presence import WRITE_TRIES, UserPresence
from memory.db import Database
from memory.store import Store

CLOSED_PAGE = rtc.DisconnectReason.CLIENT_INITIATED


def person(identity: str, reason: int = CLOSED_PAGE) -> SimpleNamespace:
    return SimpleNamespace(identity=identity, disconnect_reason=reason)


def logged(events: EventLog) -> list[dict]:
    return [json.loads(line) for line in events.path.read_text().splitlines()]


def changes(events: EventLog) -> list[tuple[str, str | None]]:
    return [(e["kind"], e["detail"].get("reason")) for e in logged(events)
            if e["kind"] in ("left", "back")]


async def user_left_at(db: Database, session_id: str) -> float | None:
    return await db.pool.fetchval(
        "SELECT extract(epoch FROM user_left_at)::float8 FROM sessions WHERE id = $1", session_id)


async def test_the_row_has_the_leave_the_session_ends_on_and_nothing_after(
    db: Database, tmp_path: Path,
) -> None:
    store = Store(db.pool)
    await store.start_session("s-1", tenant="acme", user_id="ana", room="r", source="live",
                              provider="gemini", model="m")
    events = EventLog(session_id="s-1", tenant="acme", costs_dir=tmp_path, store=None)
    room = rtc.EventEmitter[str]()
    presence = UserPresence(room, "ana", events, store)  # type: ignore[arg-type]
    room.emit("participant_disconnected", person("ana", rtc.DisconnectReason.SIGNAL_CLOSE))
    await asyncio.sleep(0.05)
    assert await user_left_at(db, "s-1") is None, "a dropped connection: the session waits"
    room.emit("participant_connected", person("ana"))
    room.emit("participant_disconnected", person("bob"))  # another's: nothing
    room.emit("participant_disconnected", person("ana", 999))  # a reason this SDK lacks
    room.emit("participant_disconnected", person("ana"))  # the page closed: the session ends
    room.emit("participant_connected", person("ana"))  # back before the agent left: not ours
    room.emit("participant_disconnected", person("ana"))
    await presence.aclose()
    assert changes(events) == [("left", "SIGNAL_CLOSE"), ("back", None), ("left", "999"),
                               ("left", "CLIENT_INITIATED")]
    left = [e for e in logged(events) if e["kind"] == "left"][-1]["ts"]
    assert await user_left_at(db, "s-1") == pytest.approx(left, abs=1e-3)


async def test_a_database_that_fails_is_tried_again_then_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("agent.user_presence.RETRY_S", 0.01)
    tries: list[float] = []

    async def failing(session_id: str, left_at: float) -> None:
        tries.append(left_at)
        raise OSError("connection refused")

    store = SimpleNamespace(mark_user_left=failing)
    events = EventLog(session_id="s-1", tenant="acme", costs_dir=tmp_path, store=None)
    room = rtc.EventEmitter[str]()
    presence = UserPresence(room, "ana", events, store)  # type: ignore[arg-type]
    room.emit("participant_disconnected", person("ana"))
    async with asyncio.timeout(10):
        await presence.aclose()
    assert changes(events) == [("left", "CLIENT_INITIATED")]
    assert len(tries) == WRITE_TRIES
    [line] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert line.getMessage().startswith(
        f"session s-1 could not record in the database that its user left ({WRITE_TRIES} "
        "tries: connection refused)")
    assert not line.exc_info


async def test_a_database_that_does_not_answer_holds_the_close_up_a_few_seconds_at_most(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("agent.user_presence.CLOSE_WAIT_S", 0.2)

    async def hanging(session_id: str, left_at: float) -> None:
        await asyncio.Event().wait()

    events = EventLog(session_id="s-1", tenant="acme", costs_dir=tmp_path, store=None)
    room = rtc.EventEmitter[str]()
    presence = UserPresence(room, "ana", events,
                            SimpleNamespace(mark_user_left=hanging))  # type: ignore[arg-type]
    room.emit("participant_disconnected", person("ana"))
    async with asyncio.timeout(10):
        await presence.aclose()
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "(still trying after 0.2 s as the session closed)" in line


async def test_a_database_back_after_a_blip_has_the_leave(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("agent.user_presence.RETRY_S", 0.01)
    store = Store(db.pool)
    await store.start_session("s-1", tenant="acme", user_id="ana", room="r", source="live",
                              provider="gemini", model="m")
    real, failed = store.mark_user_left, []

    async def blip(session_id: str, left_at: float) -> None:
        if not failed:
            failed.append(left_at)
            raise OSError("connection reset")
        await real(session_id, left_at)

    store.mark_user_left = blip  # type: ignore[method-assign]
    events = EventLog(session_id="s-1", tenant="acme", costs_dir=tmp_path, store=None)
    room = rtc.EventEmitter[str]()
    presence = UserPresence(room, "ana", events, store)  # type: ignore[arg-type]
    room.emit("participant_disconnected", person("ana"))
    await presence.aclose()
    assert await user_left_at(db, "s-1") == pytest.approx(failed[0], abs=1e-3)
