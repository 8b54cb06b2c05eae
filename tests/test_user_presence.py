"""A live session's user leaving and coming back, as the session records it
(agent/user_presence.py).

Protects: each change is an event in the session's log (`left` with LiveKit's reason, `back`)
and the row's `user_left_at` the latest of them, however fast they follow each other (a leave,
a return and a leave again while the first write is under way end with the row saying the last
leave); another participant's comings and goings change nothing; a database that fails is one
warning line, the events kept and the session's close not held up. The live path (a real
worker, a user removed by the server and coming back) is tests/test_fleet.py's.
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
from agent.user_presence import UserPresence
from memory.db import Database
from memory.store import Store


def person(identity: str, reason: int = rtc.DisconnectReason.CLIENT_INITIATED) -> SimpleNamespace:
    return SimpleNamespace(identity=identity, disconnect_reason=reason)


def logged(events: EventLog) -> list[dict]:
    return [json.loads(line) for line in events.path.read_text().splitlines()]


def changes(events: EventLog) -> list[tuple[str, str | None]]:
    return [(e["kind"], e["detail"].get("reason")) for e in logged(events)
            if e["kind"] in ("left", "back")]


async def user_left_at(db: Database, session_id: str) -> float | None:
    return await db.pool.fetchval(
        "SELECT extract(epoch FROM user_left_at)::float8 FROM sessions WHERE id = $1", session_id)


async def test_the_row_says_the_latest_leaving_however_fast_they_follow(
    db: Database, tmp_path: Path,
) -> None:
    store = Store(db.pool)
    await store.start_session("s-1", tenant="acme", user_id="ana", room="r", source="live",
                              provider="gemini", model="m")
    events = EventLog(session_id="s-1", tenant="acme", costs_dir=tmp_path, store=None)
    room = rtc.EventEmitter[str]()
    presence = UserPresence(room, "ana", events, store)  # type: ignore[arg-type]
    room.emit("participant_disconnected", person("ana", rtc.DisconnectReason.SIGNAL_CLOSE))
    await asyncio.sleep(0)  # its write under way
    room.emit("participant_connected", person("ana"))
    room.emit("participant_disconnected", person("bob"))  # another's: nothing
    await asyncio.sleep(0)
    room.emit("participant_disconnected", person("ana"))
    await presence.aclose()
    assert changes(events) == [("left", "SIGNAL_CLOSE"), ("back", None),
                               ("left", "CLIENT_INITIATED")]
    last_left = [e for e in logged(events) if e["kind"] == "left"][-1]["ts"]
    assert await user_left_at(db, "s-1") == pytest.approx(last_left, abs=1e-3)

    events2 = EventLog(session_id="s-1", tenant="acme", costs_dir=tmp_path / "2", store=None)
    presence = UserPresence(room, "ana", events2, store)  # type: ignore[arg-type]
    room.emit("participant_connected", person("ana"))
    await presence.aclose()
    assert await user_left_at(db, "s-1") is None, "back: not away"
    room.emit("participant_disconnected", person("ana"))  # after the close: not watched
    assert changes(events2) == [("back", None)]


async def test_a_database_that_fails_is_one_line_and_the_events_are_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    db = await Database.unconnected("postgresql://nobody@127.0.0.1:9/none?connect_timeout=1",
                                    connections=1)
    events = EventLog(session_id="s-1", tenant="acme", costs_dir=tmp_path, store=None)
    room = rtc.EventEmitter[str]()
    presence = UserPresence(room, "ana", events, Store(db.pool))  # type: ignore[arg-type]
    try:
        room.emit("participant_disconnected", person("ana"))
        async with asyncio.timeout(30):
            await presence.aclose()
    finally:
        await db.close()
    assert changes(events) == [("left", "CLIENT_INITIATED")]
    [line] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert line.getMessage().startswith(
        "session s-1 could not record in the database that its user left: ")
    assert not line.exc_info
