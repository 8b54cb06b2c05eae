"""Sessions a killed worker left open, closed by the next worker started on the same host.

Protects: a session open in Postgres, and one that ran without the database (its row still
spilled), whose cost logs here name a process of this host that no longer runs are closed as
abandoned, their summaries folded from their cost logs and appended to them (so their spill
files can be imported); a session whose process runs, one of another host and one already
closed are left as they are; a database that does not answer is one line.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time

import pytest

from agent.config import Settings
from agent.left_open import close_left_open
from memory.db import Database
from memory.spill_files import SpillKind, append_rows, event_log_path, spill_path
from memory.spill_recovery import session_closed
from memory.store import Store


def cost_log(settings: Settings, session_id: str, host: str, pid: int) -> None:
    """A cost log as a session of process `pid` on `host` left it, open (no summary)."""
    settings.costs_dir.mkdir(parents=True, exist_ok=True)
    now = time.time() - 60
    events = [{"session_id": session_id, "tenant": "acme", "seq": 1, "ts": now,
               "kind": "session", "detail": {"host": host, "pid": pid, "room": "r"},
               "cost_usd": 0.0},
              {"session_id": session_id, "tenant": "acme", "seq": 2, "ts": now + 2,
               "kind": "chat", "detail": {}, "cost_usd": 0.0}]
    event_log_path(settings.costs_dir, session_id).write_text(
        "".join(json.dumps(e) + "\n" for e in events))


async def test_a_killed_workers_sessions_are_closed_and_the_rest_left(
    settings: Settings, db: Database, caplog: pytest.LogCaptureFixture,
) -> None:
    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()  # its process id names no process now
    here = socket.gethostname()
    store = Store(db.pool)
    for session_id in ("s-killed", "s-running", "s-elsewhere", "s-ended"):
        await store.start_session(session_id, tenant="acme", user_id="u-1", room="r",
                                  source="live", provider="gemini", model="m")
    cost_log(settings, "s-killed", here, dead.pid)
    cost_log(settings, "s-running", here, os.getppid())
    cost_log(settings, "s-elsewhere", "another-host", dead.pid)
    cost_log(settings, "s-ended", here, dead.pid)
    await store.end_session("s-ended", 0.5, {"outcome": "completed", "by": "itself"})
    cost_log(settings, "s-offline", here, dead.pid)  # ran without the database: row spilled
    append_rows(spill_path(settings.costs_dir, "s-offline", SpillKind.SESSION),
                [{"tenant": "acme", "user_id": "u-1", "room": "r", "source": "live",
                  "provider": "gemini", "model": "m", "started_at": time.time() - 60}])

    assert await close_left_open(settings) == ["s-killed", "s-offline"]

    rows = {r["id"]: r for r in await db.pool.fetch("SELECT * FROM sessions")}
    for session_id in ("s-killed", "s-offline"):
        summary = json.loads(rows[session_id]["summary"])
        assert summary["outcome"] == "abandoned" and summary["duration_s"] == 2.0
        assert f"its worker (pid {dead.pid} on this host) was killed" in summary["error"]
        assert session_closed(settings.costs_dir, session_id)  # its spills can be imported
    assert rows["s-running"]["ended_at"] is None and rows["s-elsewhere"]["ended_at"] is None
    assert json.loads(rows["s-ended"]["summary"]) == {"outcome": "completed", "by": "itself"}
    assert any(m.startswith("closed 2 sessions a killed worker left open here")
               for m in caplog.messages)
    assert await close_left_open(settings) == []  # nothing twice


async def test_a_database_that_does_not_answer_is_one_line(
    settings: Settings, caplog: pytest.LogCaptureFixture,
) -> None:
    down = settings.with_overrides(
        database_url="postgresql://nobody@127.0.0.1:9/none?connect_timeout=1")
    assert await close_left_open(down) == []
    [line] = [m for m in caplog.messages if "killed worker" in m]
    assert line.startswith("could not look for sessions a killed worker left open: ")
    assert not any(r.exc_info for r in caplog.records)
