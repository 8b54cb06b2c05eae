"""The session's event log: what happened, in order, recorded the moment it happened.

Each event (a model call, a cascade turn, a frame decision, what a turn's context held, a budget
crossing) is numbered, appended to `<costs_dir>/<session_id>.jsonl` at once (the durable copy)
and queued for the `cost_events` table. Listeners see each event as it is recorded: the running
totals, the budget guard and replay's report are built from events, never from the log's state
or from text. `close()` appends the session summary as the file's last line and stores it on the
session row, so ops read the same numbers from either place.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from memory.spill_files import SpillKind, event_log_path, spill_path
from memory.store import Store
from memory.writer import BackgroundWriter

from .config import ConfigError

log = logging.getLogger("sightline.costs")

Event = dict[str, Any]
Listener = Callable[[Event], None]


class Recorder(Protocol):
    """Where priced calls are recorded: a session's `EventLog`, or a command's ledger."""

    def record(self, kind: str, *, cost_usd: float | None = 0.0, **fields: Any) -> Event: ...


# a session records a frame decision a second: its events reach Postgres in batches a second
# apart (the JSONL file, written at once, is the durable copy); an event with a cost (or one
# that could not be priced) is written at once, with those queued before it, so that a worker
# killed mid-session takes no cost record along that its turn had made
EVENT_LINGER_S = 1.0


def check_log_dir(directory: Path) -> None:
    """Make sure cost logs can be written to `directory`, before a session is opened: a session
    must not start (and stay open in Postgres) when its cost log cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"SIGHTLINE_COST_LOG_DIR: cannot create {directory} "
                          f"({exc.strerror or exc}); point it at a writable directory") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"SIGHTLINE_COST_LOG_DIR: {directory} is not writable; point it at a "
                          "writable directory")


class EventLog:
    def __init__(
        self, *, session_id: str, tenant: str, costs_dir: Path, store: Store | None,
    ) -> None:
        self.session_id = session_id
        self.tenant = tenant
        self.path = event_log_path(costs_dir, session_id)
        check_log_dir(costs_dir)
        self._file = self.path.open("a", buffering=1)
        self.file_error: str | None = None  # why the file stopped taking events (disk full)
        self._store = store
        self._writer = (
            BackgroundWriter("cost_events", store.add_cost_events,
                             spill_path(costs_dir, session_id, SpillKind.COST_EVENTS),
                             linger_s=EVENT_LINGER_S)
            if store is not None
            else None
        )
        self._listeners: list[Listener] = []
        self._seq = 0
        self._closing = False  # from the summary on, nothing more is recorded
        self.closed = False

    @property
    def writer(self) -> BackgroundWriter | None:
        """The Postgres writer (None without a database): its queue depth is a metric."""
        return self._writer

    def subscribe(self, listener: Listener) -> None:
        """Call `listener` with every event recorded from now on, in order."""
        self._listeners.append(listener)

    def _append(self, kind: str, fields: dict[str, Any]) -> Event:
        """Number the next event and append it to the JSONL file."""
        self._seq += 1
        event = {"session_id": self.session_id, "tenant": self.tenant, "seq": self._seq,
                 "ts": time.time(), "kind": kind, **fields}
        if self.file_error is None:
            try:
                self._file.write(json.dumps(event) + "\n")
            except OSError as exc:
                # a full or failing disk: the session goes on, its events still reach
                # Postgres; the file stops here rather than go on after a torn line
                self.file_error = f"{exc.strerror or exc} (from event {self._seq} on)"
                log.error("cost log %s cannot be written: %s; the session goes on, its events "
                          "go to the database only", self.path, self.file_error)
        return event

    def record(self, kind: str, *, cost_usd: float | None = 0.0, **fields: Any) -> Event:
        """Record one event; `cost_usd` is None when it could not be priced. Once the log is
        closing (its summary is its last line), an event is said in one line and dropped: the
        caller's work (a late call's result) goes on."""
        if self._closing:
            log.warning("session %s has closed its cost log: a late %s event ($%s) is not "
                        "recorded", self.session_id, kind, cost_usd)
            return {"session_id": self.session_id, "tenant": self.tenant, "kind": kind,
                    **fields, "cost_usd": cost_usd}
        event = self._append(kind, {**fields, "cost_usd": cost_usd})
        if self._writer is not None:
            self._writer.put(event, now=cost_usd != 0.0)  # what costs money goes at once
        for listener in self._listeners:
            listener(event)
        return event

    async def close(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Flush every event, then write `summary` as the file's last line and on the session
        row; returns it with the count of events the database did not take (kept on disk)."""
        self._closing = True
        if self._writer is not None:
            summary = {**summary, "db_spilled_events": await self._writer.close()}
        if self.file_error is not None:
            summary = {**summary, "cost_log_error": self.file_error}
        # the summary goes to the session row below, not to cost_events
        self._append("summary", {"cost_usd": summary["total_cost_usd"], "detail": summary})
        try:
            self._file.close()
        except OSError:  # what the full disk refused to take: said when it refused
            pass
        if self._store is not None:
            try:
                await self._store.end_session(self.session_id, summary["total_cost_usd"], summary)
            except Exception as exc:
                log.error("could not store the summary of %s (it is in %s): %r",
                          self.session_id, self.path, exc)
        self.closed = True
        return summary
