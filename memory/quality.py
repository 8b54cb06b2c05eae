"""A tenant's quality signals over a window, from the `quality_turns` and `quality_sessions`
views (migration 0009): retry, escalation and failure rates, the answering-tier mix, mean stated
confidence, first-words and end-of-turn latency percentiles, interruptions, session completion
and handoffs to a human; from the `speech_failed` events, the speech requests that failed
(a provider down: the session went on in the chat); and from the `context` events, the questions
answered without their knowledge and memory lookup and what the lookups kept them waiting.
Every query names its tenant."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta
from typing import Any

import asyncpg

PERCENTILES = (0.5, 0.95, 0.99)

# one statement: the window's turns are read once (a CTE referenced twice is materialized)
_TURNS = """
WITH t AS (SELECT * FROM quality_turns_in($1, $2, $3))
SELECT count(*) AS turns,
       count(*) FILTER (WHERE retry) AS retries,
       count(*) FILTER (WHERE said_unhelpful) AS said_unhelpful,
       count(*) FILTER (WHERE escalated) AS escalated,
       count(*) FILTER (WHERE answered_tier IS NOT NULL AND answered_tier = top_tier)
           AS answered_by_top_tier,
       count(*) FILTER (WHERE interrupted) AS interrupted,
       count(*) FILTER (WHERE failed) AS failed,
       count(*) FILTER (WHERE handed_off) AS handed_off,
       avg(confidence) AS mean_confidence,
       count(confidence) AS with_confidence,
       percentile_cont($4::float8[]) WITHIN GROUP (ORDER BY first_token_ms) AS first_token_ms,
       percentile_cont($4::float8[]) WITHIN GROUP (ORDER BY latency_ms) AS latency_ms,
       count(latency_ms) AS timed,
       (SELECT jsonb_object_agg(tier, n)::text FROM (
            SELECT coalesce(answered_tier::text, 'none') AS tier, count(*) AS n FROM t
            GROUP BY 1) tiers) AS answered_by_tier
FROM t
"""

_SESSIONS = """
SELECT completion, count(*) AS n, sum(handoffs) AS handoffs
FROM quality_sessions WHERE tenant = $1 AND started_at >= $2 AND started_at < $3
GROUP BY completion ORDER BY completion
"""


_SPEECH = """
SELECT detail->>'engine' AS engine, count(*) AS failures, count(DISTINCT session_id) AS sessions
FROM cost_events WHERE tenant = $1 AND ts >= $2 AND ts < $3 AND kind = 'speech_failed'
GROUP BY 1 ORDER BY 1
"""

# a question answered without its knowledge, memory and screen lookup (agent/turn_context.py's
# `recall` outcomes), as the session summary counts it and as SQL selects it
LOST_OUTCOMES = ("timeout", "failed")
LOST_LOOKUP = f"detail->>'recall' IN {LOST_OUTCOMES!r}"

# one `context` event per question; a lookup's wait counts when one was made (not `off`)
_LOOKUPS = f"""
SELECT count(*) AS questions,
       count(*) FILTER (WHERE {LOST_LOOKUP}) AS lost,
       percentile_cont($4::float8[]) WITHIN GROUP (ORDER BY (detail->>'recall_ms')::float8)
           FILTER (WHERE detail->>'recall' IS DISTINCT FROM 'off') AS wait_ms
