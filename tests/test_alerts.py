"""Alerts to the log and to a webhook: a local aiohttp receiver stands for the webhook.

Protects: the quality thresholds raise the expected alerts on the scripted fixture; `alerts
check` POSTs each as JSON, retries a receiver that fails, raises each once per window however
often it runs (again when it turns critical), and records an alert the webhook never took
(receiver down) without failing; a speech outage that leaves few turns still raises its alerts; a
session's budget crossings reach the webhook from the process's sink without the session waiting
on it, and a sink whose receiver is down gives up, counted, while the session goes on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from conftest import cli_env, run_cli
from ops_fixture import record_plan

from agent.alerts import RULES, AlertSink, evaluate
from agent.budget import BudgetGuard
from agent.config import Settings
from agent.pricing import PriceTable, Usage
from agent.session_record import SessionRecord
from bench.livekit_harness import free_port
from memory.db import Database
from memory.quality import window_quality
from memory.store import Store


@dataclass
class Receiver:
    """A webhook that fails the first `fail_first` POSTs of each alert with 503, and may hold
    its answers until `release` is set."""

    fail_first: int = 0
    received: list[dict] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    got: asyncio.Event = field(default_factory=asyncio.Event)  # set on the first alert taken
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        alert = await request.json()
        tries = self.attempts[alert["alert"]] = self.attempts.get(alert["alert"], 0) + 1
        if tries <= self.fail_first:
            return web.Response(status=503)
        self.received.append(alert)
        self.got.set()
        await self.release.wait()
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    rx.release.set()
    app = web.Application()
    app.router.add_post("/hook", rx.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    rx.url = f"http://127.0.0.1:{port}/hook"
    yield rx
    await runner.cleanup()


def test_rules_follow_the_product_plan() -> None:
    quality = {"tenant": "t", "since": "a", "until": "b", "turns": 20, "retry_rate": 0.25,
               "escalation_rate": 0.31, "mean_confidence": 0.55,
               "first_token_ms": {"p50": 300.0, "p95": 1200.0, "p99": 2900.0},
               "sessions": {"completion_rate": 0.8}}
    raised = {a["alert"]: a["severity"] for a in evaluate(quality)}
    assert raised == {"retry_rate": "warning", "escalation_rate": "warning",
                      "mean_confidence": "warning", "first_token_p95": "warning"}
    quality |= {"retry_rate": 0.31, "first_token_ms": {"p95": 900.0, "p99": 3100.0},
                "sessions": {"completion_rate": 0.7}, "mean_confidence": 0.6}
    raised = {a["alert"]: a["severity"] for a in evaluate(quality)}
    assert raised == {"retry_rate": "critical", "escalation_rate": "warning",
                      "first_token_p99": "warning", "completion_rate": "warning"}
    assert evaluate(quality | {"turns": 4}) == []  # too few turns to judge
    speech = {"speech_failures": {"tts": {"failures": 3, "sessions": 1}}}
    assert {a["alert"]: a["severity"] for a in evaluate(quality | speech)} == raised | {
        "speech_synthesis_failing": "warning"}
    assert {r.name for r in RULES} >= {"retry_rate", "completion_rate"}


async def test_an_outage_that_cuts_the_turns_still_raises_its_alerts(
    settings: Settings, db: Database,
) -> None:
    """Speech recognition down: the users leave before a turn is counted. The rates over turns
    are not judged, the speech failures are, and so is completion over enough ended sessions."""
    store = Store(db.pool)
    for tenant, sessions in (("initech", 5), ("hooli", 1)):
        for n in range(sessions):
            session = f"s-{tenant}-{n}"
            await store.start_session(session, tenant=tenant, user_id=f"u{n}", room=None,
                                      source="live", provider="cascade", model="cascade")
            await db.pool.execute(
                "INSERT INTO cost_events (session_id, tenant, seq, ts, kind, detail)"
                " VALUES ($1, $2, 1, now(), 'speech_failed', $3::jsonb)", session, tenant,
                json.dumps({"engine": "stt", "provider": "openai", "model": "m",
                            "error": "APIStatusError: 503"}))
            await store.end_session(session, 0.0, {"outcome": "failed"})
    env = cli_env(settings)
    code, out, err = await run_cli("alerts", "check", "--tenant", "initech", "--json", env=env)
    assert code == 0, err
    raised = {a["alert"]: a for a in json.loads(out)}
    assert set(raised) == {"speech_recognition_failing", "completion_rate"}
    assert raised["speech_recognition_failing"]["value"] == 5
    assert raised["completion_rate"]["value"] == 0
    # one session: too few to judge its completion; its failed speech is still an outage
    code, out, err = await run_cli("alerts", "check", "--tenant", "hooli", "--json", env=env)
    assert code == 0, err
    assert [a["alert"] for a in json.loads(out)] == ["speech_recognition_failing"]


async def test_alerts_check_posts_once_per_window_and_retries(
    settings: Settings, db: Database, tmp_path: Path, receiver: Receiver,
) -> None:
    await record_plan(db, tmp_path / "costs")
    now = datetime.now(UTC)
    quality = await window_quality(db.pool, "acme", now - timedelta(days=7), now)
    expected = {"retry_rate", "escalation_rate", "completion_rate"}  # 22%, 33%, 50%
    assert {a["alert"] for a in evaluate(quality)} == expected
    receiver.fail_first = 1  # every alert's first POST gets a 503: delivered on the retry
    env = {**cli_env(settings), "SIGHTLINE_ALERT_WEBHOOK": receiver.url}
    code, out, err = await run_cli("alerts", "check", "--tenant", "acme", "--since", "7d",
                                   "--json", env=env)
    assert code == 0, err
    assert {a["alert"] for a in json.loads(out)} == expected
    assert {a["alert"] for a in receiver.received} == expected
    assert all(n == 2 for n in receiver.attempts.values())
    retry = next(a for a in receiver.received if a["alert"] == "retry_rate")
    assert retry["severity"] == "warning" and retry["tenant"] == "acme"
    assert retry["value"] == pytest.approx(2 / 9, abs=1e-4) and retry["threshold"] == 0.2
    assert "alert retry_rate (warning): acme: retry rate" in err  # the log line
    # the same window again (cron runs every few minutes): nothing new is sent
    code, out, err = await run_cli("alerts", "check", "--tenant", "acme", "--since", "7d",
                                   env=env)
    assert code == 0 and "No new alert for tenant acme (9 turns in the window)." in out
    assert len(receiver.received) == 3
    code, out, _ = await run_cli("alerts", "list", "--tenant", "acme", env=env)
    assert out.count("(delivered)") == 3 and "completion 0.5 < 0.75" in out
    # another tenant with too few turns: nothing
    code, out, _ = await run_cli("alerts", "check", "--tenant", "globex", "--since", "7d",
                                 env=env)
    assert code == 0 and "No new alert" in out


async def test_alerts_check_with_the_receiver_down_sends_them_once_it_is_back(
    settings: Settings, db: Database, tmp_path: Path, receiver: Receiver,
) -> None:
    await record_plan(db, tmp_path / "costs")
    env = {**cli_env(settings), "SIGHTLINE_ALERT_WEBHOOK": f"http://127.0.0.1:{free_port()}/x"}
    code, out, err = await run_cli("alerts", "check", "--tenant", "acme", "--since", "7d",
                                   env=env)
    assert code == 0, err
    assert "warning  acme: retry rate 0.2222 > 0.2 over 9 turns" in out
    assert err.count("not delivered to the webhook after 4 attempts") == 3
    assert "127.0.0.1" not in err  # the webhook URL may hold a token: never logged
    code, out, _ = await run_cli("alerts", "list", "--tenant", "acme", env=env)
    assert out.count("(not delivered)") == 3
    # the next check in the window, the receiver back: nothing new, the three sent now
    env["SIGHTLINE_ALERT_WEBHOOK"] = receiver.url
    code, out, err = await run_cli("alerts", "check", "--tenant", "acme", "--since", "7d",
                                   env=env)
    assert code == 0, err
    assert "No new alert for tenant acme" in out
    assert "Sent 3 alerts raised earlier in the window that the webhook had not taken." in out
    assert sorted(a["alert"] for a in receiver.received) == [
        "completion_rate", "escalation_rate", "retry_rate"]
    code, out, _ = await run_cli("alerts", "list", "--tenant", "acme", "--json", env=env)
    assert code == 0 and [a["delivered_at"] is not None for a in json.loads(out)] == [True] * 3
    # and once sent, never again
    code, out, _ = await run_cli("alerts", "check", "--tenant", "acme", "--since", "7d",
                                 env=env)
    assert "Sent" not in out and len(receiver.received) == 3


async def test_an_alert_that_turns_critical_within_its_window_is_raised_again(
    settings: Settings, db: Database, tmp_path: Path, receiver: Receiver,
) -> None:
    await record_plan(db, tmp_path / "costs")
    env = {**cli_env(settings), "SIGHTLINE_ALERT_WEBHOOK": receiver.url}
    code, out, err = await run_cli("alerts", "check", "--tenant", "acme", "--since", "7d",
                                   env=env)
    assert code == 0 and "warning  acme: retry rate 0.2222 > 0.2 over 9 turns" in out, err

    async def more(turns: int, session: str) -> None:
        """`turns` copies of a turn: of s-alice's rephrased question (a retry), or of
        s-alice-2's question (none)."""
        await db.pool.execute(
            "INSERT INTO cost_events (session_id, tenant, seq, ts, kind, detail)"
            " SELECT session_id, tenant, (SELECT max(seq) FROM cost_events) + n, ts, kind,"
            " detail FROM generate_series(1, $1) n, (SELECT * FROM cost_events"
            "  WHERE session_id = $2 AND kind = 'turn' AND (session_id = 's-alice-2'"
            "  OR detail->>'reason' LIKE 'question_repeated%') ORDER BY seq LIMIT 1) turn",
            turns, session)

    await more(2, "s-alice")  # 4 retried of 11: critical
    code, out, err = await run_cli("alerts", "check", "--tenant", "acme", "--since", "7d",
                                   env=env)
    assert code == 0, err
    assert out.splitlines() == ["critical acme: retry rate 0.3636 > 0.3 over 11 turns"]
    assert [(a["alert"], a["severity"]) for a in receiver.received[3:]] == [
        ("retry_rate", "critical")]
    # critical again (5 of 12), then back to a warning (5 of 20): raised already in the window
    for turns, session, severity in ((1, "s-alice", "critical"), (8, "s-alice-2", "warning")):
        await more(turns, session)
        now = datetime.now(UTC)
        quality = await window_quality(db.pool, "acme", now - timedelta(days=7), now)
        assert {a["alert"]: a["severity"] for a in evaluate(quality)}["retry_rate"] == severity
        code, out, err = await run_cli("alerts", "check", "--tenant", "acme", "--since", "7d",
                                       env=env)
        assert code == 0 and "No new alert for tenant acme" in out, (out, err)
    assert len(receiver.received) == 4
    code, out, _ = await run_cli("alerts", "list", "--tenant", "acme", "--json", env=env)
    retry = next(a for a in json.loads(out) if a["alert"] == "retry_rate")
    assert retry["severity"] == "critical" and retry["delivered_at"] is not None


