"""A tenant's usage over a calendar month: the numbers billing consumes, summed from what sessions
recorded (sessions rows and cost_events), never estimated. Every query names its tenant.

Voice is counted from the `speech` events the speech engines record (agent/metering.py):
`detail.direction` `stt` (audio heard, `detail.audio_s`) or `tts` (`detail.characters` spoken,
`detail.audio_s` of speech made); their dollars are listed under `stt` / `tts` beside the tiers.
Sessions without voice show 0. What commands spent outside any session (`kb ingest` embedding
with Gemini, `gaps refresh` naming gaps) is in the model figures too, and listed by command.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from .quality import LOST_LOOKUP

_SESSIONS = """
SELECT count(*) AS sessions,
       count(*) FILTER (WHERE source = 'live') AS live,
       count(DISTINCT user_id) AS users
FROM sessions WHERE tenant = $1 AND started_at >= $2 AND started_at < $3
"""

# each session's screen share: the span of its sampled frames' screen time (a sample kept when
# a question showed it is decided twice, the second time with `was`: one sample)
_SCREEN = """
SELECT coalesce(sum(span), 0) AS seconds, coalesce(sum(sampled), 0)::bigint AS sampled,
       coalesce(sum(kept), 0)::bigint AS kept
FROM (SELECT max((detail->>'t')::float8) - min((detail->>'t')::float8) AS span,
             count(*) FILTER (WHERE NOT detail ? 'was') AS sampled,
             count(*) FILTER (WHERE (detail->>'kept')::boolean) AS kept
      FROM cost_events WHERE tenant = $1 AND ts >= $2 AND ts < $3 AND kind = 'frame'
        AND detail->>'content_type' IS NOT NULL
      GROUP BY session_id) per_session
"""

_MODELS = """
SELECT coalesce('tier ' || (detail->>'tier'), detail->>'purpose', detail->>'direction', 'other')
           AS used_for,
       model,
       count(*) AS calls,
       count(*) FILTER (WHERE kind = 'model_error') AS errors,
       count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced,
       sum(input_tokens + cached_input_tokens + cache_write_tokens) AS input_tokens,
       sum(output_tokens) AS output_tokens,
       sum(images) AS images, sum(image_tokens) AS image_tokens,
       coalesce(sum(cost_usd), 0) AS cost_usd
FROM cost_events WHERE tenant = $1 AND ts >= $2 AND ts < $3
  AND kind IN ('model_call', 'model_error', 'speech')
GROUP BY 1, 2 ORDER BY 1, 2
"""

_VOICE = """
SELECT coalesce(sum((detail->>'audio_s')::float8)
                    FILTER (WHERE detail->>'direction' = 'stt'), 0) AS stt_seconds,
       coalesce(sum((detail->>'audio_s')::float8)
                    FILTER (WHERE detail->>'direction' = 'tts'), 0) AS tts_seconds,
       coalesce(sum((detail->>'characters')::float8)
                    FILTER (WHERE detail->>'direction' = 'tts'), 0) AS tts_characters
FROM cost_events WHERE tenant = $1 AND ts >= $2 AND ts < $3 AND kind = 'speech'
"""

# what commands spent outside any session (agent/command_ledger.py: `kb ingest`, `gaps
# refresh`…), already in _MODELS' figures; listed by command
_COMMANDS = """
SELECT detail->>'command' AS command, count(*) AS calls, coalesce(sum(cost_usd), 0) AS cost_usd
FROM cost_events WHERE tenant = $1 AND ts >= $2 AND ts < $3 AND session_id IS NULL
  AND kind IN ('model_call', 'model_error')
GROUP BY 1 ORDER BY 1
"""

_TURNS = """
SELECT count(*) AS turns, count(*) FILTER (WHERE answered_tier IS NOT NULL) AS answered
FROM quality_turns_in($1, $2, $3)
"""

# one `context` event per question: knowledge, memory and screen searched once together
_RECALL = f"""
SELECT count(*) AS recalls,
       count(*) FILTER (WHERE {LOST_LOOKUP}) AS recalls_lost,
       coalesce(sum(jsonb_array_length(coalesce(detail->'knowledge', '[]'))), 0) AS knowledge_hits,
       coalesce(sum(jsonb_array_length(coalesce(detail->'memory'->'facts', '[]'))
                    + jsonb_array_length(coalesce(detail->'memory'->'messages', '[]'))), 0)
           AS memory_recalled
