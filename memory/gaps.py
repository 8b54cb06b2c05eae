"""The `knowledge_gaps` table and the questions that feed it. Every query names its tenant.

A failed question is a user turn (`quality_turns`) that ended unanswered, was handed to a person
(the handoff tool's `handoff` event), was a retry (the user rephrased, or said the answer did not
help), was answered with a stated confidence under the bar, or needed the top tier; its text is
the session's user message of the same ordinal (one user message per user turn, as the
conversation log stores them), so a user whose messages were forgotten leaves no question text
behind for a later refresh, and `forget_sessions` takes their questions out of the gaps found
before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import numpy as np

from .knowledge import vector_literal

_FAILED = """
WITH asked AS (
    SELECT session_id, content,
           row_number() OVER (PARTITION BY session_id ORDER BY id) AS n,
           lag(content) OVER (PARTITION BY session_id ORDER BY id) AS previous
    FROM messages WHERE tenant = $1 AND role = 'user'
)
SELECT t.session_id, t.turn_no, t.ts, t.retry, t.said_unhelpful, t.failed, t.confidence,
       t.answered_tier, t.top_tier, t.handed_off, a.content, a.previous
FROM quality_turns t JOIN asked a ON a.session_id = t.session_id AND a.n = t.turn_no
WHERE t.tenant = $1 AND t.ts >= $2 AND t.ts < $3
  AND (t.failed OR t.retry OR t.handed_off OR t.confidence < $4
       OR (t.answered_tier = t.top_tier AND t.answered_tier > 0))
ORDER BY t.ts
"""


@dataclass(frozen=True)
class FailedQuestion:
    text: str
    session_id: str
    turn_no: int
    at: datetime
    severity: float  # 0..1: how badly the knowledge base failed it
    why: tuple[str, ...]
    follows: str | None = None  # a retry's earlier question, which it rephrases or answers

    @property
    def meaning(self) -> str:
        """What to embed: a retry ("that didn't help, the button is greyed out") means little
        without the question it follows."""
        return f"{self.follows}\n{self.text}" if self.follows else self.text

    def as_record(self) -> dict[str, Any]:
        return {"text": self.text, "session_id": self.session_id, "turn_no": self.turn_no,
                "at": self.at.isoformat(), "severity": round(self.severity, 3),
                "why": list(self.why), **({"follows": self.follows} if self.follows else {})}


def _severity(row: asyncpg.Record, bar: float) -> tuple[float, tuple[str, ...]]:
    """Unanswered or handed to a person 1.0; said unhelpful 0.9; rephrased 0.7; low
    confidence 1 - confidence; needed the top tier 0.5: the worst that applies."""
    found: list[tuple[float, str]] = []
    if row["failed"]:
        found.append((1.0, "unanswered"))
    if row["handed_off"]:
        found.append((1.0, "handed_off"))
    if row["said_unhelpful"]:
        found.append((0.9, "said_unhelpful"))
    elif row["retry"]:
        found.append((0.7, "rephrased"))
    if row["confidence"] is not None and row["confidence"] < bar:
        found.append((1.0 - row["confidence"], "low_confidence"))
    if row["answered_tier"] is not None and row["answered_tier"] == row["top_tier"] \
            and row["answered_tier"] > 0:
        found.append((0.5, "top_tier"))
    return max(s for s, _ in found), tuple(w for _, w in found)


async def failed_questions(
    pool: asyncpg.Pool, tenant: str, since: datetime, until: datetime, confidence_bar: float,
) -> list[FailedQuestion]:
    rows = await pool.fetch(_FAILED, tenant, since, until, confidence_bar)
    questions = []
    for r in rows:
        severity, why = _severity(r, confidence_bar)
        questions.append(FailedQuestion(r["content"], r["session_id"], r["turn_no"], r["ts"],
                                        severity, why, r["previous"] if r["retry"] else None))
    return questions


async def gaps(
    pool: asyncpg.Pool, tenant: str, status: str | None = None,
) -> list[dict[str, Any]]:
    """The tenant's gaps, best score first (`status`: only those)."""
    rows = await pool.fetch(
        "SELECT id, status, canonical_question, outline, questions, frequency, severity, score,"
        " embed_model, embedding::text AS embedding, resolved_by, resolved_score, first_seen,"
        " last_seen, created_at, updated_at FROM knowledge_gaps"
        " WHERE tenant = $1 AND ($2::text IS NULL OR status = $2)"
        " ORDER BY score DESC, id", tenant, status)
    return [{
        **{k: r[k] for k in ("id", "status", "canonical_question", "frequency", "severity",
                             "score", "embed_model", "resolved_by", "resolved_score")},
        "outline": json.loads(r["outline"]), "questions": json.loads(r["questions"]),
        "embedding": np.array(json.loads(r["embedding"]), dtype=np.float32),
        **{k: r[k].isoformat() for k in ("first_seen", "last_seen", "created_at", "updated_at")},
    } for r in rows]


