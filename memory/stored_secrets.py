"""Hiding the secrets in what was stored before Sightline hid them (`sightline memory
hide-secrets`).

Screen text, messages, exchanges for the memory model, live assist's words and hand-off reasons
are now stored with each secret's value replaced by `HIDDEN` (memory/secret_text.py), and no
fact or summary holding one is written. What a database and cost logs written earlier hold is
as it was said or read: this pass finds it, for one tenant at a time, and rewrites it.

- Messages and screen events: their text with each secret hidden, embedded again (a vector of
  the text as it was is left for nothing). Their text is fixed once inserted (the BM25
  statistics follow inserts and deletes, migration 0013), so a changed row is deleted and
  inserted again under its id, all its other columns as they were.
- A fact holding a secret is deleted, as the memory keeper would have refused it; a summary
  has its secrets hidden; an exchange waiting for the memory model too.
- What the sessions' cost records quote of the user and their screen (memory/forget.py
  `QUOTING`: screen lines, live assist's words, a hand-off's reason) has its secrets hidden, in
  `cost_events`, the sessions' summaries and hand-off reasons and their closed JSONL logs.

Each batch of changed rows is one transaction holding the memory lock of each user it touches,
as a privacy request's deletion does (`lock_memory`): a user forgotten meanwhile is forgotten
wholly before or after it, never brought back by the insert. Texts are scanned on a thread, a
batch of `BATCH` rows at a time. Running it again changes nothing.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from .embeddings import Embedder
from .forget import change_logs, change_records
from .screen_timeline import search_words
from .secret_text import hide_in_text, hide_in_texts, hide_secrets, secret_kind
from .user_memory import embed_or_none, lock_memory

BATCH = 500


def hidden_in(field: str, value: Any) -> Any:
    """A cost record's quoting field (memory/forget.py `Change`) with its secrets hidden: a
    read's lines as one text (a private key spans lines), words and reasons as they are."""
    if field == "user":  # who the user is: their id, no secret
        return value
    if isinstance(value, list) and all(isinstance(line, str) for line in value):
        lines, hidden = hide_secrets(value)
        return lines if hidden else value
    return hide_in_text(value) if isinstance(value, str) else value


async def _lock_users(conn: asyncpg.Connection, tenant: str, users: set[str | None]) -> None:
    """The memory lock of each user named (a screen event's may be unknown: nobody's memory),
    in one order, so two passes never wait on each other."""
    for user_id in sorted(u for u in users if u is not None):
        await lock_memory(conn, tenant, user_id)


async def _changed_rows(pool: asyncpg.Pool, tenant: str, table: str, columns: tuple[str, ...],
                        ) -> list[list[asyncpg.Record]]:
    """Batches of `table`'s rows of `tenant` (id, user_id, `columns`, and each column's text
    with its secrets hidden as `new_<column>`) where any text changes, oldest first."""
    batches, last = [], 0
    while rows := await pool.fetch(
            f"SELECT id, user_id, {', '.join(columns)} FROM {table}"
            f" WHERE tenant = $1 AND id > $2 ORDER BY id LIMIT {BATCH}", tenant, last):
        last = rows[-1]["id"]
        texts = [row[column] or "" for row in rows for column in columns]
        hidden = iter(await asyncio.to_thread(hide_in_texts, texts))
        changed = []
        for row in rows:
            new = {f"new_{column}": next(hidden) for column in columns}
            if any(new[f"new_{c}"] != (row[c] or "") for c in columns):
                changed.append({**dict(row), **new})
        if changed:
            batches.append(changed)
    return batches


async def _insertable(pool: asyncpg.Pool, table: str) -> list[str]:
    """`table`'s columns a row is inserted with: all but the generated ones."""
    return [r["column_name"] for r in await pool.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_schema ="
        " current_schema() AND table_name = $1 AND is_generated = 'NEVER'"
        " ORDER BY ordinal_position", table)]


async def _reinsert_searchable(
    pool: asyncpg.Pool, embedder: Embedder, tenant: str, table: str, column: str,
    words: Callable[[str], str] | None,
) -> int:
    """Messages' `content` or screen events' `text` (and `words`, what search reads, from it)
    with secrets hidden: each changed row deleted and inserted again under its id,
    re-embedded from what it is embedded from (the text, or its words)."""
    count = 0
    batches = await _changed_rows(pool, tenant, table, (column,))
    columns = ", ".join(await _insertable(pool, table)) if batches else ""
    words_set = ", words = n.w" if words else ""
    for batch in batches:
        texts = [row[f"new_{column}"] for row in batch]
        searched = [words(text) for text in texts] if words else texts
        vectors = await embed_or_none(embedder, searched)
        ids = [row["id"] for row in batch]
        async with pool.acquire() as conn, conn.transaction():
            await _lock_users(conn, tenant, {row["user_id"] for row in batch})
            await conn.execute(f"CREATE TEMP TABLE hidden_rows (LIKE {table}) ON COMMIT DROP")
            await conn.execute(
                f"INSERT INTO hidden_rows SELECT * FROM {table}"
                " WHERE tenant = $1 AND id = ANY($2::bigint[]) FOR UPDATE", tenant, ids)
            await conn.execute(
                f"UPDATE hidden_rows h SET {column} = n.t{words_set}, embedding = n.v::vector,"
                " embed_model = CASE WHEN n.v IS NULL THEN NULL ELSE $4 END"
                " FROM unnest($1::bigint[], $2::text[], $3::text[], $5::text[]) AS n (id, t, w, v)"
                " WHERE h.id = n.id", ids, texts, searched, embedder.name, vectors)
            await conn.execute(f"DELETE FROM {table} WHERE tenant = $1 AND id = ANY($2::bigint[])",
                               tenant, ids)
            count += int((await conn.execute(
                f"INSERT INTO {table} ({columns}) SELECT {columns} FROM hidden_rows"
            )).split()[-1])
    return count


