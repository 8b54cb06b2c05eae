"""Alerts: quality signals past their thresholds and budget crossings, to the log and to
`SIGHTLINE_ALERT_WEBHOOK` (a JSON POST, retried with backoff).

Two paths, one payload. `sightline alerts check` (cron) evaluates a tenant's quality window and
delivers what crossed, once per window: the `alerts` table (migration 0010) is the de-duplication
across runs and hosts. A session's budget crossings (`budget` events) go to the process's
`AlertSink`: a bounded queue drained by its own thread, so a session never waits on a webhook;
what does not fit is dropped and counted, and each alert is sent once per session (a session
budget) or once per UTC day and process (a tenant budget).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from .event_log import Event

log = logging.getLogger("sightline.alerts")

WARNING, CRITICAL = "warning", "critical"


def _at(quality: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = quality
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if value is not None else None


@dataclass(frozen=True)
class Rule:
    """A quality signal's limit: `metric` (a key path in `window_quality`'s result) is bad
    above `warning` (or below, when `below`), critical past `critical`. `sample`: the counts
    behind a rate (key paths), of which one must reach `evaluate`'s `min_turns` for the rate to
    be judged; none for a count of failures, which needs no sample."""

    name: str
    metric: tuple[str, ...]
    warning: float
    critical: float | None = None
    below: bool = False
    what: str = ""
    sample: tuple[tuple[str, ...], ...] = (("turns",),)

    def value(self, quality: dict[str, Any]) -> float | None:
        return _at(quality, self.metric)

    def judged(self, quality: dict[str, Any], min_turns: int) -> bool:
        return not self.sample or any((_at(quality, path) or 0) >= min_turns
                                      for path in self.sample)

    def severity(self, value: float) -> str | None:
        def past(limit: float) -> bool:
            return value < limit if self.below else value > limit
        if self.critical is not None and past(self.critical):
            return CRITICAL
        return WARNING if past(self.warning) else None


# the product plan's defaults (README: Ops insight, Alerts)
RULES = (
    Rule("retry_rate", ("retry_rate",), 0.20, 0.30, what="retry rate"),
    Rule("first_token_p95", ("first_token_ms", "p95"), 1000.0, what="first words p95 (ms)"),
    Rule("first_token_p99", ("first_token_ms", "p99"), 3000.0, what="first words p99 (ms)"),
    Rule("escalation_rate", ("escalation_rate",), 0.30, what="escalation rate"),
    Rule("mean_confidence", ("mean_confidence",), 0.60, below=True,
         what="mean stated confidence"),
    # sessions that ended before their first turn (an outage) count without turns
    Rule("completion_rate", ("sessions", "completion_rate"), 0.75, below=True,
         what="session completion", sample=(("turns",), ("sessions", "ended"))),
    # beyond the plan: a speech provider down (the sessions went on in the chat), which leaves
    # fewer turns to count: any session it failed is an alert
    Rule("speech_recognition_failing", ("speech_failures", "stt", "sessions"), 0.0,
         what="sessions with failed speech recognition", sample=()),
    Rule("speech_synthesis_failing", ("speech_failures", "tts", "sessions"), 0.0,
         what="sessions with failed speech synthesis", sample=()),
)


def evaluate(quality: dict[str, Any], min_turns: int = 5) -> list[dict[str, Any]]:
    """The alerts a tenant's window raises. A rate over fewer than `min_turns` turns (or, for
    session completion, ended sessions) is not judged: two turns of which one was retried is not
    a 50% retry rate worth waking anyone. A speech provider's failures are judged however few
    turns there were: its outage is what cut them."""
    alerts = []
    for rule in RULES:
        value = rule.value(quality) if rule.judged(quality, min_turns) else None
        severity = rule.severity(value) if value is not None else None
        if severity is None:
            continue
        limit = rule.critical if severity == CRITICAL and rule.critical is not None \
            else rule.warning
        alerts.append({
            "alert": rule.name, "severity": severity, "source": "quality",
            "tenant": quality["tenant"], "value": value, "threshold": limit,
            "window": {"since": quality["since"], "until": quality["until"],
                       "turns": quality["turns"]},
            "message": f"{quality['tenant']}: {rule.what} {value:g} "
                       f"{'<' if rule.below else '>'} {limit:g} over {quality['turns']} turns",
        })
    return alerts


def budget_alert(event: Event) -> dict[str, Any]:
    """A `budget` event as an alert: 100% used is critical (the cascade is capped)."""
    d = event["detail"]
    percent = round(d["threshold"] * 100)
    return {
        "alert": f"budget_{d['scope']}_{percent}", "source": "budget",
        "severity": CRITICAL if d["threshold"] >= 1.0 else WARNING,
        "tenant": event["tenant"], "session_id": event["session_id"],
        "value": d["spent_usd"], "threshold": round(d["budget_usd"] * d["threshold"], 8),
        "message": f"{event['tenant']}: {d['scope']} budget {percent}% used "
                   f"(${d['spent_usd']:.6f} of ${d['budget_usd']:g})",
    }


def log_alert(alert: dict[str, Any]) -> None:
    log.log(logging.ERROR if alert["severity"] == CRITICAL else logging.WARNING,
            "alert %s (%s): %s", alert["alert"], alert["severity"], alert["message"])


async def deliver(
    http: aiohttp.ClientSession, url: str, alert: dict[str, Any], *, attempts: int = 4,
    backoff_s: float = 0.5, timeout_s: float = 5.0,
) -> bool:
    """POST the alert as JSON; on a connection error, a timeout or a non-2xx status, try again
    after `backoff_s`, doubling, up to `attempts` tries. True when the receiver took it."""
    problem = ""
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            async with http.post(url, json=alert,
                                 timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                if 200 <= response.status < 300:
                    return True
                problem = f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            problem = type(exc).__name__
    # the URL may hold a token (chat webhooks do): it is never logged
    log.warning("alert %s not delivered to the webhook after %d attempts (%s)",
                alert["alert"], attempts, problem)
    return False


class AlertSink:
    """A process's budget alerts on their way to the webhook, off every session's loop: sessions
    run on many threads and loops, so the sink has its own thread and loop, fed through a
    bounded thread-safe queue. `notify` never blocks."""

    def __init__(
        self, url: str | None, *, capacity: int = 256, attempts: int = 4,
        backoff_s: float = 0.5,
    ) -> None:
        self.url = url
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(capacity)
        self._attempts, self._backoff_s = attempts, backoff_s
        self._seen: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()
        self.delivered = self.failed = self.dropped = 0
        self._thread: threading.Thread | None = None

    def on_event(self, event: Event) -> None:
        """An event-log listener: a budget crossing becomes an alert."""
        if event["kind"] == "budget":
            self.notify(budget_alert(event))

    def notify(self, alert: dict[str, Any]) -> None:
        """Log the alert and queue it for the webhook, once per its de-duplication key."""
        day = datetime.now(UTC).date().isoformat()
        key = (alert["tenant"], alert["alert"],
               alert.get("session_id", day) if "session" in alert["alert"] else day)
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
        log_alert(alert)
        if self.url is None:
            return
        self._start()
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            with self._lock:
                self.dropped += 1
            log.warning("alert %s dropped: %d alerts already wait for the webhook",
                        alert["alert"], self._queue.maxsize)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=lambda: asyncio.run(self._drain()),
                                                name="sightline-alerts", daemon=True)
                self._thread.start()

    async def _drain(self) -> None:
        assert self.url is not None
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as http:
            while (alert := await loop.run_in_executor(None, self._queue.get)) is not None:
                ok = await deliver(http, self.url, alert, attempts=self._attempts,
                                   backoff_s=self._backoff_s)
                with self._lock:
                    if ok:
                        self.delivered += 1
                    else:
                        self.failed += 1

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is queued (within `timeout_s`), then stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None  # a later alert starts a new one
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout_s)


_sinks: dict[str | None, AlertSink] = {}
_sinks_lock = threading.Lock()


def process_sink(url: str | None) -> AlertSink:
    """The process's sink for `url`: one queue and thread however many sessions it hosts."""
    with _sinks_lock:
        if url not in _sinks:
            _sinks[url] = AlertSink(url)
        return _sinks[url]


def close_sinks(timeout_s: float = 10.0) -> None:
    """Send what the process's sinks hold (within `timeout_s` each), at the worker's exit."""
    with _sinks_lock:
        sinks = list(_sinks.values())
    for sink in sinks:
        sink.close(timeout_s)
