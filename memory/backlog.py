"""Exchanges the memory model has not analysed yet: their session ran without the database,
their analysis failed, the session closed first, or its worker died before it was done.

The memory keeper (`keeper.py`) asks the model what an exchange adds to what is remembered.
Without the database a session cannot know what is remembered, so it asks nothing and keeps
each exchange in a spill file (`DeferredExchanges`), which the spill import
(`spill_recovery.py`) writes to `memory_backlog` (`store_deferred`). A session with the
database writes each exchange there too, through the keeper's writer, as it queues it for the
model (`backlog_add`, claimed by the session), so that a worker killed before the analysis
leaves it behind rather than losing it with the process (the fleet's re-dispatch of the room
hands it back, `release_lost`, or its claim expires); the analysis
settles it (`backlog_done`: gone; `backlog_failed`: tried again later; `backlog_release`: the
session closed first). The user's next session with the database claims what waits (`claim`)
and its keeper analyses them before its own exchanges, settling each the same way. The keeper
names a row by its `id` when it claimed it, by its session and `seq` when it added it;
`UserMemory.apply` writes each settlement in the same transaction as the memory it produced.
Every query names its tenant and user.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from .spill_files import SpillKind, append_rows, spill_path

log = logging.getLogger("sightline.memory")

CLAIM_EXPIRES = "10 minutes"  # a claim older than this was a session that died mid-analysis
MAX_ATTEMPTS = 3
MAX_CLAIMED = 200  # per session: the rest wait for the next one


@dataclass(frozen=True)
class Deferred:
    """One exchange of an earlier session, waiting for the memory model."""

    id: int
    session_id: str
    user: str
    assistant: str


class DeferredExchanges:
    """A session without the database: its exchanges go to disk for a later keeper."""

    def __init__(self, spill_dir: Path, *, tenant: str, user_id: str, session_id: str) -> None:
        self._path = spill_path(spill_dir, session_id, SpillKind.EXCHANGES)
        self._who = {"tenant": tenant, "user_id": user_id, "session_id": session_id}
        self.kept = 0

    def exchange(self, user: str, assistant: str) -> bool:
        """Keep one exchange (a line appended to a file: microseconds); whether it was kept
        (the disk can refuse it: said in one line by `append_rows`)."""
        if not (user.strip() and assistant.strip()):
            return False
        row = {**self._who, "seq": self.kept, "user": user, "assistant": assistant,
               "said_at": time.time()}
        if append_rows(self._path, [row]) is None:
            return False
        self.kept += 1
        return True


async def store_deferred(pool: asyncpg.Pool, rows: Sequence[dict[str, Any]]) -> None:
    """Write spilled exchanges; a row already written (an import retried) is left as it is."""
    await pool.executemany(
        _INSERT, [_values(r) for r in rows])


# one exchange kept (a spilled one, or a keeper's `backlog_add`, claimed by its session when
# `claimed`); a row already there (an import or a batch retried) is left as it is
_INSERT = ("INSERT INTO memory_backlog (tenant, user_id, session_id, seq, user_text,"
           " assistant_text, said_at, attempts, claimed_by, claimed_at)"
           " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CASE WHEN $9 THEN $3 END,"
           " CASE WHEN $9 THEN now() END)"
           " ON CONFLICT (session_id, seq) DO NOTHING")


def _values(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["tenant"], row["user_id"], row["session_id"], int(row["seq"]), row["user"],
            row["assistant"], datetime.fromtimestamp(float(row["said_at"]), UTC),
            int(row.get("attempts", 0)), bool(row.get("claimed")))


async def claim(pool: asyncpg.Pool, tenant: str, user_id: str, session_id: str,
                ) -> list[Deferred]:
    """The user's waiting exchanges, oldest first, now claimed by `session_id`."""
    rows = await pool.fetch(
        "UPDATE memory_backlog SET claimed_by = $3, claimed_at = now() WHERE id IN ("
        " SELECT id FROM memory_backlog WHERE tenant = $1 AND user_id = $2 AND"
        f" (claimed_at IS NULL OR claimed_at < now() - interval '{CLAIM_EXPIRES}')"
        f" ORDER BY id LIMIT {MAX_CLAIMED} FOR UPDATE SKIP LOCKED)"
        " RETURNING id, session_id, user_text, assistant_text",
        tenant, user_id, session_id)
    return sorted((Deferred(r["id"], r["session_id"], r["user_text"], r["assistant_text"])
                   for r in rows), key=lambda d: d.id)