FROM cost_events WHERE tenant = $1 AND ts >= $2 AND ts < $3 AND kind = 'context'
"""

# the steps of a series (`$4` seconds each from `$2`) in which anything quality counts
# happened: a turn, a question's lookup, a session started, a failed speech request
_ACTIVE_STEPS = """
SELECT DISTINCT floor(extract(epoch FROM at - $2) / $4::float8)::int AS step FROM (
    SELECT ts AS at FROM cost_events
    WHERE tenant = $1 AND ts >= $2 AND ts < $3 AND kind IN ('turn', 'context', 'speech_failed')
    UNION ALL
    SELECT started_at FROM quality_sessions
    WHERE tenant = $1 AND started_at >= $2 AND started_at < $3
) events
"""


def _by_tier(counts: dict[str, int]) -> dict[str, int]:
    """Tier counts in tier order, `none` (no tier answered) last (JSONB keeps no order)."""
    return {k: counts[k] for k in sorted(counts, key=lambda k: (k == "none", k.zfill(3)))}


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _percentiles(values: list[float | None] | None) -> dict[str, float | None]:
    values = values or [None] * len(PERCENTILES)
    return {f"p{round(p * 100)}": (round(v, 1) if v is not None else None)
            for p, v in zip(PERCENTILES, values, strict=True)}


async def window_quality(
    pool: asyncpg.Pool, tenant: str, since: datetime, until: datetime,
) -> dict[str, Any]:
    """The tenant's quality signals for turns (and sessions started) in [since, until). Rates
    are None when nothing was counted (no turn: no rate, never a reassuring 0%)."""
    async with pool.acquire() as conn:
        turns = await conn.fetchrow(_TURNS, tenant, since, until, list(PERCENTILES))
        sessions = await conn.fetch(_SESSIONS, tenant, since, until)
        speech = await conn.fetch(_SPEECH, tenant, since, until)
        lookups = await conn.fetchrow(_LOOKUPS, tenant, since, until, list(PERCENTILES))
    assert turns is not None and lookups is not None
    n = turns["turns"]
    completion = {r["completion"]: r["n"] for r in sessions}
    ended = sum(v for k, v in completion.items() if k != "open")
    return {
        "tenant": tenant,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "turns": n,
        "retry_rate": _rate(turns["retries"], n),
        "said_unhelpful": turns["said_unhelpful"],
        "escalation_rate": _rate(turns["escalated"], n),
        "top_tier_rate": _rate(turns["answered_by_top_tier"], n),
        "answered_by_tier": _by_tier(json.loads(turns["answered_by_tier"] or "{}")),
        "failed_turns": turns["failed"],
        "handed_off_turns": turns["handed_off"],
        "interruptions": turns["interrupted"],
        "mean_confidence": (round(turns["mean_confidence"], 4)
                            if turns["mean_confidence"] is not None else None),
        "turns_with_confidence": turns["with_confidence"],
        "first_token_ms": _percentiles(turns["first_token_ms"]),
        "turn_latency_ms": _percentiles(turns["latency_ms"]),
        "timed_turns": turns["timed"],
        "sessions": {
            "started": sum(completion.values()),
            "ended": ended,
            "by_completion": completion,
            "completion_rate": _rate(completion.get("completed", 0), ended),
            "handoffs": int(sum(r["handoffs"] for r in sessions)),
        },
        "speech_failures": {r["engine"]: {"failures": r["failures"], "sessions": r["sessions"]}
                            for r in speech},
        "lookups": {
            "questions": lookups["questions"],
            "lost": lookups["lost"],  # timed out or failed: answered without them
            "lost_rate": _rate(lookups["lost"], lookups["questions"]),
            "wait_ms": _percentiles(lookups["wait_ms"]),
        },
    }


async def quality_series(
    pool: asyncpg.Pool, tenant: str, since: datetime, until: datetime, step: timedelta,
) -> list[dict[str, Any]]:
    """The window cut in steps of `step`, each step's signals (the report's chart over time).
    Only the steps in which something happened are queried: every other one has the signals
    of an empty window (a ten-year report of days was ~11,000 statements, 22 s)."""
    windows, start = [], since
    while start < until:
        windows.append((start, min(start + step, until)))
        start = windows[-1][1]
    active = {row["step"] for row in await pool.fetch(
        _ACTIVE_STEPS, tenant, since, until, step.total_seconds())}
    series: list[dict[str, Any]] = []
    empty: dict[str, Any] | None = None
    for index, (start, end) in enumerate(windows):
        if index in active:
            series.append(await window_quality(pool, tenant, start, end))
            continue
        if empty is None:
            empty = await window_quality(pool, tenant, start, end)
        series.append(copy.deepcopy(empty) | {"since": start.isoformat(),
                                               "until": end.isoformat()})
    return series


async def session_quality(
    pool: asyncpg.Pool, tenant: str, since: datetime, until: datetime,
) -> list[dict[str, Any]]:
    """Each session of the tenant started in the window, with how it ended and its counts."""
    rows = await pool.fetch(
        "SELECT session_id, user_id, started_at, completion, outcome, turns, retries,"
        " interruptions, handoffs FROM quality_sessions"
        " WHERE tenant = $1 AND started_at >= $2 AND started_at < $3 ORDER BY started_at",
        tenant, since, until)
    return [{**dict(r), "started_at": r["started_at"].isoformat()} for r in rows]
