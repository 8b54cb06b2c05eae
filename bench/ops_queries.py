"""A tenant's quality window (`sightline quality`, memory/quality.py: the views of migration 0009
aggregated in Postgres) against reading the same turn events out and folding them in Python, on
the same data in the same run.

Data (seeded): `--tenants` tenants, each with `--sessions` sessions of `--turns` user turns spread
over the last 7 days; each turn a `turn` event shaped as the cascade records it (start tier and
reason, a retry one time in six, one or two tiers tried with stated confidences, the answering
tier, first-words and end latency, an interruption one time in twenty), and each session ended
`completed` or `failed`. The window: the first tenant's last `--hours` (24: 1/7 of its turns).

- ours: `window_quality(pool, tenant, since, until)`: three aggregate queries on the views.
- reference: the tenant's turn events of the window fetched (`SELECT detail FROM cost_events`)
  and folded in Python: turns, retries, escalations, tier mix, mean confidence, the latency
  percentiles (numpy), and the sessions' completion from a second query.

Both must agree on the counts (checked). Each is timed `--repeats` times after one warm-up,
alternating.

    .venv/bin/python -m bench.ops_queries [--tenants 10] [--sessions 200] [--turns 10] [--hours 24]

The last line is JSON: {"p50_ms", "p95_ms", "reference_p50_ms", "reference_p95_ms", "ratio"
(reference p50 / ours), "turns_in_window", "turn_events"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bench.context import database
from memory.quality import window_quality
from memory.store import Store

REASONS = ("new_topic", "new_topic", "new_topic", "new_topic", "new_topic", "question_repeated")


def _turn(rng: random.Random) -> dict[str, Any]:
    reason = rng.choice(REASONS)
    start = 1 if reason == "question_repeated" else 0
    tried = [{"tier": start, "confidence": round(rng.uniform(0.2, 1.0), 2),
              "outcome": "answered"}]
    if tried[0]["confidence"] < 0.7 and start < 2:
        tried[0]["outcome"] = "low_confidence"
        tried.append({"tier": start + 1, "confidence": round(rng.uniform(0.6, 1.0), 2),
                      "outcome": "answered"})
    interrupted = rng.random() < 0.05
    first = rng.uniform(150, 1500)
    return {"start_tier": start, "reason": reason, "tried": tried, "top_tier": 2,
            "answered_tier": None if interrupted else tried[-1]["tier"],
            "interrupted": interrupted, "first_token_ms": round(first, 1),
            "latency_ms": round(first + rng.uniform(200, 3000), 1), "cost_usd": 0.0001}


async def load(pool: Any, args: argparse.Namespace) -> int:
    rng = random.Random(16)
    store = Store(pool)
    now = time.time()
    count = 0
    for t in range(args.tenants):
        tenant = f"tenant-{t}"
        for s in range(args.sessions):
            session_id = f"{tenant}-s{s}"
            await store.start_session(session_id, tenant=tenant, user_id=f"u{s % 50}",
                                      room=None, source="live", provider="x", model="x")
            start = now - rng.uniform(0, 7 * 86400)
            rows = [{"session_id": session_id, "tenant": tenant, "seq": i + 1,
                     "ts": start + 20 * i, "kind": "turn", "detail": _turn(rng)}
                    for i in range(args.turns)]
            await store.add_cost_events(rows)
            count += len(rows)
            outcome = "failed" if rng.random() < 0.1 else "completed"
            await pool.execute(
                "UPDATE sessions SET started_at = to_timestamp($2), ended_at = to_timestamp($3),"
                " summary = $4::jsonb WHERE id = $1", session_id, start,
                start + 20 * args.turns, json.dumps({"outcome": outcome}))
    await pool.execute("ANALYZE")
    return count


async def reference(pool: Any, tenant: str, since: datetime, until: datetime) -> dict[str, Any]:
    """The same figures folded in Python from the raw events."""
    rows = await pool.fetch(
        "SELECT session_id, seq, detail FROM cost_events WHERE tenant = $1 AND ts >= $2"
        " AND ts < $3 AND kind = 'turn' ORDER BY session_id, seq", tenant, since, until)
    details = [json.loads(r["detail"]) for r in rows]
    turns = [d for d in details if not d["reason"].startswith(("tool_result", "agent_"))]
    confidences = [next((a["confidence"] for a in reversed(d["tried"])
                         if a["outcome"] in ("answered", "tool_call")), None) for d in turns]
    stated = [c for c in confidences if c is not None]
    tiers: dict[str, int] = {}
    for d in turns:
        key = "none" if d["answered_tier"] is None else str(d["answered_tier"])
        tiers[key] = tiers.get(key, 0) + 1
    outcomes = await pool.fetch(
        "SELECT summary->>'outcome' AS outcome FROM sessions WHERE tenant = $1"
        " AND started_at >= $2 AND started_at < $3", tenant, since, until)
    first = [d["first_token_ms"] for d in turns if d.get("first_token_ms") is not None]
    return {
        "turns": len(turns),
        "retries": sum(d["reason"].startswith(("question_repeated", "answer_did_not_help"))
                       for d in turns),
        "escalated": sum(len(d["tried"]) > 1 for d in turns),
        "answered_by_tier": tiers,
        "mean_confidence": sum(stated) / len(stated) if stated else None,
        "first_token_ms": np.percentile(first, [50, 95, 99]).tolist() if first else None,
        "completed": sum(o["outcome"] == "completed" for o in outcomes),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        async with database(Path(scratch)) as db:
            events = await load(db.pool, args)
            until = datetime.now(UTC) + timedelta(minutes=1)
            since = until - timedelta(hours=args.hours)
            ours_ms: list[float] = []
            ref_ms: list[float] = []
            ours = await window_quality(db.pool, "tenant-0", since, until)
            ref = await reference(db.pool, "tenant-0", since, until)
            assert ours["turns"] == ref["turns"]
            assert round(ours["retry_rate"] * ours["turns"]) == ref["retries"]
            assert ours["answered_by_tier"] == ref["answered_by_tier"]
            for i in range(args.repeats):
                for name in (("ours", "ref") if i % 2 == 0 else ("ref", "ours")):
                    started = time.perf_counter()
                    if name == "ours":
                        await window_quality(db.pool, "tenant-0", since, until)
                        ours_ms.append((time.perf_counter() - started) * 1000)
                    else:
                        await reference(db.pool, "tenant-0", since, until)
                        ref_ms.append((time.perf_counter() - started) * 1000)
    p50, p95 = np.percentile(ours_ms, [50, 95])
    r50, r95 = np.percentile(ref_ms, [50, 95])
    return {"p50_ms": round(p50, 2), "p95_ms": round(p95, 2),
            "reference_p50_ms": round(r50, 2), "reference_p95_ms": round(r95, 2),
            "ratio": round(r50 / p50, 2), "turns_in_window": ours["turns"],
            "turn_events": events}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--hours", type=float, default=24.0, help="the window (default 24)")
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
