"""What Sightline remembers about one user of one tenant beyond the current session, and how a
turn recalls it.

Three kinds of memory, all in Postgres: facts (one row per key, so a fact is updated, not
appended again), one rolling summary of the user's earlier conversation, and the message log
itself, searchable by meaning (the message's vector) and by words (its tsvector). `recall()`
gives a turn the summary, the facts most related to the question and the earlier messages that
match it, fused like knowledge hits. Every query names its tenant and user. Writes arrive as rows
from a `BackgroundWriter` (`apply`), so storing memory never delays a reply and survives an
outage. One user can have two sessions at once (two devices, a session rejoined while the old
one closes), each keeper writing from its own view: `apply` merges what a keeper wrote with what
the other wrote since, so neither's learning is lost (a summary may then hold one part a line,
`SUMMARY_PARTS`, until a keeper's next fold takes them in), and keeps the user's facts to
`MAX_FACTS` whatever each keeper's view held. Every change of a user's facts or summary moves
their memory's version (`version`, migration 0023), so a keeper reads the memory again only
when something other than its own rows changed it.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg

from . import backlog, bm25
from .db import storable
from .embeddings import Embedder
from .knowledge import Hit, QueryVector, fuse, resolved, vector_literal
from .spill_files import ROW_KEY

log = logging.getLogger("sightline.memory")

MAX_FACTS = 100  # per user; past it the least recently updated fact is forgotten
FACTS_PER_TURN = 8  # a user with at most this many facts gets all of them on every turn
TURNS_PER_TURN = 3
CANDIDATES = 20
# between the parts of a summary that sessions of the user folded at once (`merged_summary`):
# a fold's summary is one line (the keeper's parse joins its whitespace)
SUMMARY_PARTS = "\n"
_MEMORY_OPS = ("fact", "forget", "summary")
# a user's newest applied keeper rows whose keys are kept (`_first_writes`): a row comes twice
# (a batch retried, a spill file imported again) soon after it first did, so older keys go
KEPT_ROW_KEYS = 1000
# what a row of `apply` or `defer` stores as text, or matches against stored text (`seen`)
_ROW_TEXTS = ("key", "text", "seen", "user", "assistant")
# the first key of the advisory locks `apply` takes, one a user: locks of their own, apart from
# the one-key locks of migrations and redispatches
_MEMORY_LOCKS = 0x5160_3E3E


@dataclass(frozen=True)
class Fact:
    key: str
    text: str
    updated_at: datetime | None = None


class MemoryView(NamedTuple):
    """The user's facts (least recently updated first) and summary, and the version they had
    (`version`)."""

    facts: list[Fact]
    summary: str | None
    version: int


# each user's memory version (`version`) before and after a batch `apply` wrote, under its lock
Versions = dict[tuple[str, str], tuple[int, int]]


@dataclass(frozen=True)
class Recollection:
    """What one turn recalls: the summary, related facts and earlier messages (oldest first)."""

    summary: str | None = None
    facts: list[Fact] = field(default_factory=list)
    turns: list[Hit] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.summary or self.facts or self.turns)


async def embed_or_none(embedder: Embedder, texts: list[str]) -> list[str | None]:
    """pgvector literals for `texts`, or None for each when the embedder fails: the row is still
    stored (keyword recall finds it) and the failure is logged, never raised."""
    if not texts:
        return []
    try:
        vectors = await embedder.embed_documents(texts)
    except Exception as exc:
        log.warning("could not embed %d memory rows with %s, storing them without vectors: %r",
                    len(texts), embedder.name, exc)
        return [None] * len(texts)
    return [vector_literal(v) for v in vectors]


def _storable_row(row: dict[str, Any]) -> dict[str, Any]:
    """`row` with its texts as Postgres can store them (`storable`), so one NUL or lone
    surrogate fails no batch, whoever wrote the row: the keeper, the user's `remember`, a spill
    file imported. A `seen` is cleaned alike, to match the text that was stored."""
    return {name: storable(value) if name in _ROW_TEXTS and isinstance(value, str) else value
            for name, value in row.items()}


async def lock_memory(conn: asyncpg.Connection, tenant: str, user_id: str) -> None:
    """Hold the user's memory until `conn`'s transaction ends: what `UserMemory.apply` reads
    to merge a row with stays so until it is written, and a privacy request's deletion
    (`Store.forget_user`) comes wholly before or after a write, never between its read and
    its write."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _MEMORY_LOCKS,
                       f"{tenant}\n{user_id}")