async def release_lost(conn: asyncpg.Connection, room: str) -> int:
    """Hand back what the sessions of `room` that never ended had claimed, once the room's
    agent is known to be lost (`redispatches.claim`): the session dispatched in its place
    analyses them at its start instead of ten minutes later. Each row stays in the tenant of
    the session that held it; returns how many were handed back."""
    released = await conn.fetch(
        "UPDATE memory_backlog b SET claimed_by = NULL, claimed_at = NULL FROM sessions s"
        " WHERE b.claimed_by = s.id AND b.tenant = s.tenant AND s.room = $1"
        " AND s.ended_at IS NULL RETURNING s.id", room)
    if released:
        log.info("memory: %d exchanges the lost session(s) %s of room %s had not analysed "
                 "are free for the next one", len(released),
                 ", ".join(sorted({r["id"] for r in released})), room)
    return len(released)


async def waiting(pool: asyncpg.Pool, tenant: str, user_id: str) -> int:
    return int(await pool.fetchval(
        "SELECT count(*) FROM memory_backlog WHERE tenant = $1 AND user_id = $2",
        tenant, user_id))


OPS = ("backlog_add", "backlog_done", "backlog_failed", "backlog_release", "backlog_claimed")


async def apply_op(conn: asyncpg.Connection, row: dict[str, Any]) -> None:
    """An exchange kept for the model (`backlog_add`: `seq`, `user`, `assistant`, `said_at`,
    `attempts`, `claimed` while its session analyses it), or what became of one: analysed
    (`backlog_done`: gone), not analysed (`backlog_failed`: tried again later, until the last
    attempt), or not reached before the session closed (`backlog_release`: free for the next
    session as it was); or that the session named is still at work on what it claimed
    (`backlog_claimed`: its claims start their CLAIM_EXPIRES again). A settled row is named by
    its `id`, else by `session_id` and `seq`."""
    if row["op"] == "backlog_add":
        await conn.execute(_INSERT, *_values(row))
        return
    if row["op"] == "backlog_claimed":
        await conn.execute(
            "UPDATE memory_backlog SET claimed_at = now() WHERE tenant = $1 AND user_id = $2"
            " AND claimed_by = $3", row["tenant"], row["user_id"], row["session_id"])
        return
    if "id" in row:
        which, key = "id = $3", (int(row["id"]),)
    else:
        which, key = "session_id = $3 AND seq = $4", (row["session_id"], int(row["seq"]))
    where = f"WHERE tenant = $1 AND user_id = $2 AND {which}"
    who = (row["tenant"], row["user_id"], *key)
    if row["op"] == "backlog_done":
        await conn.execute(f"DELETE FROM memory_backlog {where}", *who)
    elif row["op"] == "backlog_failed":
        given_up = await conn.fetchval(
            f"DELETE FROM memory_backlog {where} AND attempts + 1 >= {MAX_ATTEMPTS}"
            " RETURNING session_id", *who)
        if given_up is not None:
            log.warning("memory: an exchange of session %s could not be analysed in %d "
                        "attempts; given up (its messages stay in the log)", given_up,
                        MAX_ATTEMPTS)
        await conn.execute(
            "UPDATE memory_backlog SET attempts = attempts + 1, claimed_by = NULL,"
            f" claimed_at = NULL {where}", *who)
    else:
        await conn.execute(
            f"UPDATE memory_backlog SET claimed_by = NULL, claimed_at = NULL {where}", *who)
