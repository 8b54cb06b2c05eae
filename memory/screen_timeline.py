"""The screen timeline in Postgres: what appeared on each user's screen, when, searchable.

Each row is one read of a kept frame that found new text (see vision/screen_text.py): the
session, tenant and user, the screen time and wall time, the content type, why the frame was
kept, the region read, the lines that appeared, and whether they hold an error. Rows arrive from
the session's `BackgroundWriter` (`write`: embedded on the way in, by the session's embedder),
so an outage spills them to disk like messages. `recall` finds a user's screen events that match
a question across sessions, fused like earlier messages; `session_events` and `search` serve
`sightline screen timeline|search`. Every query names its tenant.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg

from . import bm25
from .db import storable
from .embeddings import Embedder
from .knowledge import Hit, QueryVector, fuse, resolved, vector_literal
from .spill_files import ROW_KEY
from .user_memory import embed_or_none

CANDIDATES = 20
EVENTS_PER_TURN = 3
ERRORS_PER_TURN = 2  # the latest errors, when the question asks about one
_ASKS_ABOUT_ERRORS = re.compile(
    r"\b(errors?|exceptions?|tracebacks?|fail\w*|crash\w*|broke\w*|warnings?|bugs?)\b", re.I)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[._:/\\=()\[\]{}<>\"'`,;|-]+")


def search_words(text: str) -> str:
    """Screen text as words for keyword search: what programs print joins words with dots,
    colons and case (`json.decoder.JSONDecodeError`), which full-text search would keep as one
    token; the words are added beside the text (`json decoder JSON Decode Error`)."""
    split = _CAMEL.sub(" ", _SEPARATORS.sub(" ", text))
    return f"{text}\n{split}"


@dataclass(frozen=True)
class ScreenEvent:
    id: int
    session_id: str
    t: float
    at: datetime
    content_type: str
    reason: str
    region: tuple[int, int, int, int]
    text: str
    is_error: bool
    user_id: str | None = None
    score: float = 0.0
    matched_words: bool = False  # shares a word with the query it was found for

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "session_id": self.session_id, "user": self.user_id,
                "t": self.t, "at": self.at.isoformat(), "content_type": self.content_type,
                "reason": self.reason, "region": list(self.region), "text": self.text,
                "is_error": self.is_error, **({"score": self.score} if self.score else {})}


_COLUMNS = "id, session_id, user_id, t, at, content_type, reason, region, text, is_error"


def _event(row: asyncpg.Record, score: float = 0.0) -> ScreenEvent:
    return ScreenEvent(row["id"], row["session_id"], row["t"], row["at"], row["content_type"],
                       row["reason"], tuple(row["region"]), row["text"], row["is_error"],
                       row["user_id"], score)


class ScreenTimeline:
    def __init__(self, pool: asyncpg.Pool, embedder: Embedder) -> None:
        self._pool = pool
        self.embedder = embedder

    async def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert screen events in order, each embedded (a failed embedding stores the row
        without a vector: keyword search still finds it). Rows: `session_id, tenant, user_id,
        t, at (epoch s), content_type, reason, region, lines, is_error`, and the `ROW_KEY`
        their writer or spill file gave them: one the table holds already is skipped (a
        retry, or a spill file imported again; spill_files.py)."""
        texts = [storable("\n".join(r["lines"])) for r in rows]
        words = [search_words(text) for text in texts]
        vectors = await embed_or_none(self.embedder, words)
        await self._pool.executemany(
            "INSERT INTO screen_events (session_id, tenant, user_id, t, at, content_type,"
            " reason, region, text, words, is_error, embed_model, embedding, row_key)"
            " VALUES ($1, $2, $3, $4, to_timestamp($5), $6, $7, $8, $9, $10, $11, $12,"
            " $13::vector, $14::uuid) ON CONFLICT (row_key) DO NOTHING",
            [(r["session_id"], r["tenant"], r["user_id"], r["t"], r["at"], r["content_type"],
              r["reason"], list(r["region"]), text, split, r["is_error"],
              self.embedder.name if vector else None, vector, r.get(ROW_KEY))
             for r, text, split, vector in zip(rows, texts, words, vectors, strict=True)],
        )

    async def has_any(self, tenant: str, user_id: str) -> bool:
        return bool(await self._pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM screen_events WHERE tenant = $1 AND user_id = $2)",
            tenant, user_id))

    @staticmethod
    async def _keyword_rows(
        conn: asyncpg.Connection, tenant: str, user_id: str | None, query: str, limit: int,
    ) -> list[asyncpg.Record]:
        """The events ranked by BM25, with statistics per tenant and user (migration 0013),
        summed over the tenant's users when the search is not for one user. The query is
        split into words as the events' text is (`search_words`)."""
        scope = "tenant = $1 AND ($2::text IS NULL OR user_id = $2)"
        columns = ", ".join(f"e.{column}" for column in _COLUMNS.split(", "))
        return await conn.fetch(
            f"SELECT {columns}, s.score FROM (SELECT id, score FROM"
            f" {bm25.scores('screen_bm25', scope, '$4')} s"
            " ORDER BY score DESC, id DESC LIMIT $3) s JOIN screen_events e ON e.id = s.id"
            " ORDER BY s.score DESC, s.id DESC",
            tenant, user_id, limit, search_words(query))

    async def _ranked(
        self, tenant: str, user_id: str | None, query: str, vector: QueryVector, limit: int,
        *, errors: int = 0,
    ) -> tuple[list[ScreenEvent], list[ScreenEvent]]:
        """Vector and keyword candidates of the tenant (one user's, or all users'), fused by
        reciprocal rank, `keyword_rank` set on events that share a word with the query; and
        the user's latest `errors` errors, newest first. The keyword side and the errors are
        read first, while the query's vector (if being embedded) is computed, on the one
        connection: a turn's recall waits for no second one."""
        dim, model = int(self.embedder.dim), self.embedder.name
        async with self._pool.acquire() as conn:
            keyword_rows = await self._keyword_rows(conn, tenant, user_id, query, limit)
            error_rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM screen_events WHERE tenant = $1 AND user_id = $2"
                f" AND is_error ORDER BY at DESC, t DESC LIMIT $3", tenant, user_id,
                errors) if errors else []
            found = await resolved(vector)
            vector_rows = [] if found is None else await conn.fetch(
                f"SELECT {_COLUMNS}, 1 - (embedding::vector({dim}) <=> $3::vector({dim}))"
                f" AS score FROM screen_events WHERE tenant = $1 AND ($2::text IS NULL OR"
                f" user_id = $2) AND embed_model = $4"
                f" ORDER BY embedding::vector({dim}) <=> $3::vector({dim}) LIMIT $5",
                tenant, user_id, vector_literal(found), model, limit)
        rows = {r["id"]: r for r in [*vector_rows, *keyword_rows]}
        keyword_ids = {r["id"] for r in keyword_rows}

        def hits(found: list[asyncpg.Record]) -> list[Hit]:
            return [Hit(r["id"], r["text"], "screen", float(r["score"])) for r in found]
        return ([replace(_event(rows[h.id], round(h.score, 6)), matched_words=h.id in keyword_ids)
                 for h in fuse(self.embedder.fusion, hits(vector_rows), hits(keyword_rows))],
                [_event(r) for r in error_rows])

    async def recall(
        self, tenant: str, user_id: str, question: str, vector: QueryVector,
        k: int = EVENTS_PER_TURN,
    ) -> list[ScreenEvent]:
        """The user's screen events (any session) that share a word with the question and
        rank best on meaning and words fused (a nearest vector alone is not evidence, and costs
        prompt tokens), and, when the question asks about an error, the latest errors first;
        oldest first."""
        question = bm25.searchable(question)
        ranked, errors = await self._ranked(
            tenant, user_id, question, vector, CANDIDATES,
            errors=ERRORS_PER_TURN if _ASKS_ABOUT_ERRORS.search(question) else 0)
        best = [event for event in ranked if event.matched_words]
        if errors:
            best = errors + [e for e in best if e.id not in {x.id for x in errors}]
        return sorted(best[:k], key=lambda e: (e.at, e.t))

    async def session_events(self, tenant: str | None, session_id: str) -> list[ScreenEvent]:
        """One session's timeline, in screen time (`tenant` None: whichever it belongs to)."""
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM screen_events WHERE session_id = $1"
            f" AND ($2::text IS NULL OR tenant = $2) ORDER BY t, id", session_id, tenant)
        return [_event(r) for r in rows]

    async def search(
        self, tenant: str, query: str, *, user_id: str | None = None, k: int = 10,
    ) -> list[ScreenEvent]:
        """The tenant's screen events (one user's, or all users') matching `query`, best
        first."""
        query = bm25.searchable(query)
        vector = await self.embedder.embed_query(query)
        ranked, _ = await self._ranked(tenant, user_id, query, vector, max(k, CANDIDATES))
        return ranked[:k]


def event_row(
    *, session_id: str, tenant: str, user_id: str, t: float, wall_time: float,
    content_type: str, reason: str, region: Sequence[int], lines: list[str], is_error: bool,
) -> dict[str, Any]:
    """The row `write` takes (and a spill file keeps): plain JSON-able data."""
    return {"session_id": session_id, "tenant": tenant, "user_id": user_id, "t": round(t, 3),
            "at": wall_time, "content_type": content_type, "reason": reason,
            "region": list(region), "lines": lines, "is_error": is_error}