async def _version(conn: asyncpg.Connection, tenant: str, user_id: str) -> int:
    """`UserMemory.version`, on `conn`."""
    return int(await conn.fetchval(
        "SELECT coalesce((SELECT version FROM memory_versions WHERE tenant = $1"
        " AND user_id = $2), 0)", tenant, user_id))


def same_fact(a: str, b: str) -> bool:
    return " ".join(a.lower().split()).rstrip(".") == " ".join(b.lower().split()).rstrip(".")


def fresh_key(key: str, taken: set[str]) -> str:
    """A key like `key` that no fact has: where a fact that may not replace another goes."""
    for n in itertools.count(2):
        fresh = f"{key[:56]}_{n}"
        if fresh not in taken:
            return fresh
    raise AssertionError("unreachable")


def fact_place(key: str, text: str, seen: str | None, known: dict[str, str]) -> str | None:
    """Where a keeper's fact goes among the user's stored facts `known` (key: text), its view
    having held `seen` under `key` (None: nothing): nowhere when the user has it already, under
    any key (or it is a write retried); under `key` when that holds what the keeper saw, or
    nothing; else beside what another session stored there since, under a fresh key (the
    keeper checked its right to replace `seen`, never that text)."""
    if any(same_fact(text, stored) for stored in known.values()):
        return None
    current = known.get(key)
    return key if current is None or current == seen else fresh_key(key, set(known))


def merged_summary(current: str | None, seen: str | None, new: str) -> str | None:
    """The summary to store when a keeper that folded `seen` into `new` writes over `current`:
    `new` in place of the parts it was folded from (all of `current`, when nobody wrote since),
    the parts another session wrote since kept before it, one a line; None when `new` is there
    already (a write retried, or a spill file imported again)."""
    parts = current.split(SUMMARY_PARTS) if current else []
    if new in parts:
        return None
    folded = set(seen.split(SUMMARY_PARTS)) if seen else set()
    return SUMMARY_PARTS.join([*(part for part in parts if part not in folded), new])