FROM cost_events WHERE tenant = $1 AND ts >= $2 AND ts < $3 AND kind = 'context'
"""

_OTHER = """
SELECT (SELECT count(*) FROM kb_documents WHERE tenant = $1 AND ingested_at >= $2
          AND ingested_at < $3) AS documents_ingested,
       (SELECT count(*) FROM kb_documents WHERE tenant = $1) AS documents_stored,
       (SELECT count(*) FROM kb_chunks WHERE tenant = $1) AS chunks_stored,
       (SELECT count(*) FROM memory_facts WHERE tenant = $1 AND updated_at >= $2
          AND updated_at < $3) AS facts_written,
       (SELECT count(*) FROM cost_events WHERE tenant = $1 AND ts >= $2 AND ts < $3
          AND kind = 'handoff') AS handoffs
"""


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """[first instant, first instant of the next month) of `YYYY-MM`, in UTC."""
    year, number = (int(p) for p in month.split("-"))
    start = datetime(year, number, 1, tzinfo=UTC)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
    return start, end


async def month_usage(pool: asyncpg.Pool, tenant: str, month: str) -> dict[str, Any]:
    """What the tenant used in `month` (YYYY-MM, UTC)."""
    start, end = month_bounds(month)
    args = (tenant, start, end)
    async with pool.acquire() as conn:
        sessions = await conn.fetchrow(_SESSIONS, *args)
        screen = await conn.fetchrow(_SCREEN, *args)
        models = await conn.fetch(_MODELS, *args)
        commands = await conn.fetch(_COMMANDS, *args)
        voice = await conn.fetchrow(_VOICE, *args)
        turns = await conn.fetchrow(_TURNS, *args)
        recall = await conn.fetchrow(_RECALL, *args)
        other = await conn.fetchrow(_OTHER, *args)
    assert sessions and screen and voice and turns and recall and other
    by_use: dict[str, dict[str, Any]] = {}
    for r in models:
        use = by_use.setdefault(r["used_for"], {"cost_usd": 0.0, "calls": 0, "models": {}})
        use["cost_usd"] = round(use["cost_usd"] + float(r["cost_usd"]), 8)
        use["calls"] += r["calls"]
        use["models"][r["model"]] = {
            "calls": r["calls"], "errors": r["errors"], "input_tokens": r["input_tokens"],
            "output_tokens": r["output_tokens"], "images": r["images"],
            "image_tokens": r["image_tokens"], "cost_usd": round(float(r["cost_usd"]), 8),
            **({"unpriced_calls": r["unpriced"]} if r["unpriced"] else {}),
        }
    memory_updates = by_use.get("memory", {}).get("calls", 0)
    return {
        "tenant": tenant,
        "month": month,
        "sessions": sessions["sessions"],
        "live_sessions": sessions["live"],
        "users": sessions["users"],
        "screen_share_minutes": round(screen["seconds"] / 60, 2),
        "frames_sampled": screen["sampled"],
        "frames_kept": screen["kept"],
        "voice_minutes": round(voice["stt_seconds"] / 60, 2),
        "spoken_minutes": round(voice["tts_seconds"] / 60, 2),
        "tts_characters": int(voice["tts_characters"]),
        "turns": turns["turns"],
        "turns_answered": turns["answered"],
        "model_cost_usd": round(sum(u["cost_usd"] for u in by_use.values()), 8),
        "cost_by_use": by_use,
        "outside_sessions": {r["command"]: {"calls": r["calls"],
                                            "cost_usd": round(float(r["cost_usd"]), 8)}
                             for r in commands},
        "image_tokens": sum(int(r["image_tokens"]) for r in models),
        "unpriced_models": sorted({r["model"] for r in models if r["unpriced"]}),
        "knowledge": {
            "recalls": recall["recalls"],
            "recalls_lost": recall["recalls_lost"],  # timed out or failed: answered without
            "hits": recall["knowledge_hits"],
            "documents_ingested": other["documents_ingested"],
            "documents_stored": other["documents_stored"],
            "chunks_stored": other["chunks_stored"],
        },
        "memory": {
            "recalled": recall["memory_recalled"],
            "updates": memory_updates,
            "facts_written": other["facts_written"],
        },
        "handoffs": other["handoffs"],
    }


def usage_rows(usage: dict[str, Any]) -> list[tuple[str, str, str, Any]]:
    """The usage as (tenant, month, metric, value) rows, for CSV: nested figures get dotted
    names (`cost_by_use.tier 0.cost_usd`)."""
    rows: list[tuple[str, str, str, Any]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, list):
            rows.append((usage["tenant"], usage["month"], prefix, " ".join(map(str, value))))
        elif isinstance(value, float):  # fixed-point: billing tools misread 8.1e-05
            rows.append((usage["tenant"], usage["month"], prefix,
                         f"{value:.8f}".rstrip("0").rstrip(".")))
        else:
            rows.append((usage["tenant"], usage["month"], prefix, value))

    walk("", {k: v for k, v in usage.items() if k not in ("tenant", "month")})
    return rows
