"""The figures behind `sightline report`, per UTC day of a tenant's window: what each model cost,
what the same answers would have cost on the top tier alone and with no frame de-duplication,
frames kept and dropped by content type, turn latencies, and the quality signals by day. Every
query names its tenant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from .quality import quality_series, window_quality

_COST_BY_DAY_MODEL = """
SELECT date_trunc('day', ts AT TIME ZONE 'utc')::date AS day, model,
       coalesce(sum(cost_usd), 0)::float8 AS cost_usd, count(*) FILTER (WHERE cost_usd IS NULL)
           AS unpriced
FROM cost_events WHERE tenant = $1 AND ts >= $2 AND ts < $3
  AND kind IN ('model_call', 'model_error', 'speech')
GROUP BY 1, 2 ORDER BY 1, 2
"""

# the cascade rounds' cost against the top tier's price for the same tokens (turn events), and
# what the sessions' images saved: screens not sent again because they had not changed, and
# frames sent downscaled (session summaries, by the day the session started)
_SAVINGS_BY_DAY = """
WITH turns AS (
    SELECT date_trunc('day', ts AT TIME ZONE 'utc')::date AS day,
           sum((detail->>'cost_usd')::float8) AS cascade_usd,
           sum((detail->>'top_tier_cost_usd')::float8) AS top_tier_usd
    FROM cost_events WHERE tenant = $1 AND ts >= $2 AND ts < $3 AND kind = 'turn'
      AND detail->>'top_tier_cost_usd' IS NOT NULL
    GROUP BY 1
), images AS (
    SELECT date_trunc('day', started_at AT TIME ZONE 'utc')::date AS day,
           sum(coalesce((summary->'images'->>'unsent_saved_usd')::float8, 0)) AS unsent_usd,
           sum(coalesce((summary->'images'->>'saved_usd')::float8, 0)) AS downscale_usd
    FROM sessions WHERE tenant = $1 AND started_at >= $2 AND started_at < $3
      AND summary IS NOT NULL
    GROUP BY 1
)
SELECT coalesce(t.day, i.day) AS day, coalesce(t.cascade_usd, 0) AS cascade_usd,
       coalesce(t.top_tier_usd, 0) AS top_tier_usd, coalesce(i.unsent_usd, 0) AS unsent_usd,
       coalesce(i.downscale_usd, 0) AS downscale_usd
FROM turns t FULL JOIN images i ON i.day = t.day ORDER BY 1
"""

# a sample kept when a question showed it is decided again, with `was`: one drop less
_FRAMES = """
SELECT detail->>'content_type' AS content_type,
       count(*) FILTER (WHERE (detail->>'kept')::boolean) AS kept,
       count(*) FILTER (WHERE NOT (detail->>'kept')::boolean)
         - count(*) FILTER (WHERE detail ? 'was') AS dropped
FROM cost_events WHERE tenant = $1 AND ts >= $2 AND ts < $3 AND kind = 'frame'
  AND detail->>'content_type' IS NOT NULL
GROUP BY 1 ORDER BY 1
"""

_LATENCIES = """
SELECT first_token_ms, latency_ms FROM quality_turns_in($1, $2, $3)
WHERE latency_ms IS NOT NULL
"""


async def quality_by_day(
    pool: asyncpg.Pool, tenant: str, since: datetime, until: datetime,
) -> list[dict[str, Any]]:
    """The quality signals per UTC day of [since, until), each day cut to the window: the
    first point runs from `since` (not its midnight) to the next midnight, the last to `until`.
    Read from midnight, the first point counted that day's turns before `since`, which the
    window's totals leave out, so the chart disagreed with them. The days after the first
    start at midnight, so every point is one calendar day of the cost charts."""
    if since >= until:
        return []
    midnight = since.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first_end = min(midnight + timedelta(days=1), until)
    first = await window_quality(pool, tenant, since, first_end)
    rest = await quality_series(pool, tenant, first_end, until, timedelta(days=1))
    return [first, *rest]


async def report_data(
    pool: asyncpg.Pool, tenant: str, since: datetime, until: datetime,
) -> dict[str, Any]:
    """The report's figures for turns, calls and frames in [since, until); the by-day series
    are cut to the window (a day partly outside it counts only its part inside)."""
    args = (tenant, since, until)
    costs = await pool.fetch(_COST_BY_DAY_MODEL, *args)
    savings = await pool.fetch(_SAVINGS_BY_DAY, *args)
    frames = await pool.fetch(_FRAMES, *args)
    latencies = await pool.fetch(_LATENCIES, *args)
    quality = await quality_by_day(pool, tenant, since, until)
    return {
        "tenant": tenant, "since": since.isoformat(), "until": until.isoformat(),
        "cost_by_day_model": [dict(r) for r in costs],
        "unpriced_models": sorted({r["model"] for r in costs if r["unpriced"]}),
        "savings_by_day": [dict(r) for r in savings],
        "frames_by_content_type": [dict(r) for r in frames],
        "first_token_ms": [r["first_token_ms"] for r in latencies
                           if r["first_token_ms"] is not None],
        "turn_latency_ms": [r["latency_ms"] for r in latencies],
        "quality_by_day": quality,
    }