class UserMemory:
    def __init__(self, pool: asyncpg.Pool, embedder: Embedder) -> None:
        self._pool = pool
        self.embedder = embedder

    async def has_any(self, tenant: str, user_id: str, before_id: int) -> bool:
        """Whether there is anything to recall (saves embedding the question when not)."""
        return bool(await self._pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM memory_facts WHERE tenant = $1 AND user_id = $2)"
            " OR EXISTS (SELECT 1 FROM memory_summaries WHERE tenant = $1 AND user_id = $2)"
            " OR EXISTS (SELECT 1 FROM messages WHERE tenant = $1 AND user_id = $2"
            " AND id < $3)", tenant, user_id, before_id))

    async def recall(
        self, tenant: str, user_id: str, question: str, vector: QueryVector, *,
        before_id: int, facts: int = FACTS_PER_TURN, turns: int = TURNS_PER_TURN,
    ) -> Recollection:
        """The summary, the `facts` facts nearest the question, and up to `turns` messages older
        than `before_id` (the ones not already in the conversation) that share a word with the
        question and rank best on meaning and words fused. The keyword search runs first, while
        the question's vector (if it is being embedded) is computed; the rest is then one
        statement (`_nearest`): two round trips in all, as each one waits its turn for the
        session's connection and, on a loaded worker, for the event loop's thread."""
        question = bm25.searchable(question)
        async with self._pool.acquire() as conn:
            keyword_rows = await self._keyword_rows(conn, tenant, user_id, question, before_id)
            found = await resolved(vector)
            # no vector in time: the newest facts, and the messages by their keywords alone
            literal = None if found is None else vector_literal(found)
            nearest = await self._nearest(conn, tenant, user_id, literal, before_id, facts)
        summary = next((r["content"] for r in nearest if r["kind"] == "summary"), None)

        def hits(rows: list[asyncpg.Record]) -> list[Hit]:
            return [Hit(r["id"], r["content"], r["role"], float(r["score"]), at=r["created_at"])
                    for r in rows]
        vector_rows = [r for r in nearest if r["kind"] == "message"]
        fused = [h for h in fuse(self.embedder.fusion, hits(vector_rows), hits(keyword_rows))
                 if h.keyword_rank is not None][:turns]
        return Recollection(
            summary=summary,
            facts=[Fact(r["role"], r["content"], r["created_at"])
                   for r in nearest if r["kind"] == "fact"],
            turns=sorted(fused, key=lambda h: h.id),
        )

    async def _nearest(
        self, conn: asyncpg.Connection, tenant: str, user_id: str, literal: str | None,
        before_id: int, facts: int,
    ) -> list[asyncpg.Record]:
        """The user's `facts` facts nearest the vector `literal` (those of another embedder,
        or none, after them, newest first; all newest first without a vector), then their
        `CANDIDATES` messages older than `before_id` nearest it (none without a vector), each
        in that order, and the user's summary, as rows of `kind` 'fact' (`role` its key,
        `content` its text, `created_at` when it was updated), 'message' or 'summary'
        (`content` its text)."""
        dim, model = int(self.embedder.dim), self.embedder.name
        distance = f"embedding::vector({dim}) <=> $3::vector({dim})"
        return await conn.fetch(
            "SELECT 'fact' AS kind, NULL::bigint AS id, key AS role, text AS content,"
            " updated_at AS created_at, NULL::float8 AS score,"
            " row_number() OVER (ORDER BY same DESC, distance, updated_at DESC) AS rank FROM"
            " (SELECT key, text, updated_at, coalesce(embed_model = $4, false) AS same,"
            f" CASE WHEN embed_model = $4 THEN {distance} END AS distance FROM memory_facts"
            " WHERE tenant = $1 AND user_id = $2"
            " ORDER BY same DESC, distance, updated_at DESC LIMIT $5) f"
            " UNION ALL"
            " SELECT 'message', id, role, content, created_at, 1 - distance,"
            " row_number() OVER (ORDER BY distance) FROM"
            f" (SELECT id, role, content, created_at, {distance} AS distance FROM messages"
            " WHERE tenant = $1 AND user_id = $2 AND id < $6 AND embed_model = $4"
            " AND $3 IS NOT NULL ORDER BY distance LIMIT $7) m"
            " UNION ALL"
            " SELECT 'summary', NULL, NULL, text, updated_at, NULL, 1 FROM memory_summaries"
            " WHERE tenant = $1 AND user_id = $2"
            " ORDER BY kind, rank",
            tenant, user_id, literal, model, facts, before_id, CANDIDATES)

    @staticmethod
    async def _keyword_rows(
        conn: asyncpg.Connection, tenant: str, user_id: str, question: str, before_id: int,
    ) -> list[asyncpg.Record]:
        """The user's messages older than `before_id` ranked by BM25, with statistics per
        tenant and user (migration 0013): how rare a word is in this user's conversations.
        The question is looked up as written (Postgres keeps `message.Message` as one lexeme,
        as in the messages) and as its words apart (`message`), so a message that names only
        part of a dotted name still matches, as it did under `ts_rank_cd`."""
        words = " ".join(re.findall(r"[a-z0-9]+", question.lower()))
        scores = bm25.scores("messages_bm25", "tenant = $1 AND user_id = $2", "$5",
                             "row_id < $3")
        return await conn.fetch(
            "SELECT m.id, m.role, m.content, m.created_at, s.score FROM ("
            f" SELECT id, score FROM {scores} s"
            " ORDER BY score DESC, id DESC LIMIT $4) s JOIN messages m ON m.id = s.id"
            " ORDER BY s.score DESC, s.id DESC",
            tenant, user_id, before_id, CANDIDATES, f"{question}\n{words}")

    async def facts(self, tenant: str, user_id: str) -> list[Fact]:
        rows = await self._pool.fetch(
            "SELECT key, text, updated_at FROM memory_facts WHERE tenant = $1 AND user_id = $2"
            " ORDER BY key", tenant, user_id)
        return [Fact(r["key"], r["text"], r["updated_at"]) for r in rows]

    async def summary(self, tenant: str, user_id: str) -> str | None:
        value = await self._pool.fetchval(
            "SELECT text FROM memory_summaries WHERE tenant = $1 AND user_id = $2",
            tenant, user_id)
        return str(value) if value is not None else None

    async def view(self, tenant: str, user_id: str) -> MemoryView:
        """What a keeper works from: the user's facts, least recently updated first (the order
        it forgets them in past its limit), their summary and the version these are of, read
        in one snapshot (a version read apart from its memory could pass for a later one)."""
        async with self._pool.acquire() as conn, conn.transaction(
                isolation="repeatable_read", readonly=True):
            version = await _version(conn, tenant, user_id)
            rows = await conn.fetch(
                "SELECT key, text, updated_at FROM memory_facts WHERE tenant = $1"
                " AND user_id = $2 ORDER BY updated_at, id", tenant, user_id)
            summary = await conn.fetchval(
                "SELECT text FROM memory_summaries WHERE tenant = $1 AND user_id = $2",
                tenant, user_id)
        return MemoryView([Fact(r["key"], r["text"], r["updated_at"]) for r in rows], summary,
                          version)

    async def version(self, tenant: str, user_id: str) -> int:
        """The version of the user's memory (migration 0023): set anew by every change of
        their facts or summary and never given twice, 0 while they have none. One row by its
        key: a keeper asks it before each exchange and reads the memory only when it moved."""
        async with self._pool.acquire() as conn:
            return await _version(conn, tenant, user_id)

    async def defer(self, rows: Sequence[dict[str, Any]]) -> None:
        """Keep exchanges for the memory model (a session without the database had them)."""
        await backlog.store_deferred(self._pool, [_storable_row(row) for row in rows])

    async def claim_deferred(self, tenant: str, user_id: str, session_id: str,
                             ) -> list[backlog.Deferred]:
        return await backlog.claim(self._pool, tenant, user_id, session_id)

    async def deferred_waiting(self, tenant: str, user_id: str) -> int:
        return await backlog.waiting(self._pool, tenant, user_id)

    async def apply(self, rows: Sequence[dict[str, Any]]) -> Versions:
        """Write memory changes in the order they were made, in one transaction. Rows are
        `{"op": "fact"|"forget"|"summary", "tenant", "user_id", "session_id", ...}`: a fact
        (`key`, `text`) stored under its key; forget drops a key; a summary (`text`); and what
        became of a deferred exchange the keeper analysed (`backlog.OPS`, with its `id`). Their
        texts are stored as Postgres can (`_storable_row`), whoever wrote them.

        A keeper's row says what its view held (`seen`: the key's text, or the summary its
        fold was shown), and another session of the user may have written since. So a fact
        replaces only what was seen under its key, else goes beside it (`fact_place`); a forget
        drops only what was seen (the user's words were checked against that text); a summary
        replaces the parts it was folded from (`merged_summary`). A row without `seen` (the
        user's own `remember` and `forget`, or one kept on disk before rows had it) replaces or
        drops what is stored. One transaction at a time writes a user's memory (an advisory
        lock), so what a row is merged with stays so until it is written.

        A row can be written twice (a batch retried after its commit's answer was lost, a
        spill file imported again), and a later row of its session may have moved on from it
        meanwhile: merged again by content, it would come back beside that row. So a keeper's
        row carries a key made with it (`ROW_KEY`), recorded in the transaction that applies
        it (`_first_writes`), and a row whose key is recorded already changes nothing. A row
        without one (the user's own `remember` and `forget`, which leave what they say however
        often applied, or a keeper's kept on disk before rows had keys) is merged by what it
        holds, as before. Past `MAX_FACTS` facts (two sessions each adding to a full view),
        the least recently updated go.

        Returns the version of each user's memory the batch found and left (`Versions`): a
        keeper whose view was of the first knows its rows were all that changed it."""
        rows = [_storable_row(row) for row in rows]
        fact_rows = [r for r in rows if r["op"] == "fact"]
        vectors = dict(zip(map(id, fact_rows),
                           await embed_or_none(self.embedder, [r["text"] for r in fact_rows]),
                           strict=True))
        users = sorted({(r["tenant"], r["user_id"]) for r in rows if r["op"] in _MEMORY_OPS})
        # each user's facts as this batch leaves them, read once (under the lock) by the first
        # keeper fact that is placed among them, then kept current by the batch's own writes
        stored: dict[tuple[str, str], dict[str, str]] = {}
        async with self._pool.acquire() as conn, conn.transaction():
            versions: dict[tuple[str, str], int] = {}
            for tenant, user_id in users:  # in one order: two batches cannot deadlock
                await lock_memory(conn, tenant, user_id)
                versions[tenant, user_id] = await _version(conn, tenant, user_id)
            first = await self._first_writes(conn, rows)
            for row in rows:
                if row["op"] in _MEMORY_OPS and ROW_KEY in row:
                    if row[ROW_KEY] not in first:
                        continue
                    first.remove(row[ROW_KEY])  # the same row twice in one batch: once
                if row["op"] == "fact":
                    await self._store_fact(conn, row, vectors[id(row)], stored)
                elif row["op"] == "forget":
                    await conn.execute(
                        "DELETE FROM memory_facts WHERE tenant = $1 AND user_id = $2 AND key = $3"
                        " AND ($4::text IS NULL OR text = $4)",
                        row["tenant"], row["user_id"], row["key"], row.get("seen"))
                    known = stored.get((row["tenant"], row["user_id"]))
                    if known is not None and row.get("seen") in (None, known.get(row["key"])):
                        known.pop(row["key"], None)
                elif row["op"] == "summary":
                    await self._store_summary(conn, row)
                elif row["op"] in backlog.OPS:
                    await backlog.apply_op(conn, row)
                else:
                    raise ValueError(f"unknown memory operation {row['op']!r}")
            for tenant, user_id in sorted({(r["tenant"], r["user_id"]) for r in fact_rows}):
                await conn.execute(
                    "DELETE FROM memory_facts WHERE id IN (SELECT id FROM memory_facts"
                    " WHERE tenant = $1 AND user_id = $2 ORDER BY updated_at DESC, id DESC"
                    " OFFSET $3)", tenant, user_id, MAX_FACTS)
            return {who: (before, await _version(conn, *who)) for who, before in versions.items()}

    @staticmethod
    async def _first_writes(conn: asyncpg.Connection, rows: Sequence[dict[str, Any]],
                            ) -> set[str]:
        """The `ROW_KEY`s of the memory rows among `rows` that were never applied, recorded
        as applied now (migration 0022; undone with `conn`'s transaction if it fails)."""
        keyed = [r for r in rows if r["op"] in _MEMORY_OPS and ROW_KEY in r]
        if not keyed:
            return set()
        first = {str(key) for key in await conn.fetchval(
            "WITH added AS (INSERT INTO memory_rows_applied (tenant, user_id, row_key)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[])"
            " ON CONFLICT DO NOTHING RETURNING row_key)"
            " SELECT coalesce(array_agg(row_key), '{}') FROM added",
            [r["tenant"] for r in keyed], [r["user_id"] for r in keyed],
            [r[ROW_KEY] for r in keyed])}
        for tenant, user_id in sorted({(r["tenant"], r["user_id"]) for r in keyed}):
            await conn.execute(
                "DELETE FROM memory_rows_applied WHERE tenant = $1 AND user_id = $2 AND row_key"
                " IN (SELECT row_key FROM memory_rows_applied WHERE tenant = $1 AND user_id = $2"
                " ORDER BY applied_at DESC OFFSET $3)", tenant, user_id, KEPT_ROW_KEYS)
        return first

    async def _store_fact(self, conn: asyncpg.Connection, row: dict[str, Any],
                          vector: str | None, stored: dict[tuple[str, str], dict[str, str]],
                          ) -> None:
        """A fact row, under its key or where `fact_place` puts a keeper's among the user's
        `stored` facts (`apply`'s, read once a batch)."""
        who, key = (row["tenant"], row["user_id"]), row["key"]
        if "seen" in row:
            if who not in stored:
                stored[who] = {r["key"]: r["text"] for r in await conn.fetch(
                    "SELECT key, text FROM memory_facts WHERE tenant = $1 AND user_id = $2",
                    *who)}
            placed = fact_place(key, row["text"], row["seen"], stored[who])
            if placed is None:
                return
            key = placed
        await conn.execute(
            "INSERT INTO memory_facts (tenant, user_id, key, text, embed_model, embedding,"
            " session_id) VALUES ($1, $2, $3, $4, $5, $6::vector, $7)"
            " ON CONFLICT (tenant, user_id, key) DO UPDATE SET text = excluded.text,"
            " embed_model = excluded.embed_model, embedding = excluded.embedding,"
            " session_id = excluded.session_id, updated_at = now()",
            *who, key, row["text"], self.embedder.name if vector else None, vector,
            row.get("session_id"))
        if who in stored:
            stored[who][key] = row["text"]

    @staticmethod
    async def _store_summary(conn: asyncpg.Connection, row: dict[str, Any]) -> None:
        """A summary row, merged with what is stored when it is a keeper's (`apply`)."""
        who = (row["tenant"], row["user_id"])
        text = row["text"]
        if "seen" in row:
            text = merged_summary(await conn.fetchval(
                "SELECT text FROM memory_summaries WHERE tenant = $1 AND user_id = $2", *who),
                row["seen"], text)
            if text is None:
                return
        await conn.execute(
            "INSERT INTO memory_summaries (tenant, user_id, text, session_id)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, user_id) DO UPDATE SET"
            " text = excluded.text, session_id = excluded.session_id, updated_at = now()",
            *who, text, row.get("session_id"))
