"""Exchanges the memory model has not analysed yet: their session ran without the database,
their analysis failed, or the session closed first.

The memory keeper (`keeper.py`) asks the model what an exchange adds to what is remembered.
Without the database a session cannot know what is remembered, so it asks nothing and keeps
each exchange in a spill file (`DeferredExchanges`), which the spill import
(`spill_recovery.py`) writes to `memory_backlog` (`store_deferred`); an exchange whose analysis
failed (the model down, its answer unusable) or that the session closed before analysing goes
there through the keeper's writer (`backlog_add`). The user's next session with the database
claims them (`claim`) and its keeper analyses them before its own exchanges. Whether each
analysis worked comes back as rows for the keeper's writer (`done`, `failed`, `release`), which
`UserMemory.apply` writes in the same transaction as the memory they produced. Every query
names its tenant and user.
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


# one exchange kept (a spilled one, or a keeper's `backlog_add`); a row already there (an
# import or a batch retried) is left as it is
_INSERT = ("INSERT INTO memory_backlog (tenant, user_id, session_id, seq, user_text,"
           " assistant_text, said_at, attempts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
           " ON CONFLICT (session_id, seq) DO NOTHING")


def _values(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["tenant"], row["user_id"], row["session_id"], int(row["seq"]), row["user"],
            row["assistant"], datetime.fromtimestamp(float(row["said_at"]), UTC),
            int(row.get("attempts", 0)))


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


async def waiting(pool: asyncpg.Pool, tenant: str, user_id: str) -> int:
    return int(await pool.fetchval(
        "SELECT count(*) FROM memory_backlog WHERE tenant = $1 AND user_id = $2",
        tenant, user_id))


OPS = ("backlog_add", "backlog_done", "backlog_failed", "backlog_release")


async def apply_op(conn: asyncpg.Connection, row: dict[str, Any]) -> None:
    """An exchange this session did not analyse (`backlog_add`, `seq`, `user`, `assistant`,
    `said_at`, `attempts`: 1 when its analysis failed, 0 when the session closed first; a later
    session tries), or what
    became of a claimed one: analysed (`backlog_done`: gone), not analysed (`backlog_failed`:
    tried again later, until the last attempt), or not reached before the session closed
    (`backlog_release`: free for the next session as it was)."""
    if row["op"] == "backlog_add":
        await conn.execute(_INSERT, *_values(row))
        return
    who = (row["tenant"], row["user_id"], int(row["id"]))
    if row["op"] == "backlog_done":
        await conn.execute(
            "DELETE FROM memory_backlog WHERE tenant = $1 AND user_id = $2 AND id = $3", *who)
    elif row["op"] == "backlog_failed":
        given_up = await conn.fetchval(
            "DELETE FROM memory_backlog WHERE tenant = $1 AND user_id = $2 AND id = $3"
            f" AND attempts + 1 >= {MAX_ATTEMPTS} RETURNING session_id", *who)
        if given_up is not None:
            log.warning("memory: an exchange of session %s could not be analysed in %d "
                        "attempts; given up (its messages stay in the log)", given_up,
                        MAX_ATTEMPTS)
        await conn.execute(
            "UPDATE memory_backlog SET attempts = attempts + 1, claimed_by = NULL,"
            " claimed_at = NULL WHERE tenant = $1 AND user_id = $2 AND id = $3", *who)
    else:
        await conn.execute(
            "UPDATE memory_backlog SET claimed_by = NULL, claimed_at = NULL"
            " WHERE tenant = $1 AND user_id = $2 AND id = $3", *who)