def _record(tmp_path: Path, sink: AlertSink) -> SessionRecord:
    budget = BudgetGuard(session_budget_usd=0.001, tenant_budget_usd=None,
                         max_tier_over_budget=0)
    return SessionRecord.open(session_id="s-budget", tenant="acme", source="test",
                              costs_dir=tmp_path, prices=PriceTable.load(), store=None,
                              budget=budget, alerts=sink.on_event)


async def test_budget_crossings_reach_the_webhook_without_the_session_waiting(
    tmp_path: Path, receiver: Receiver,
) -> None:
    receiver.release.clear()  # the webhook holds its answers
    sink = AlertSink(receiver.url, backoff_s=0.05)
    record = _record(tmp_path, sink)
    # one Sonnet call of 1,000 output tokens ($0.015) crosses 70%, 90% and 100% of $0.001
    record.meter.model_call(provider="anthropic", model="claude-sonnet-4-6",
                            usage=Usage(output_tokens=1000), images=0, latency_ms=10.0)
    await asyncio.wait_for(receiver.got.wait(), 30)
    # the webhook has not answered yet, and the session has gone on and closes
    summary = await record.close()
    assert summary["budget"]["escalation_capped_at_tier"] == 0
    sink.notify(dict(receiver.received[0]))  # the same crossing again: sent once only
    receiver.release.set()
    await asyncio.to_thread(sink.close)
    assert [a["alert"] for a in receiver.received] == [
        "budget_session_70", "budget_session_90", "budget_session_100"]
    assert receiver.received[-1]["severity"] == "critical"
    assert receiver.received[-1]["session_id"] == "s-budget"
    assert (sink.delivered, sink.failed, sink.dropped) == (3, 0, 0)


