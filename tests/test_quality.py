"""Quality signals (`sightline quality`) on the scripted multi-session fixture and the demo
replay, through the real cascade, writer and Postgres views.

Protects: retries (rephrased, "that didn't help") and escalations are counted from what the
cascade recorded; the answering-tier mix, the answering tiers' stated confidence, interruptions
and session completion (`left_mid_answer`, `error`) are right; latency percentiles come from the
timings recorded when the turn happened; the questions answered without their lookup are
counted and the lookups' waits timed; every figure stays within its tenant and its window.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import DEMO_FIXTURE, cli_env, run_cli
from ops_fixture import record_plan

from agent.config import Settings
from agent.replay import replay
from agent.replay_script import load_fixture
from memory.db import Database
from memory.quality import quality_series, session_quality, window_quality

NOW = datetime.now(UTC)


async def test_quality_of_the_scripted_sessions(db: Database, tmp_path: Path) -> None:
    await record_plan(db, tmp_path / "costs")
    q = await window_quality(db.pool, "acme", NOW - timedelta(days=7), NOW + timedelta(hours=1))
    assert q["turns"] == 9
    # alice's rephrasing and "that didn't help"
    assert q["retry_rate"] == pytest.approx(2 / 9, abs=1e-4) and q["said_unhelpful"] == 1
    # bob's E42 (tier 0 unsure) and carol's banner (tier 0 failed) climbed; so did carol's
    # unanswered question (every tier tried)
    assert q["escalation_rate"] == pytest.approx(3 / 9, abs=1e-4)
    # none: carol's unanswered question, and bob's answer he cut short (it never ended)
    assert q["answered_by_tier"] == {"0": 3, "1": 3, "2": 1, "none": 2}
    assert q["top_tier_rate"] == pytest.approx(1 / 9, abs=1e-4)
    assert q["failed_turns"] == 1 and q["interruptions"] == 1
    stated = [0.9, 0.8, 0.5, 0.9, 0.95, 0.7, 0.85]  # every answering tier's confidence
    assert q["mean_confidence"] == pytest.approx(sum(stated) / len(stated), abs=1e-4)
    assert q["turns_with_confidence"] == 7
    first, end = q["first_token_ms"], q["turn_latency_ms"]
    assert q["timed_turns"] == 9
    assert first["p50"] is not None and first["p50"] <= first["p95"] <= first["p99"]
    assert 30 <= first["p50"] <= end["p50"] and end["p50"] <= end["p95"] <= end["p99"]
    assert q["sessions"]["by_completion"] == {"completed": 2, "left_mid_answer": 1, "error": 1}
    assert q["sessions"]["completion_rate"] == 0.5 and q["sessions"]["handoffs"] == 0

    # a window holds only what happened in it: today's sessions (carol, alice's second)
    today = await window_quality(db.pool, "acme", NOW - timedelta(hours=12),
                                 NOW + timedelta(hours=1))
    assert today["turns"] == 3 and today["retry_rate"] == 0.0
    assert today["sessions"]["by_completion"] == {"completed": 1, "error": 1}
    # the other tenant's turn is its own
    globex = await window_quality(db.pool, "globex", NOW - timedelta(days=7),
                                  NOW + timedelta(hours=1))
    assert globex["turns"] == 1 and globex["answered_by_tier"] == {"2": 1}
    assert globex["escalation_rate"] == 1.0 and globex["mean_confidence"] == 0.99
    nobody = await window_quality(db.pool, "nobody", NOW - timedelta(days=7), NOW)
    assert nobody["turns"] == 0 and nobody["retry_rate"] is None
    assert nobody["first_token_ms"] == {"p50": None, "p95": None, "p99": None}

    sessions = await session_quality(db.pool, "acme", NOW - timedelta(days=7),
                                     NOW + timedelta(hours=1))
    assert [(s["session_id"], s["completion"], s["turns"], s["retries"], s["interruptions"])
            for s in sessions] == [
        ("s-alice", "completed", 3, 2, 0), ("s-bob", "left_mid_answer", 3, 0, 1),
        ("s-carol", "error", 2, 0, 0), ("s-alice-2", "completed", 1, 0, 0)]


async def test_a_series_queries_only_its_active_steps_and_matches_each_window(
        db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long report of days (the scripted sessions on a few of 60) is what asking every day
    on its own gives, with only the days that hold something (and one empty day) queried."""
    await record_plan(db, tmp_path / "costs")
    since = (NOW - timedelta(days=59)).replace(hour=0, minute=0, second=0, microsecond=0)
    until = NOW + timedelta(hours=1)
    asked = [(since + timedelta(days=i), min(since + timedelta(days=i + 1), until))
             for i in range(61) if since + timedelta(days=i) < until]
    expected = [await window_quality(db.pool, "acme", start, end) for start, end in asked]
    queried = []

    async def counted(pool: object, tenant: str, start: datetime, end: datetime) -> object:
        queried.append(start)
        return await window_quality(pool, tenant, start, end)  # type: ignore[arg-type]

    monkeypatch.setattr("memory.quality.window_quality", counted)
    series = await quality_series(db.pool, "acme", since, until, timedelta(days=1))
    assert series == expected
    busy = sum(1 for q in expected if q["turns"] or q["sessions"]["started"])
    assert 2 <= busy < len(asked) - 1
    assert len(queried) == busy + 1  # and one empty day, whose signals every other one shares


