"""Usage metering (`sightline usage`) on the scripted multi-session fixture and the demo replay.

Protects: a month's sessions, screen-share and voice minutes, turns answered, model dollars by
tier (summing to what the calls cost), image tokens, knowledge and memory operations (and the
questions answered without their lookup); only the tenant's own rows and only that month's; JSON,
CSV and text agree; no CSV cell starts a spreadsheet formula.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import DEMO_FIXTURE, cli_env, run_cli
from ops_fixture import record_plan

from agent.cli_usage import csv_cell
from agent.config import Settings
from agent.replay import replay
from agent.replay_script import load_fixture
from agent.session_summary import SessionTotals
from memory.db import Database
from memory.store import Store
from memory.usage import month_bounds, month_usage

MID_NOVEMBER = datetime(2026, 11, 20, 12, tzinfo=UTC)


def test_month_bounds() -> None:
    assert month_bounds("2026-11") == (datetime(2026, 11, 1, tzinfo=UTC),
                                       datetime(2026, 12, 1, tzinfo=UTC))
    assert month_bounds("2026-12")[1] == datetime(2027, 1, 1, tzinfo=UTC)


async def test_usage_of_the_scripted_sessions(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    await record_plan(db, tmp_path / "costs", at=MID_NOVEMBER)
    # two of acme's questions and one of globex's answered without their lookup
    for tenant, seq, outcome in (("acme", 9001, "timeout"), ("acme", 9002, "failed"),
                                 ("acme", 9003, "done"), ("globex", 9001, "timeout")):
        await db.pool.execute(
            "INSERT INTO cost_events (session_id, tenant, seq, ts, kind, detail)"
            " SELECT session_id, tenant, $2, ts, 'context', $3::jsonb FROM cost_events"
            " WHERE tenant = $1 ORDER BY id LIMIT 1",
            tenant, seq, json.dumps({"recall": outcome, "knowledge": []}))
    u = await month_usage(db.pool, "acme", "2026-11")
    assert u["knowledge"]["recalls_lost"] == 2
    assert (u["sessions"], u["live_sessions"], u["users"]) == (4, 0, 3)
    assert u["screen_share_minutes"] == 1.0  # bob's 61 frames at 1 FPS: 60 s
    assert (u["frames_sampled"], u["frames_kept"]) == (61, 7)
    assert (u["voice_minutes"], u["spoken_minutes"], u["tts_characters"]) == (1.5, 0.2, 60)
    assert (u["turns"], u["turns_answered"]) == (9, 7)
    calls = await db.pool.fetch(
        "SELECT detail->>'tier' AS tier, cost_usd FROM cost_events WHERE tenant = 'acme'"
        " AND kind IN ('model_call', 'model_error', 'speech')")
    assert u["model_cost_usd"] == pytest.approx(sum(float(c["cost_usd"]) for c in calls))
    by_use = u["cost_by_use"]
    assert set(by_use) == {"tier 0", "tier 1", "tier 2", "stt", "tts"}
    assert by_use["stt"]["cost_usd"] == 0.0012 and by_use["tts"]["cost_usd"] == 0.0009
    assert by_use["tts"]["models"]["tts-1"]["calls"] == 1
    for tier in ("0", "1", "2"):
        assert by_use[f"tier {tier}"]["cost_usd"] == pytest.approx(
            sum(float(c["cost_usd"]) for c in calls if c["tier"] == tier))
    # tier 0 was asked by alice once, bob three times, carol twice, alice-2 once
    assert by_use["tier 0"]["calls"] == 7 and by_use["tier 0"]["models"][
        "gemini-2.5-flash-lite"]["errors"] == 3  # carol's two 500s, bob's cut-short answer
    assert u["image_tokens"] == 0 and u["unpriced_models"] == []
    assert u["handoffs"] == 0
    # another month, another tenant: nothing of acme's
    assert (await month_usage(db.pool, "acme", "2026-10"))["sessions"] == 0
    globex = await month_usage(db.pool, "globex", "2026-11")
    assert globex["sessions"] == 1 and set(globex["cost_by_use"]) == {"tier 0", "tier 1",
                                                                       "tier 2"}

    env = cli_env(settings)
    code, out, err = await run_cli("usage", "--tenant", "acme", "--month", "2026-11", "--json",
                                   env=env)
    assert code == 0, err
    assert json.loads(out) == json.loads(json.dumps(u))
    code, out, err = await run_cli("usage", "--tenant", "acme", "--month", "2026-11", "--csv",
                                   env=env)
    assert code == 0, err
    rows = {r["metric"]: r["value"] for r in csv.DictReader(io.StringIO(out))}
    assert rows["sessions"] == "4" and rows["voice_minutes"] == "1.5"
    assert float(rows["cost_by_use.tier 1.cost_usd"]) == by_use["tier 1"]["cost_usd"]
    code, out, err = await run_cli("usage", "--tenant", "acme", "--month", "2026-11", env=env)
    assert code == 0, err
    assert "sessions: 4 (0 live), 3 users" in out
    assert "screen share: 1.00 min (61 frames sampled, 7 kept)" in out
    assert "voice: 1.50 min heard, 0.20 min spoken (60 characters)" in out
    assert "turns: 9, 7 answered" in out
    code, _, err = await run_cli("usage", "--tenant", "acme", "--month", "2026-13", env=env)
    assert code == 2 and "must be a month as YYYY-MM" in err


async def test_usage_csv_cells_never_start_a_formula(settings: Settings, db: Database) -> None:
    """A tenant's or a model's name a spreadsheet would run as a formula is written as text
    (OWASP's CSV injection advice: a leading `'`); figures stay numbers."""
    tenant, model = "=HYPERLINK(\"http://x.test\")", "@SUM(A1)"
    await Store(db.pool).start_session("s-csv", tenant=tenant, user_id="u", room=None,
                                       source="live", provider="cascade", model="cascade",
                                       started_at=MID_NOVEMBER.timestamp())
    await db.pool.execute(  # no price: its name is listed under unpriced_models
        "INSERT INTO cost_events (session_id, tenant, seq, ts, kind, provider, model)"
        " VALUES ('s-csv', $1, 1, $2, 'model_call', 'other', $3)", tenant, MID_NOVEMBER, model)
    code, out, err = await run_cli("usage", "--tenant", tenant, "--month", "2026-11", "--csv",
                                   env=cli_env(settings))
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["tenant"] for r in rows} == {"'" + tenant}
    values = {r["metric"]: r["value"] for r in rows}
    assert values["unpriced_models"] == "'" + model and values["sessions"] == "1"
    assert [csv_cell(v) for v in ("-0.25", -3, "+1", "-1+2", "\tx", "\rx", "a=b")] == [
        "-0.25", -3, "'+1", "'-1+2", "'\tx", "'\rx", "a=b"]


async def test_usage_of_the_demo_replay(settings: Settings, db: Database) -> None:
    result = await replay(load_fixture(DEMO_FIXTURE), settings, db)
    u = await month_usage(db.pool, "demo", datetime.now(UTC).strftime("%Y-%m"))
    first, later = result.sessions
    assert u["sessions"] == 2 and u["turns"] == u["turns_answered"] == 5
    sampled = first["frames"]["sampled"] + later["frames"]["sampled"]
    assert u["frames_sampled"] == sampled
    assert sampled / 60 - 0.1 <= u["screen_share_minutes"] <= sampled / 60
    assert u["image_tokens"] == first["images"]["tokens"] + later["images"]["tokens"] > 0
    total = first["total_cost_usd"] + later["total_cost_usd"]
    assert u["model_cost_usd"] == pytest.approx(total)
    assert u["cost_by_use"]["memory"]["calls"] == first["memory"]["updates"] + later[
        "memory"]["updates"]
    assert u["knowledge"]["recalls"] == 5 and u["knowledge"]["hits"] == (
        first["knowledge_hits"] + later["knowledge_hits"])
    assert u["knowledge"]["recalls_lost"] == first["recalls_lost"] + later["recalls_lost"]
    assert u["knowledge"]["documents_stored"] == u["knowledge"]["documents_ingested"] > 0
    assert u["memory"]["recalled"] == first["memory"]["recalled"] + later["memory"]["recalled"]
    assert u["memory"]["facts_written"] == 2


def test_a_sessions_summary_counts_the_questions_answered_without_their_lookup(
    tmp_path: Path,
) -> None:
    totals = SessionTotals(session_id="s", tenant="t", source="live",
                           prices=tmp_path / "p.json", cost_log=tmp_path / "c.jsonl")
    for outcome in ("done", "timeout", "failed", "off", "timeout"):
        totals.add({"kind": "context", "cost_usd": 0.0,
                    "detail": {"recall": outcome, "knowledge": []}})
    assert totals.summary()["recalls_lost"] == 3
