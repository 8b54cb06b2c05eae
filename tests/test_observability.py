"""Prometheus metrics and OpenTelemetry spans of real cascade turns (the scripted fixture's
sessions, through the real google-genai and anthropic clients and the wire-format server).

Protects: a turn's spans reach an exporter through livekit-agents' tracer provider (the turn,
each tier tried with its stated confidence and outcome, the tool calls as events); Sightline's
series count model dollars by model/tier/tenant, frames kept and dropped (a held-back sample a
question kept counted once, and apart as kept later), turns by answering tier, escalations,
retries, interruptions and the first-words histogram, screen-text reads with
their folds and waits, the questions' lookups by outcome with their wait, from the same events
the cost log holds. (The e2e test scrapes them
from a live worker's /metrics.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit.agents.telemetry import set_tracer_provider, tracer
from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from ops_fixture import PLAN, record_plan
from prometheus_client import REGISTRY, generate_latest
from synthetic_screen import Desk

from agent.observability import configure_tracing, record
from memory.db import Database
from vision.sampler import FrameSampler
from vision.screen import FrameDecision, FrameTally, ScreenWatcher


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    set_tracer_provider(provider, allow_pii=False)
    yield exporter
    tracer.set_provider(trace_api.NoOpTracerProvider())
    provider.shutdown()


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_turn_spans_and_metrics(
    db: Database, tmp_path: Path, spans: InMemorySpanExporter,
) -> None:
    bob = next(p for p in PLAN if p.session_id == "s-bob")
    carol = next(p for p in PLAN if p.session_id == "s-carol")
    before = {
        "lite": value("sightline_model_cost_usd_total", tenant="acme",
                      model="gemini-2.5-flash-lite", tier="0"),
        "turns1": value("sightline_turns_total", tenant="acme", answered_tier="1"),
        "none": value("sightline_turns_total", tenant="acme", answered_tier="none"),
        "esc": value("sightline_escalations_total", tenant="acme"),
        "int": value("sightline_interruptions_total", tenant="acme"),
        "kept": value("sightline_frames_total", tenant="acme", decision="kept",
                      reason="changed", content_type="code"),
        "dropped": value("sightline_frames_total", tenant="acme", decision="dropped",
                         reason="unchanged", content_type="code"),
        "first": value("sightline_first_token_seconds_count", tenant="acme"),
        "errors": value("sightline_model_calls_total", tenant="acme",
                        model="gemini-2.5-flash-lite", tier="0", outcome="error"),
    }
    await record_plan(db, tmp_path / "costs", [bob, carol])

    finished = spans.get_finished_spans()
    turns = [s for s in finished if s.name == "sightline.turn"]
    tiers = [s for s in finished if s.name == "sightline.tier"]
    assert len(turns) == 5
    first = turns[0]
    children = [s for s in tiers if s.parent is not None
                and s.parent.span_id == first.context.span_id]
    # bob's E42: tier 0 unsure at 0.3, tier 1 answers at 0.9, both under the turn's span
    assert [(c.attributes["sightline.tier"], c.attributes["sightline.confidence"],
             c.attributes["sightline.outcome"]) for c in children] == [
        (0, 0.3, "low_confidence"), (1, 0.9, "answered")]
    assert first.attributes["sightline.answered_tier"] == 1
    assert first.attributes["sightline.first_token_ms"] <= first.attributes[
        "sightline.latency_ms"]
    assert turns[2].attributes["sightline.interrupted"] is True  # the answer bob cut short
    assert turns[4].attributes["sightline.answered_tier"] == -1  # carol's: every tier failed

    lite_cost = value("sightline_model_cost_usd_total", tenant="acme",
                      model="gemini-2.5-flash-lite", tier="0") - before["lite"]
    rows = await db.pool.fetch(
        "SELECT cost_usd FROM cost_events WHERE model = 'gemini-2.5-flash-lite'"
        " AND session_id IN ('s-bob', 's-carol')")
    assert lite_cost == pytest.approx(sum(float(r["cost_usd"]) for r in rows))
    assert value("sightline_turns_total", tenant="acme", answered_tier="1") - before[
        "turns1"] == 2  # bob's E42, carol's banner
    assert value("sightline_turns_total", tenant="acme", answered_tier="none") - before[
        "none"] == 2  # bob's cut short, carol's unanswered
    assert value("sightline_escalations_total", tenant="acme") - before["esc"] == 3
    assert value("sightline_interruptions_total", tenant="acme") - before["int"] == 1
    assert value("sightline_frames_total", tenant="acme", decision="kept", reason="changed",
                 content_type="code") - before["kept"] == 7
    assert value("sightline_frames_total", tenant="acme", decision="dropped",
                 reason="unchanged", content_type="code") - before["dropped"] == 54
    # every turn said something first: carol's unanswered one, its one-sentence apology
    assert value("sightline_first_token_seconds_count", tenant="acme") - before["first"] == 5
    assert value("sightline_model_calls_total", tenant="acme", model="gemini-2.5-flash-lite",
                 tier="0", outcome="error") - before["errors"] == 3
    text = generate_latest().decode()
    assert "sightline_writer_queue_rows" in text and "sightline_writer_spilled_rows" in text


def test_a_sample_a_question_kept_after_holding_it_back_is_counted_once() -> None:
    """A line being typed is held back, then kept when a question shows it (`keep_shown`): its
    decision is recorded twice, and the series count it once a sample, at its first decision,
    with `sightline_frames_kept_later_total` saying how many moved from dropped to kept (the
    session summary's `FrameTally` moves them)."""
    tenant = "frames-asked"
    records: list[dict[str, object]] = []

    def decided(decision: FrameDecision) -> None:
        records.append(decision.as_record())
        record({"kind": "frame", "tenant": tenant, "detail": decision.as_record()})

    desk = Desk(pointer=None, cursor_on=False)
    watcher = ScreenWatcher(FrameSampler(1.0), decided)
    watcher.offer(0.0, desk.frame())
    watcher.offer(1.0, desk.frame())
    desk.lines = [*desk.lines, "    total = sum(r.val"]
    watcher.offer(2.0, desk.frame())
    desk.lines[-1] = "    total = sum(r.value for r in read"
    watcher.offer(3.0, desk.frame())
    assert watcher.keep_shown()
    assert [(r["reason"], r.get("was")) for r in records] == [
        ("first", None), ("no_change", None), ("typing", None), ("typing", None),
        ("asked", "typing")]

    def frames(decision: str) -> float:
        return sum(value("sightline_frames_total", tenant=tenant, decision=decision,
                         reason=reason, content_type="ui")
                   for reason in ("first", "no_change", "typing", "asked"))

    later = value("sightline_frames_kept_later_total", tenant=tenant, was="typing",
                  content_type="ui")
    assert (frames("kept"), frames("dropped"), later) == (1, 3, 1)
    assert frames("kept") + frames("dropped") == watcher.stats()["sampled"] == 4
    tally = FrameTally()
    for decision in records:
        tally.add(decision)
    assert (frames("kept") + later, frames("dropped") - later) == (
        tally.kept, sum(tally.dropped.values())) == (2, 2)


def test_screen_reads_their_folds_and_waits_are_counted() -> None:
    """A worker's screen-text reads: how many, how many kept frames folded into them, and how
    long they waited for the machine, how many were forced through by the longest wait and how
    many a question hurried (the `screen_text` events' own fields); the screenshots sent before
    their frame's reads were done (the `context` events')."""
    tenant = "screen-metrics"
    for coalesced, waited_ms, forced in ((0, 0.0, False), (3, 1500.0, False),
                                         (9, 10000.0, True)):
        record({"kind": "screen_text", "tenant": tenant,
                "detail": {"coalesced": coalesced, "waited_ms": waited_ms, "forced": forced}})
    record({"kind": "screen_text", "tenant": tenant, "detail": {"hurried": True}})
    for unread in (0, 2):
        record({"kind": "context", "tenant": tenant,
                "detail": {"recall": "done", **({"screen_unread": unread} if unread else {})}})
    assert value("sightline_screen_reads_total", tenant=tenant) == 4
    assert value("sightline_screen_reads_hurried_total", tenant=tenant) == 1
    assert value("sightline_screenshots_unread_total", tenant=tenant) == 1
    assert value("sightline_screen_reads_forced_total", tenant=tenant) == 1
    assert value("sightline_screen_reads_folded_total", tenant=tenant) == 12
    assert value("sightline_screen_read_wait_seconds_sum", tenant=tenant) == pytest.approx(11.5)
    assert value("sightline_screen_read_wait_seconds_bucket", tenant=tenant, le="2.0") == 3


def test_speech_failures_are_counted_by_engine_and_provider() -> None:
    """A speech engine's failed requests (agent/speech_outage.py's `speech_failed` events)."""
    tenant = "speech-metrics"
    for engine, provider in (("stt", "openai"), ("stt", "openai"), ("tts", "cartesia")):
        record({"kind": "speech_failed", "tenant": tenant,
                "detail": {"engine": engine, "provider": provider, "model": "m", "error": "x"}})
    assert value("sightline_speech_failures_total", tenant=tenant, engine="stt",
                 provider="openai") == 2
    assert value("sightline_speech_failures_total", tenant=tenant, engine="tts",
                 provider="cartesia") == 1


def test_lookups_are_counted_by_outcome_with_their_wait() -> None:
    """Each question's lookup (the `context` event's `recall` and `recall_ms`): the lost ones
    (timeout, failed) are counted apart, and only a lookup that was made is timed."""
    tenant = "recall-metrics"
    for outcome, waited_ms in (("done", 40.0), ("done", 120.0), ("timeout", 500.0),
                               ("failed", 3.0), ("off", 0.0)):
        record({"kind": "context", "tenant": tenant,
                "detail": {"recall": outcome, "recall_ms": waited_ms}})
    assert value("sightline_recalls_total", tenant=tenant, outcome="done") == 2
    assert value("sightline_recalls_total", tenant=tenant, outcome="timeout") == 1
    assert value("sightline_recalls_total", tenant=tenant, outcome="failed") == 1
    assert value("sightline_recalls_total", tenant=tenant, outcome="off") == 1
    assert value("sightline_recall_seconds_count", tenant=tenant) == 4
    assert value("sightline_recall_seconds_sum", tenant=tenant) == pytest.approx(0.663)
    assert value("sightline_recall_seconds_bucket", tenant=tenant, le="0.1") == 2


def test_tracing_is_off_without_an_endpoint() -> None:
    assert configure_tracing(None) is False
