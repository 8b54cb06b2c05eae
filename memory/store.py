"""Queries on sessions, the conversation log and cost events. Every read names its tenant."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from .db import storable
from .forget import change_records
from .gaps import forget_sessions
from .spill_files import ROW_KEY
from .user_memory import lock_memory


@dataclass(frozen=True)
class StoredMessage:
    id: int
    role: str
    content: str
    created_at: datetime
    row_key: str | None  # `ROW_KEY`: for a message its client named, the same in each session


class Store:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def start_session(
        self,
        session_id: str,
        *,
        tenant: str,
        user_id: str | None,
        room: str | None,
        source: str,
        provider: str,
        model: str,
        started_at: float | None = None,
        agent: str | None = None,
    ) -> None:
        """The session's row; `started_at` (epoch seconds) for one that ran without the
        database and is imported afterwards, else now; `agent`: the agent participant that
        serves a live session (its LiveKit identity)."""
        await self._pool.execute(
            "INSERT INTO sessions (id, tenant, user_id, room, source, provider, model,"
            " started_at, agent) VALUES ($1, $2, $3, $4, $5, $6, $7,"
            " coalesce(to_timestamp($8), now()), $9) ON CONFLICT (id) DO NOTHING",
            session_id, tenant, user_id, room, source, provider, model, started_at, agent,
        )

    async def end_session(self, session_id: str, total_cost_usd: float, summary: dict) -> None:
        await self._pool.execute(
            "UPDATE sessions SET ended_at = now(), total_cost_usd = $2, summary = $3::jsonb"
            " WHERE id = $1",
            session_id, total_cost_usd, json.dumps(summary),
        )

    async def close_session(self, session_id: str, total_cost_usd: float, summary: dict,
                            ended_at: float | None = None) -> bool:
        """End a session that is still open (one whose process died without ending it, or
        whose summary reached only its cost log); False when it has ended meanwhile, so a
        session's own summary is never overwritten. `ended_at`: epoch seconds, else now."""
        closed = await self._pool.fetchval(
            "UPDATE sessions SET ended_at = coalesce(to_timestamp($4), now()),"
            " total_cost_usd = $2, summary = $3::jsonb"
            " WHERE id = $1 AND ended_at IS NULL RETURNING id",
            session_id, total_cost_usd, json.dumps(summary), ended_at,
        )
        return closed is not None

    async def mark_escalated(self, session_id: str, reason: str) -> bool:
        """Mark the session as handed off to a human; False when it already was (the first
        reason is kept)."""
        marked = await self._pool.fetchval(
            "UPDATE sessions SET escalated_at = now(), escalation_reason = $2"
            " WHERE id = $1 AND escalated_at IS NULL RETURNING id", session_id, reason)
        return marked is not None

    async def mark_user_left(self, session_id: str, left_at: float) -> None:
        """When the session's user left its room, the session ending with it (epoch seconds, by
        the session's clock; migration 0027)."""
        await self._pool.execute(
            "UPDATE sessions SET user_left_at = to_timestamp($2) WHERE id = $1",
            session_id, left_at)

    async def session_events(self, session_id: str) -> list[dict[str, Any]]:
        """A session's cost events in order, as its JSONL lines hold them (numbers as floats,
        `ts` in seconds), for recomputing its summary when the JSONL file is not at hand."""
        rows = await self._pool.fetch(
            "SELECT * FROM cost_events WHERE session_id = $1 ORDER BY seq", session_id)
        return [
            {**{k: (float(v) if isinstance(v, Decimal) else v) for k, v in dict(r).items()
                if k != "id"},
             "ts": r["ts"].timestamp(), "detail": json.loads(r["detail"])}
            for r in rows
        ]

    async def add_messages(
        self, session_id: str, tenant: str, rows: Sequence[dict],
        embed_model: str | None = None, vectors: Sequence[str | None] | None = None,
    ) -> None:
        """Append turns (dicts with user_id, role, content) in order, each with its vector
        (pgvector text, or None) from `embed_model` for recall. A turn with a `ROW_KEY` the
        table holds already is skipped: it is a retry, or a spill file's row imported again
        (spill_files.py); one without (written at once, never spilled) is always stored."""
        vectors = list(vectors or [None] * len(rows))
        if len(vectors) != len(rows):
            raise ValueError("one vector (or None) per message")
        # one statement, rows in the order given (ids ascend with it): the BM25 statistics'
        # triggers run per statement, not per message (and count only the rows inserted)
        await self._pool.execute(
            "INSERT INTO messages (session_id, tenant, user_id, role, content, embed_model,"
            " embedding, row_key) SELECT $1, $2, u, r, c,"
            " CASE WHEN v IS NULL THEN NULL ELSE $3 END, v::vector, k::uuid"
            " FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[])"
            " WITH ORDINALITY AS n (u, r, c, v, k, i) ORDER BY i"
            " ON CONFLICT (row_key) DO NOTHING",
            session_id, tenant, embed_model, [r["user_id"] for r in rows],
            [r["role"] for r in rows], [storable(r["content"]) for r in rows], vectors,
            [r.get(ROW_KEY) for r in rows],
        )

    async def session_tenant(self, session_id: str) -> str | None:
        return await self._pool.fetchval("SELECT tenant FROM sessions WHERE id = $1", session_id)

    async def recent_messages(self, tenant: str, user_id: str, limit: int) -> list[StoredMessage]:
        """The user's last `limit` messages in this tenant, oldest first."""
        rows = await self._pool.fetch(
            "SELECT id, role, content, created_at, row_key::text FROM messages"
            " WHERE tenant = $1 AND user_id = $2 ORDER BY id DESC LIMIT $3",
            tenant, user_id, limit,
        )
        return [StoredMessage(r["id"], r["role"], r["content"], r["created_at"], r["row_key"])
                for r in reversed(rows)]

    async def next_message_id(self) -> int:
        """An id above every stored message: what `recall` may look below when no earlier
        message is in the conversation already."""
        return int(await self._pool.fetchval("SELECT coalesce(max(id), 0) + 1 FROM messages"))

    async def count_messages(self, tenant: str, user_id: str) -> int:
        return int(await self._pool.fetchval(
            "SELECT count(*) FROM messages WHERE tenant = $1 AND user_id = $2", tenant, user_id))

    async def user_sessions(self, tenant: str, user_id: str) -> list[str]:
        """The ids of the user's sessions in this tenant."""
        rows = await self._pool.fetch(
            "SELECT id FROM sessions WHERE tenant = $1 AND user_id = $2", tenant, user_id)
        return [r["id"] for r in rows]

    async def count_screen_events(self, tenant: str, user_id: str) -> int:
        return int(await self._pool.fetchval(
            "SELECT count(*) FROM screen_events WHERE tenant = $1 AND user_id = $2",
            tenant, user_id))

    async def forget_user(self, tenant: str, user_id: str) -> dict[str, int]:
        """Delete everything remembered about one user of one tenant (a privacy request):
        messages, facts, summary, exchanges waiting for the memory model, what their
        screens showed and their questions in knowledge gaps. Their sessions keep their cost
        records, without the user id and without what the records quoted of them
        (memory/forget.py)."""
        counts = {}
        async with self._pool.acquire() as conn, conn.transaction():
            await lock_memory(conn, tenant, user_id)  # a live session's write: before or after
            sessions = [r["id"] for r in await conn.fetch(
                "SELECT id FROM sessions WHERE tenant = $1 AND user_id = $2", tenant, user_id)]
            counts["events_forgotten"] = await change_records(conn, sessions)
            counts["gap_questions"] = await forget_sessions(conn, tenant, sessions)
            for name, statement in (
                ("messages", "DELETE FROM messages WHERE tenant = $1 AND user_id = $2"),
                ("screen_events",
                 "DELETE FROM screen_events WHERE tenant = $1 AND user_id = $2"),
                ("facts", "DELETE FROM memory_facts WHERE tenant = $1 AND user_id = $2"),
                ("summaries", "DELETE FROM memory_summaries WHERE tenant = $1 AND user_id = $2"),
                ("deferred_exchanges",
                 "DELETE FROM memory_backlog WHERE tenant = $1 AND user_id = $2"),
                # an open session stays linked: the next request finds it once it has ended
                ("sessions_unlinked",
                 "UPDATE sessions SET user_id = NULL WHERE tenant = $1 AND user_id = $2"
                 " AND ended_at IS NOT NULL"),
            ):
                counts[name] = int(await conn.fetchval(
                    f"WITH done AS ({statement} RETURNING 1) SELECT count(*) FROM done",
                    tenant, user_id))
            # the keys of the keeper rows applied (migration 0022): they name the user, and
            # what they kept from being applied twice is gone
            await conn.execute(
                "DELETE FROM memory_rows_applied WHERE tenant = $1 AND user_id = $2",
                tenant, user_id)
        return counts

    async def add_cost_events(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert ledger rows; idempotent on (session_id, seq) so a retried batch never doubles."""
        await self._pool.executemany(
            "INSERT INTO cost_events (session_id, tenant, seq, ts, kind, provider, model,"
            " input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, images,"
            " image_tokens, image_tokens_full_resolution, image_cost_usd,"
            " latency_ms, cost_usd, detail)"
            " VALUES ($1, $2, $3, to_timestamp($4), $5, $6, $7, $8, $9, $10, $11, $12, $13,"
            " $14, $15, $16, $17, $18::jsonb) ON CONFLICT (session_id, seq) DO NOTHING",
            [
                (
                    r["session_id"], r["tenant"], r["seq"], r["ts"], r["kind"], r.get("provider"),
                    r.get("model"), r.get("input_tokens", 0), r.get("cached_input_tokens", 0),
                    r.get("cache_write_tokens", 0), r.get("output_tokens", 0), r.get("images", 0),
                    r.get("image_tokens", 0), r.get("image_tokens_full_resolution", 0),
                    r.get("image_cost_usd"),
                    r.get("latency_ms"), r.get("cost_usd"), json.dumps(r.get("detail", {})),
                )
                for r in rows
            ],
        )

    async def add_command_events(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert a command's ledger rows (no session); idempotent on their run and seq
        (migration 0020), so the file they came from may be written again."""
        await self._pool.executemany(
            "INSERT INTO cost_events (session_id, tenant, seq, ts, kind, provider, model,"
            " input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, latency_ms,"
            " cost_usd, detail) VALUES (NULL, $1, $2, to_timestamp($3), $4, $5, $6, $7, $8,"
            " $9, $10, $11, $12, $13::jsonb)"
            " ON CONFLICT ((detail->>'run'), seq) WHERE session_id IS NULL DO NOTHING",
            [(r["tenant"], r["seq"], r["ts"], r["kind"], r.get("provider"), r.get("model"),
              r.get("input_tokens", 0), r.get("cached_input_tokens", 0),
              r.get("cache_write_tokens", 0), r.get("output_tokens", 0), r.get("latency_ms"),
              r.get("cost_usd"), json.dumps(r.get("detail", {}))) for r in rows],
        )

    async def tenant_spent_today(self, tenant: str, but: str | None = None) -> float:
        """The tenant's spend since 00:00 UTC, from every session's cost events and its
        commands' (but session `but`'s): the priced events alone, which the partial index of
        migration 0019 holds (a session's frame events, one a second, cost nothing)."""
        value = await self._pool.fetchval(
            "SELECT coalesce(sum(cost_usd), 0) FROM cost_events WHERE tenant = $1"
            " AND ts >= date_trunc('day', now() AT TIME ZONE 'utc') AT TIME ZONE 'utc'"
            " AND cost_usd <> 0 AND session_id IS DISTINCT FROM $2",
            tenant, but,
        )
        return float(value)

    async def list_sessions(self, limit: int = 50, tenant: str | None = None) -> list[dict]:
        rows = await self._pool.fetch(
            "SELECT s.id, s.tenant, s.user_id, s.source, s.model, s.started_at, s.ended_at,"
            " s.total_cost_usd, s.summary->>'outcome' AS outcome,"
            " (SELECT count(*) FROM cost_events c WHERE c.session_id = s.id"
            "   AND c.kind = 'model_call') AS model_calls,"
            # speech heard and spoken, from the events: open sessions have no summary yet
            " (SELECT coalesce(sum((c.detail->>'audio_s')::float8), 0) FROM cost_events c"
            "   WHERE c.session_id = s.id AND c.kind = 'speech') AS voice_s"
            " FROM sessions s WHERE ($2::text IS NULL OR s.tenant = $2)"
            " ORDER BY s.started_at DESC LIMIT $1",
            limit, tenant,
        )
        return [_session_row(r) for r in rows]

    async def open_sessions(self, room: str | None = None) -> list[dict[str, Any]]:
        """The sessions not ended (of `room`, if given), oldest first: `id`, `tenant` and
        `source`, what closing one needs (`session_record.close_abandoned`)."""
        rows = await self._pool.fetch(
            "SELECT id, tenant, source FROM sessions WHERE ended_at IS NULL"
            " AND ($1::text IS NULL OR room = $1) ORDER BY started_at", room)
        return [dict(r) for r in rows]

    async def get_session(self, session_id: str) -> dict | None:
        row = await self._pool.fetchrow(
            "SELECT s.*, (SELECT count(*) FROM cost_events c WHERE c.session_id = s.id"
            " AND c.kind = 'model_call') AS model_calls FROM sessions s WHERE s.id = $1",
            session_id,
        )
        if row is None:
            return None
        session = _session_row(row)
        session["summary"] = json.loads(row["summary"]) if row["summary"] else None
        session["outcome"] = (session["summary"] or {}).get("outcome")
        session["escalated_at"] = (row["escalated_at"].isoformat()
                                   if row["escalated_at"] else None)  # handed to a person
        session["escalation_reason"] = row["escalation_reason"]
        events = await self._pool.fetch(
            "SELECT seq, ts, kind, provider, model, input_tokens, cached_input_tokens,"
            " cache_write_tokens, output_tokens, images, latency_ms, cost_usd, detail"
            " FROM cost_events WHERE session_id = $1 ORDER BY seq",
            session_id,
        )
        session["events"] = [
            {
                **{k: v for k, v in dict(e).items() if k not in ("detail", "ts", "cost_usd")},
                "ts": e["ts"].isoformat(),
                "cost_usd": float(e["cost_usd"]) if e["cost_usd"] is not None else None,
                "detail": json.loads(e["detail"]),
            }
            for e in events
        ]
        return session


def _session_row(r: asyncpg.Record) -> dict:
    return {
        "id": r["id"],
        "tenant": r["tenant"],
        "user": r["user_id"],
        "source": r["source"],
        "model": r["model"],
        "started_at": r["started_at"].isoformat(),
        "ended_at": r["ended_at"].isoformat() if r["ended_at"] else None,
        "total_cost_usd": float(r["total_cost_usd"]) if r["total_cost_usd"] is not None else None,
        "model_calls": r["model_calls"],
        "outcome": r.get("outcome"),  # how it ended (None: still open, or ended before outcomes)
        **({"voice_s": round(r["voice_s"], 3)} if "voice_s" in r else {}),
    }
