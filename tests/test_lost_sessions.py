"""The record of a session lost with its worker, closed by the worker that re-dispatched its room.

Protects: a lost session still open and silent for `SIGHTLINE_LOST_SESSION_CLOSE_S` is closed
as abandoned, its summary folded from the cost events Postgres holds; one still recording (a
worker still ending it) and one that ended by itself are left as they are; a database that
does not answer is one line. The live path (a SIGKILLed worker, the webhook, the re-dispatch)
is tests/test_fleet.py's.
"""

from __future__ import annotations

import json
import logging
import time

import pytest

from agent.config import Settings
from agent.redispatch import Redispatcher
from memory.db import Database
from memory.store import Store

LIVEKIT = {"livekit_url": "ws://127.0.0.1:9", "livekit_api_key": "k",
           "livekit_api_secret": "s" * 32, "lost_session_close_s": 0.5}


def _event(session_id: str, seq: int, ts: float, kind: str = "chat") -> dict:
    return {"session_id": session_id, "tenant": "acme", "seq": seq, "ts": ts, "kind": kind,
            "cost_usd": 0.0, "detail": {}}


async def test_a_silent_lost_session_is_closed_and_the_others_are_left(
    settings: Settings, db: Database, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "sightline.redispatch")
    store = Store(db.pool)
    for session_id in ("s-silent", "s-recording", "s-ended"):
        await store.start_session(session_id, tenant="acme", user_id="u-1", room="r1",
                                  source="live", provider="gemini", model="m")
    long_ago = time.time() - 600
    await store.add_cost_events([_event("s-silent", 1, long_ago, "session"),
                                 _event("s-silent", 2, long_ago + 1),
                                 _event("s-recording", 1, long_ago, "session"),
                                 _event("s-recording", 2, time.time() + 5)])
    await store.end_session("s-ended", 0.25, {"outcome": "completed", "by": "itself"})
    redispatcher = Redispatcher(settings.with_overrides(**LIVEKIT), settings.database_url or "")
    try:
        await redispatcher.close_lost("r1", ["s-silent", "s-recording", "s-ended", "s-gone"])
    finally:
        await redispatcher.aclose()

    rows = {r["id"]: r for r in await db.pool.fetch("SELECT * FROM sessions")}
    closed = json.loads(rows["s-silent"]["summary"])
    assert rows["s-silent"]["ended_at"] is not None and closed["outcome"] == "abandoned"
    assert "its agent left room r1 while the user stayed" in closed["error"]
    assert closed["recomputed_from"] == "cost_events" and closed["duration_s"] == 1.0
    assert rows["s-recording"]["ended_at"] is None
    assert json.loads(rows["s-ended"]["summary"]) == {"outcome": "completed", "by": "itself"}
    assert any(m.startswith("closed the record of session s-silent of room r1, lost with its "
                            "worker: $0.000000 over 2 recorded events") for m in caplog.messages)
    assert any(m.startswith("session s-recording of room r1, whose agent was lost, recorded an "
                            "event") for m in caplog.messages)


async def test_a_database_that_does_not_answer_is_one_line(
    settings: Settings, caplog: pytest.LogCaptureFixture,
) -> None:
    redispatcher = Redispatcher(settings.with_overrides(**LIVEKIT),
                                "postgresql://nobody@127.0.0.1:9/none?connect_timeout=1")
    try:
        await redispatcher.close_lost("r1", ["s-1"])
    finally:
        await redispatcher.aclose()
    [line] = [m for m in caplog.messages if "could not close" in m]
    assert line.startswith("could not close the sessions s-1 lost with room r1's agent: ")
    assert "sightline costs ID --close" in line
    assert not any(r.exc_info for r in caplog.records)