async def test_a_sink_whose_receiver_is_down_gives_up_and_the_session_goes_on(
    tmp_path: Path,
) -> None:
    sink = AlertSink(f"http://127.0.0.1:{free_port()}/x", attempts=3, backoff_s=0.01)
    record = _record(tmp_path, sink)
    record.meter.model_call(provider="anthropic", model="claude-sonnet-4-6",
                            usage=Usage(output_tokens=1000), images=0, latency_ms=10.0)
    summary = await record.close()
    assert summary["total_cost_usd"] > 0.001
    await asyncio.to_thread(sink.close)
    assert (sink.delivered, sink.failed) == (0, 3)


async def test_the_process_sinks_flush_at_exit(tmp_path: Path, receiver: Receiver) -> None:
    """The worker closes its sinks as it exits: a queued alert is still sent."""
    from agent.alerts import close_sinks, process_sink

    sink = process_sink(receiver.url)
    assert process_sink(receiver.url) is sink  # one per process and URL
    record = _record(tmp_path, sink)
    record.meter.model_call(provider="anthropic", model="claude-sonnet-4-6",
                            usage=Usage(output_tokens=1000), images=0, latency_ms=10.0)
    await record.close()
    await asyncio.to_thread(close_sinks)
    assert len(receiver.received) == 3 and sink.delivered == 3