async def add_gap(
    pool: asyncpg.Pool, tenant: str, *, canonical_question: str, outline: list[str],
    questions: list[FailedQuestion], embed_model: str, centroid: np.ndarray,
) -> int:
    severity = sum(q.severity for q in questions) / len(questions)
    return int(await pool.fetchval(
        "INSERT INTO knowledge_gaps (tenant, canonical_question, outline, questions, frequency,"
        " severity, score, embed_model, embedding, first_seen, last_seen)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::vector, $10, $11) RETURNING id",
        tenant, canonical_question, json.dumps(outline),
        json.dumps([q.as_record() for q in questions]), len(questions), severity,
        len(questions) * severity, embed_model, vector_literal(centroid),
        min(q.at for q in questions), max(q.at for q in questions)))


async def merge_questions(
    pool: asyncpg.Pool, tenant: str, gap: dict[str, Any], questions: list[FailedQuestion],
) -> int:
    """Add the questions a gap does not hold yet (by session and turn); recompute its score.
    A resolved gap asked again after it was resolved opens again. Returns how many were new."""
    held = {(q["session_id"], q["turn_no"]) for q in gap["questions"]}
    new = [q for q in questions if (q.session_id, q.turn_no) not in held]
    if not new:
        return 0
    records = gap["questions"] + [q.as_record() for q in new]
    frequency, severity, score = _scored(records)
    reopen = gap["status"] == "resolved" and max(q.at for q in new).isoformat() > \
        gap["updated_at"]
    await pool.execute(
        "UPDATE knowledge_gaps SET questions = $3, frequency = $4, severity = $5, score = $6,"
        " last_seen = greatest(last_seen, $7), updated_at = now(),"
        " status = CASE WHEN $8 THEN 'open' ELSE status END,"
        " resolved_by = CASE WHEN $8 THEN NULL ELSE resolved_by END"
        " WHERE tenant = $1 AND id = $2",
        tenant, gap["id"], json.dumps(records), frequency, severity, score,
        max(q.at for q in new), reopen)
    return len(new)


def _scored(records: list[dict[str, Any]]) -> tuple[int, float, float]:
    """A gap's frequency, mean severity and score (their product) from its questions."""
    severity = sum(q["severity"] for q in records) / len(records)
    return len(records), severity, len(records) * severity


async def forget_sessions(conn: asyncpg.Connection, tenant: str, session_ids: list[str]) -> int:
    """Take these sessions' questions out of the tenant's gaps, in the caller's transaction (a
    user forgotten: the questions are their words). A gap keeps its other questions, rescored;
    one left with none goes, as its canonical question and outline were written from theirs.
    Returns how many questions were taken out."""
    rows = await conn.fetch(
        "SELECT id, questions FROM knowledge_gaps WHERE tenant = $1 AND EXISTS (SELECT 1 FROM"
        " jsonb_array_elements(questions) q WHERE q->>'session_id' = ANY($2::text[]))"
        " FOR UPDATE", tenant, session_ids)
    forgotten, taken = set(session_ids), 0
    for row in rows:
        records = json.loads(row["questions"])
        kept = [q for q in records if q["session_id"] not in forgotten]
        taken += len(records) - len(kept)
        if not kept:
            await conn.execute("DELETE FROM knowledge_gaps WHERE tenant = $1 AND id = $2",
                               tenant, row["id"])
            continue
        seen = sorted(datetime.fromisoformat(q["at"]) for q in kept)
        await conn.execute(
            "UPDATE knowledge_gaps SET questions = $3, frequency = $4, severity = $5,"
            " score = $6, first_seen = $7, last_seen = $8, updated_at = now()"
            " WHERE tenant = $1 AND id = $2",
            tenant, row["id"], json.dumps(kept), *_scored(kept), seen[0], seen[-1])
    return taken


async def set_status(
    pool: asyncpg.Pool, tenant: str, gap_id: int, status: str,
    resolved_by: str | None = None, resolved_score: float | None = None,
) -> bool:
    done = await pool.fetchval(
        "UPDATE knowledge_gaps SET status = $3, resolved_by = $4, resolved_score = $5,"
        " updated_at = now() WHERE tenant = $1 AND id = $2 RETURNING id",
        tenant, gap_id, status, resolved_by, resolved_score)
    return done is not None


async def best_answer(
    pool: asyncpg.Pool, tenant: str, embed_model: str, dim: int, query: np.ndarray,
    ingested_after: datetime,
) -> tuple[str, float] | None:
    """The document ingested after `ingested_after` whose chunk is nearest the query (cosine
    similarity), with that similarity; None when no such document."""
    row = await pool.fetchrow(
        f"SELECT d.source, 1 - (c.embedding::vector({dim}) <=> $3::vector({dim})) AS score"
        " FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id"
        " WHERE c.tenant = $1 AND c.embed_model = $2 AND d.ingested_at > $4"
        " ORDER BY score DESC LIMIT 1",
        tenant, embed_model, vector_literal(query), ingested_after)
    return (row["source"], float(row["score"])) if row else None