async def _drop_facts(pool: asyncpg.Pool, tenant: str) -> int:
    rows = await pool.fetch("SELECT id, user_id, text FROM memory_facts WHERE tenant = $1",
                            tenant)
    kinds = await asyncio.to_thread(lambda: [secret_kind(row["text"]) for row in rows])
    secret = [row for row, kind in zip(rows, kinds, strict=True) if kind is not None]
    if not secret:
        return 0
    async with pool.acquire() as conn, conn.transaction():
        await _lock_users(conn, tenant, {row["user_id"] for row in secret})
        return len(await conn.fetch(
            "DELETE FROM memory_facts WHERE tenant = $1 AND id = ANY($2::bigint[]) RETURNING 1",
            tenant, [row["id"] for row in secret]))


async def _hide_summaries(pool: asyncpg.Pool, tenant: str) -> int:
    rows = await pool.fetch("SELECT user_id, text FROM memory_summaries WHERE tenant = $1",
                            tenant)
    hidden = await asyncio.to_thread(hide_in_texts, [row["text"] for row in rows])
    changed = [(row["user_id"], new) for row, new in zip(rows, hidden, strict=True)
               if new != row["text"]]
    async with pool.acquire() as conn, conn.transaction():
        await _lock_users(conn, tenant, {user_id for user_id, _ in changed})
        await conn.executemany(
            "UPDATE memory_summaries SET text = $3 WHERE tenant = $1 AND user_id = $2",
            [(tenant, user_id, text) for user_id, text in changed])
    return len(changed)


async def _hide_backlog(pool: asyncpg.Pool, tenant: str) -> int:
    count = 0
    for batch in await _changed_rows(pool, tenant, "memory_backlog",
                                     ("user_text", "assistant_text")):
        await pool.executemany(
            "UPDATE memory_backlog SET user_text = $3, assistant_text = $4"
            " WHERE tenant = $1 AND id = $2",
            [(tenant, row["id"], row["new_user_text"], row["new_assistant_text"])
             for row in batch])
        count += len(batch)
    return count


async def stored_tenants(pool: asyncpg.Pool) -> list[str]:
    """Every tenant with something stored that may quote a user or their screen."""
    return [r["tenant"] for r in await pool.fetch(
        "SELECT tenant FROM sessions UNION SELECT tenant FROM messages UNION SELECT tenant"
        " FROM screen_events UNION SELECT tenant FROM memory_facts UNION SELECT tenant FROM"
        " memory_summaries UNION SELECT tenant FROM memory_backlog ORDER BY tenant")]


async def tenant_sessions(pool: asyncpg.Pool, tenant: str) -> list[str]:
    """The ids of `tenant`'s sessions, oldest first: whose records and archived frames to
    rewrite."""
    return [r["id"] for r in await pool.fetch(
        "SELECT id FROM sessions WHERE tenant = $1 ORDER BY started_at", tenant)]


async def recorded_sessions(pool: asyncpg.Pool) -> set[str]:
    """The ids of every tenant's sessions: an archived-frame directory named by none of them
    belongs to a session whose row was never written (it ran without the database, or its
    spill files were lost)."""
    return {r["id"] for r in await pool.fetch("SELECT id FROM sessions")}


async def hide_stored_secrets(pool: asyncpg.Pool, embedder: Embedder, tenant: str,
                              sessions: list[str], costs_dir: Path,
                              ) -> tuple[Counter[str], list[str]]:
    """Hide the secrets in what `tenant` has stored (see the module's docstring), its
    `sessions` (`tenant_sessions`) for the cost records: how many rows, events and logs
    changed, and the tenant's sessions still open, whose logs are left as they are (they are
    written with secrets hidden from now on; run it again once they end)."""
    done: Counter[str] = Counter()
    done["messages"] = await _reinsert_searchable(pool, embedder, tenant, "messages",
                                                  "content", None)
    done["screen_events"] = await _reinsert_searchable(pool, embedder, tenant, "screen_events",
                                                       "text", search_words)
    done["facts_deleted"] = await _drop_facts(pool, tenant)
    done["summaries"] = await _hide_summaries(pool, tenant)
    done["deferred_exchanges"] = await _hide_backlog(pool, tenant)
    async with pool.acquire() as conn, conn.transaction():
        done["events"] = await change_records(conn, sessions, hidden_in)
    done["cost_logs_rewritten"], still_open = await asyncio.to_thread(
        change_logs, costs_dir, sessions, hidden_in)
    return done, still_open