async def test_a_discarded_round_is_no_user_turn(db: Database, tmp_path: Path) -> None:
    """A round whose reply the framework superseded unplayed (`round_discarded`, recorded by
    the cascade) stays billed but leaves the turns, their retries and escalations."""
    await record_plan(db, tmp_path / "costs")
    since, until = NOW - timedelta(days=7), NOW + timedelta(hours=1)
    before = await window_quality(db.pool, "acme", since, until)
    # alice's rephrased question (a retry), as if its round had been superseded
    turn = await db.pool.fetchrow(
        "SELECT session_id, tenant, ts, detail->>'request_id' AS request_id FROM cost_events"
        " WHERE session_id = 's-alice' AND kind = 'turn'"
        " AND detail->>'reason' LIKE 'question_repeated%'")
    assert turn["request_id"]
    await db.pool.execute(
        "INSERT INTO cost_events (session_id, tenant, seq, ts, kind, detail) SELECT $1, $2,"
        " max(seq) + 1, $3, 'round_discarded', jsonb_build_object('request_id', $4::text)"
        " FROM cost_events WHERE session_id = $1",
        turn["session_id"], turn["tenant"], turn["ts"], turn["request_id"])
    after = await window_quality(db.pool, "acme", since, until)
    assert after["turns"] == before["turns"] - 1 == 8
    assert after["retry_rate"] == pytest.approx(1 / 8, abs=1e-4)
    sessions = await session_quality(db.pool, "acme", since, until)
    assert [(s["turns"], s["retries"]) for s in sessions if s["session_id"] == "s-alice"] == [
        (2, 1)]


