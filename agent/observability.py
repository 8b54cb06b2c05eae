"""Metrics and traces for the monitoring stack ops already run.

Prometheus: Sightline's series are counted from each session's events (a listener on the event
log, like the totals and the budget), in the default registry that livekit-agents' own metrics
use, so `SIGHTLINE_METRICS_PORT` (livekit-agents' prometheus server) serves both on `/metrics`.
Sessions are threads of one process here, so no multiprocess collector is needed.

OpenTelemetry: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, livekit-agents' tracer provider gets an
OTLP exporter; the cascade, the recall and the memory keeper open their spans on livekit-agents'
tracer (`livekit.agents.telemetry.tracer`), so one trace holds LiveKit's and Sightline's spans.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from .event_log import Event, EventLog

_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)

MODEL_COST = Counter("sightline_model_cost_usd", "Model dollars, as priced when recorded",
                     ["tenant", "model", "tier"])
MODEL_CALLS = Counter("sightline_model_calls", "Model calls by outcome",
                      ["tenant", "model", "tier", "outcome"])
UNPRICED_CALLS = Counter("sightline_model_unpriced_calls",
                         "Model calls whose model has no price in the table", ["model"])
FRAMES = Counter("sightline_frames", "Sampled screen frames kept or dropped, by reason, "
                 "each counted once, at its first decision",
                 ["tenant", "decision", "reason", "content_type"])
# a counter cannot move a sample from dropped to kept, as the session summary does when a
# question shows a held-back one (`FrameDecision.was`): it is counted here, apart
FRAMES_KEPT_LATER = Counter("sightline_frames_kept_later",
                            "Samples held back (counted dropped in sightline_frames), then "
                            "kept because a question showed them, by why they were held back",
                            ["tenant", "was", "content_type"])
TURNS = Counter("sightline_turns", "User turns by the tier that answered (none: no tier)",
                ["tenant", "answered_tier"])
# a round is counted when it ends, before anyone knows its reply will be superseded unplayed
DISCARDED_ROUNDS = Counter("sightline_discarded_rounds",
                           "Rounds counted in sightline_turns whose reply was superseded "
                           "unplayed (preemptive generation): no user turn", ["tenant"])
ESCALATIONS = Counter("sightline_escalations",
                      "User turns that climbed past their first tier", ["tenant"])
RETRIES = Counter("sightline_retries", "User turns that rephrased or said it did not help",
                  ["tenant"])
INTERRUPTIONS = Counter("sightline_interruptions", "Answers the user cut short", ["tenant"])
FIRST_TOKEN = Histogram("sightline_first_token_seconds",
                        "From the cascade being asked to the user's first words",
                        ["tenant"], buckets=_LATENCY_BUCKETS)
TURN_LATENCY = Histogram("sightline_turn_seconds", "From the cascade being asked to the end "
                         "of its round", ["tenant"], buckets=_LATENCY_BUCKETS)
BUDGET_CROSSINGS = Counter("sightline_budget_crossings", "Budget thresholds crossed",
                           ["tenant", "scope", "threshold"])
SCREEN_READS = Counter("sightline_screen_reads", "Screen-text reads done", ["tenant"])
SCREEN_READS_FOLDED = Counter("sightline_screen_reads_folded",
                              "Kept frames folded into a newer screen-text read", ["tenant"])
SCREEN_READ_WAIT = Histogram("sightline_screen_read_wait_seconds",
                             "How long a screen-text read waited for CPU to spare", ["tenant"],
                             buckets=(0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0))
SCREEN_READS_FORCED = Counter("sightline_screen_reads_forced",
                              "Screen-text reads started after the longest wait with the "
                              "machine still busy: screen memory falling behind", ["tenant"])
SCREEN_READS_HURRIED = Counter("sightline_screen_reads_hurried",
                               "Screen-text reads a question hurried past the OCR queue and the "
                               "CPU gate (SIGHTLINE_COVER_HURRY)", ["tenant"])
SCREENSHOTS_UNREAD = Counter("sightline_screenshots_unread",
                             "Screenshots sent before the screen-text reads of their frame were "
                             "done: a secret shown just before went uncovered", ["tenant"])
RECALLS = Counter("sightline_recalls",
                  "Questions' lookups (knowledge, memory, screen timeline) by outcome: done, "
                  "timeout or failed (answered without them), off (no lookup)",
                  ["tenant", "outcome"])
RECALL_WAIT = Histogram("sightline_recall_seconds",
                        "What a question waited for its lookup before the model was asked",
                        ["tenant"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
SESSIONS_WITHOUT_DATABASE = Counter(
    "sightline_sessions_without_database",
    "Sessions opened while Postgres did not answer: no recall; their rows wait on disk",
    ["tenant"])
SESSIONS_JOINED_DATABASE = Counter(
    "sightline_sessions_joined_database",
    "Sessions opened without Postgres that joined it once it answered: recall from then on",
    ["tenant"])
LIVEKIT_CONNECTION_LOST = Counter(
    "sightline_livekit_connection_lost",
    "Times a session's connection to LiveKit dropped (LiveKit's SDK reconnects by itself)",
    ["tenant"])
REDISPATCHES = Counter(
    "sightline_redispatches",
    "Rooms this worker dispatched the agent to again: lost (its agent left or its session "
    "ended while its user stayed), rejoin (its user left and came back) or unplaced (no "
    "worker had room when the user came)", ["reason"])
SPEECH_FAILURES = Counter(
    "sightline_speech_failures",
    "Speech recognition (stt) or synthesis (tts) requests that failed after their retries",
    ["tenant", "engine", "provider"])
WRITER_QUEUE = Gauge("sightline_writer_queue_rows",
                     "Event rows waiting for Postgres, in memory and spilled, all sessions")
WRITER_SPILLED = Gauge("sightline_writer_spilled_rows",
                       "Event rows spilled to disk while Postgres was unreachable")

_logs: weakref.WeakSet[EventLog] = weakref.WeakSet()
_logs_lock = threading.Lock()


def _writer_sum(attribute: str) -> float:
    with _logs_lock:
        logs = list(_logs)
    return float(sum(getattr(log.writer, attribute) for log in logs if log.writer is not None))


WRITER_QUEUE.set_function(lambda: _writer_sum("pending"))
WRITER_SPILLED.set_function(lambda: _writer_sum("spilled"))


def observe(events: EventLog) -> None:
    """Count this session's events in the process's metrics from now on."""
    with _logs_lock:
        _logs.add(events)
    events.subscribe(record)


def _tier(detail: dict[str, Any]) -> str:
    tier = detail.get("tier")
    return str(tier) if tier is not None else str(detail.get("purpose", "none"))


def record(event: Event) -> None:
    """Fold one event into the metrics (events of other kinds are ignored)."""
    kind, tenant = event["kind"], event["tenant"]
    detail = event.get("detail") or {}
    if kind in ("model_call", "model_error"):
        model, tier = event["model"], _tier(detail)
        MODEL_CALLS.labels(tenant, model, tier, "ok" if kind == "model_call" else "error").inc()
        if event["cost_usd"] is None:
            UNPRICED_CALLS.labels(model).inc()
        else:
            MODEL_COST.labels(tenant, model, tier).inc(event["cost_usd"])
    elif kind == "frame":
        content_type = str(detail.get("content_type"))
        if detail.get("was"):
            FRAMES_KEPT_LATER.labels(tenant, str(detail["was"]), content_type).inc()
        else:
            decision = "kept" if detail.get("kept") else "dropped"
            FRAMES.labels(tenant, decision, str(detail.get("reason")), content_type).inc()
    elif kind == "turn":
        _turn(tenant, detail)
    elif kind == "round_discarded":
        DISCARDED_ROUNDS.labels(tenant).inc()
    elif kind == "budget":
        BUDGET_CROSSINGS.labels(tenant, detail["scope"], str(detail["threshold"])).inc()
    elif kind == "screen_text":
        SCREEN_READS.labels(tenant).inc()
        SCREEN_READS_FOLDED.labels(tenant).inc(detail.get("coalesced", 0))
        SCREEN_READ_WAIT.labels(tenant).observe(detail.get("waited_ms", 0.0) / 1000)
        SCREEN_READS_FORCED.labels(tenant).inc(bool(detail.get("forced")))
        SCREEN_READS_HURRIED.labels(tenant).inc(bool(detail.get("hurried")))
    elif kind == "context":
        outcome = str(detail.get("recall"))
        RECALLS.labels(tenant, outcome).inc()
        SCREENSHOTS_UNREAD.labels(tenant).inc(bool(detail.get("screen_unread")))
        if outcome != "off" and "recall_ms" in detail:
            RECALL_WAIT.labels(tenant).observe(detail["recall_ms"] / 1000)
    elif kind == "no_database":
        SESSIONS_WITHOUT_DATABASE.labels(tenant).inc()
    elif kind == "database_joined":
        SESSIONS_JOINED_DATABASE.labels(tenant).inc()
    elif kind == "livekit_lost":
        LIVEKIT_CONNECTION_LOST.labels(tenant).inc()
    elif kind == "speech_failed":
        SPEECH_FAILURES.labels(tenant, detail["engine"], detail["provider"]).inc()


def _turn(tenant: str, detail: dict[str, Any]) -> None:
    reason = str(detail.get("reason", ""))
    if reason.startswith("agent_initiated"):
        return
    if detail.get("interrupted"):
        INTERRUPTIONS.labels(tenant).inc()
    if detail.get("first_token_ms") is not None:
        FIRST_TOKEN.labels(tenant).observe(detail["first_token_ms"] / 1000)
    if detail.get("latency_ms") is not None:
        TURN_LATENCY.labels(tenant).observe(detail["latency_ms"] / 1000)
    if len(detail.get("tried", [])) > 1:
        ESCALATIONS.labels(tenant).inc()
    if reason.startswith("tool_result"):
        return  # the same user turn: its question was counted
    if reason.startswith(("question_repeated", "answer_did_not_help")):
        RETRIES.labels(tenant).inc()
    answered = detail.get("answered_tier")
    TURNS.labels(tenant, "none" if answered is None else str(answered)).inc()


def configure_tracing(otlp_endpoint: str | None, service: str = "sightline") -> bool:
    """Give livekit-agents' tracer an OTLP exporter (HTTP/protobuf) when an endpoint is set;
    True when tracing is on."""
    if not otlp_endpoint:
        return False
    from livekit.agents.telemetry import set_tracer_provider
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    endpoint = otlp_endpoint.rstrip("/")
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
        endpoint=endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces")))
    # Sightline's spans carry no conversation text; LiveKit's own follow its PII setting
    set_tracer_provider(provider, allow_pii=False)
    return True
