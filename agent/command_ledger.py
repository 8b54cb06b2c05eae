"""The ledger of what a command spent outside any session: `kb ingest` and `kb search` embedding
with Gemini or reranking with Cohere, `gaps refresh` naming gaps with tier 0. Those calls are
billed to the tenant like a session's, so they go into the same `cost_events` table (with no
session: `session_id` is NULL, `detail.command` names the command) where usage, the report and
the tenant's daily budget add them up with the rest.

Each event is appended at once to `<costs_dir>/commands.jsonl` (the durable copy, as a session's
cost log is), numbered within its run (`detail.run`, a UUID, and `seq`: the key a row is stored
once by, migration 0020). When a command ends, whatever way it ends, the whole file goes to
Postgres and is emptied: its own events and those of any run killed before it could save
(SIGKILL, a deadline). If that write fails, one line says so and the file keeps them for the
next command.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from memory.store import Store

from .config import ConfigError, Settings
from .event_log import Event, check_log_dir
from .metering import CostMeter
from .pricing import PriceTable

log = logging.getLogger("sightline.costs")

COMMANDS_LOG = "commands.jsonl"


class CommandLedger:
    """A `Recorder` (agent/event_log.py) for one command run: a `CostMeter` prices calls into
    it as it does into a session's event log."""

    def __init__(self, *, tenant: str, command: str, costs_dir: Path) -> None:
        self.tenant = tenant
        self.command = command
        self.path = costs_dir / COMMANDS_LOG
        self.events: list[Event] = []
        self.run = uuid.uuid4().hex  # with each event's seq, the key it is stored once by
        self.file_error: str | None = None
        try:
            check_log_dir(costs_dir)
        except ConfigError as exc:  # the events still reach the database
            self._file_failed(str(exc))

    @classmethod
    def metered(cls, settings: Settings, tenant: str, command: str,
                ) -> tuple[CommandLedger, CostMeter]:
        """A ledger for `command` run for `tenant`, and the meter that prices calls into it."""
        ledger = cls(tenant=tenant, command=command, costs_dir=settings.costs_dir)
        return ledger, CostMeter(ledger, PriceTable.load(settings.prices_file))

    @property
    def cost_usd(self) -> float:
        """What the command has spent so far (calls that could not be priced count 0)."""
        return round(sum(e["cost_usd"] or 0.0 for e in self.events), 8)

    def record(self, kind: str, *, cost_usd: float | None = 0.0, **fields: Any) -> Event:
        detail = {**fields.pop("detail", {}), "command": self.command, "run": self.run}
        event = {"session_id": None, "tenant": self.tenant, "seq": len(self.events) + 1,
                 "ts": time.time(), "kind": kind, **fields, "detail": detail,
                 "cost_usd": cost_usd}
        self.events.append(event)
        if self.file_error is None:
            try:
                with self.path.open("a") as fh:
                    fcntl.flock(fh, fcntl.LOCK_EX)  # not while another run empties the file
                    fh.write(json.dumps(event) + "\n")
            except OSError as exc:
                self._file_failed(f"{self.path}: {exc.strerror or exc}")
        return event

    def _file_failed(self, why: str) -> None:
        self.file_error = why
        log.error("the command ledger cannot be written (%s): %s's billed calls go to the "
                  "database only", why, self.command)

    @contextlib.asynccontextmanager
    async def saving(self, store: Store) -> AsyncIterator[CommandLedger]:
        """The ledger, saved to `store` when the block ends, whatever way it ends: a command's
        billed calls are recorded though it fails after making them. `save` says its own
        failure in one line and raises nothing, so the block's error is the one that goes up."""
        try:
            yield self
        finally:
            await self.save(store)

    async def save(self, store: Store) -> None:
        """Write the command ledger's file (this run's events, and any a run killed before its
        save left there) to `cost_events`, then empty it; a failure is one line naming where
        the events are."""
        try:
            if self.file_error is None:
                stored = await self._save_file(store)
            else:
                await store.add_command_events(self.events)
                stored = len(self.events)
        except Exception as exc:
            where = (f"they are in {self.path}, for the next command to write"
                     if self.file_error is None else
                     "nor in the command ledger's file: they are lost")
            log.error("could not record %s's %d billed calls ($%.6f) in the database (%s); %s",
                      self.command, len(self.events), self.cost_usd,
                      " ".join(str(exc).split())[:160] or type(exc).__name__, where)
            return
        if stored > len(self.events):
            log.info("recorded %d billed calls of earlier commands stopped before they could "
                     "(from %s)", stored - len(self.events), self.path)

    async def _save_file(self, store: Store) -> int:
        """The file's events into the database, then the file emptied, all under its lock (no
        run appends meanwhile); how many events it held."""
        if not self.events and not self.path.exists():
            return 0
        with self.path.open("a+") as fh:
            await asyncio.to_thread(fcntl.flock, fh, fcntl.LOCK_EX)
            try:
                fh.seek(0)
                events = [e for e in map(_event, fh.read().splitlines()) if e is not None]
                if events:
                    await store.add_command_events(events)
                fh.truncate(0)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return len(events)


def _event(line: str) -> Event | None:
    """A command ledger line as an event; None for a line torn by a killed run."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "seq" in event and "tenant" in event else None