async def test_questions_answered_without_their_lookup(db: Database, tmp_path: Path) -> None:
    """Each question's `context` event says how its lookup went: the lost ones (timed out or
    failed) are counted and rated per tenant, and only the lookups made are timed. (The plan's
    sessions record no `context` event of their own: these are all there are.)"""
    await record_plan(db, tmp_path / "costs")
    for tenant, seq, outcome, waited_ms in (
            ("acme", 9001, "timeout", 500.0), ("acme", 9002, "failed", 20.0),
            ("acme", 9003, "done", 80.0), ("acme", 9004, "off", 0.0),
            ("globex", 9001, "timeout", 500.0)):
        await db.pool.execute(
            "INSERT INTO cost_events (session_id, tenant, seq, ts, kind, detail)"
            " SELECT session_id, tenant, $2, ts, 'context', $3::jsonb FROM cost_events"
            " WHERE tenant = $1 ORDER BY id LIMIT 1",
            tenant, seq, json.dumps({"recall": outcome, "recall_ms": waited_ms}))
    window = (NOW - timedelta(days=7), NOW + timedelta(hours=1))
    acme = await window_quality(db.pool, "acme", *window)
    assert acme["lookups"] == {"questions": 4, "lost": 2, "lost_rate": 0.5,
                               "wait_ms": {"p50": 80.0, "p95": 458.0, "p99": 491.6}}
    globex = await window_quality(db.pool, "globex", *window)
    assert (globex["lookups"]["questions"], globex["lookups"]["lost"]) == (1, 1)
    # a lookup alone in its day (its question's turn after midnight) is that day's, no other's
    await db.pool.execute(
        "INSERT INTO cost_events (session_id, tenant, seq, ts, kind, detail)"
        " SELECT session_id, tenant, 9005, $2, 'context', $3::jsonb FROM cost_events"
        " WHERE tenant = $1 ORDER BY id LIMIT 1",
        "acme", window[0] + timedelta(hours=1), json.dumps({"recall": "timeout",
                                                            "recall_ms": 500.0}))
    days = await quality_series(db.pool, "acme", *window, timedelta(days=1))
    assert days[0]["turns"] == 0 and days[0]["lookups"]["lost"] == 1
    assert sum(day["lookups"]["lost"] for day in days) == 3
    nobody = await window_quality(db.pool, "nobody", *window)
    assert nobody["lookups"] == {"questions": 0, "lost": 0, "lost_rate": None,
                                 "wait_ms": {"p50": None, "p95": None, "p99": None}}


async def test_quality_of_the_demo_replay(settings: Settings, db: Database) -> None:
    await replay(load_fixture(DEMO_FIXTURE), settings, db)
    q = await window_quality(db.pool, "demo", NOW - timedelta(hours=1), NOW + timedelta(hours=1))
    # the demo's five questions: tier 0, tier 0 -> 1, tier 0 -> 1 -> 2, tier 0, tier 0
    assert q["turns"] == 5 and q["answered_by_tier"] == {"0": 3, "1": 1, "2": 1}
    assert q["escalation_rate"] == 0.4 and q["retry_rate"] == 0.0
    assert q["mean_confidence"] == pytest.approx(0.9)
    assert q["sessions"]["by_completion"] == {"completed": 2}
    assert (q["lookups"]["questions"], q["lookups"]["lost"]) == (5, 0)


async def test_quality_command(settings: Settings, db: Database, tmp_path: Path) -> None:
    await record_plan(db, tmp_path / "costs")
    env = cli_env(settings)
    code, out, err = await run_cli("quality", "--tenant", "acme", "--since", "7d", "--json",
                                   env=env)
    assert code == 0, err
    q = json.loads(out)
    assert q["turns"] == 9 and q["sessions"]["completion_rate"] == 0.5
    assert q["speech_failures"] == {}
    # bob's speech recognition failed twice (agent/speech_outage.py's events), globex's once
    await db.pool.executemany(
        "INSERT INTO cost_events (session_id, tenant, seq, ts, kind, detail)"
        " SELECT id, tenant, 1000 + $2, now(), 'speech_failed', $3::jsonb FROM sessions"
        " WHERE id = $1", [
            (session, n, json.dumps({"engine": "stt", "provider": "openai", "model": "m",
                                     "error": "APIStatusError: 503"}))
            for n, session in enumerate(["s-bob", "s-bob", "s-globex"])])
    code, out, err = await run_cli("quality", "--tenant", "acme", "--since", "3d",
                                   "--sessions", env=env)
    assert code == 0, err
    assert "  speech failures: 2 failed recognitions in 1 session" in out
    assert "retry rate: 22.2% (rephrased or repeated; 1 said it did not help)" in out
    assert "sessions: 4 started, 4 ended (2 completed, 1 error, 1 left_mid_answer)" in out
    assert "s-bob" in out and "left_mid_answer" in out
    assert "lookups lost: - (0 of 0 questions answered without knowledge or memory" in out
    code, out, err = await run_cli("quality", "--tenant", "acme", "--since", "yesterday",
                                   env=env)
    assert code == 2 and "must be a number > 0 followed by m, h or d" in err
    assert "Traceback" not in err
