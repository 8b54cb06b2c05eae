"""A session's record: its event log with the running totals, the meter and the budget guard
that listen to it, opened together and closed together.

Each part has one job (the log records, the meter prices, the totals add up, the guard watches
the spend); this only wires them, so a live session, a replay, a benchmark and a test keep the
same record the same way.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memory.store import Store

from .budget import BudgetGuard
from .event_log import Event, EventLog, Listener
from .metering import CostMeter
from .observability import observe
from .pricing import PriceTable
from .session_summary import SessionTotals

# how a session ended: by itself, on an error, on Ctrl-C / cancellation, or closed by ops after
# its process died (`sightline costs ID --close`) or by the worker that replaced it in its room
COMPLETED, FAILED, INTERRUPTED, ABANDONED = "completed", "failed", "interrupted", "abandoned"


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """The outcome and the one-line error a session that ended on `exc` records."""
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
        return INTERRUPTED, "interrupted (Ctrl-C or the process was asked to stop)"
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return FAILED, f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


@dataclass
class SessionRecord:
    events: EventLog
    totals: SessionTotals
    meter: CostMeter
    budget: BudgetGuard | None = None

    @classmethod
    def open(
        cls, *, session_id: str, tenant: str, source: str, costs_dir: Path, prices: PriceTable,
        store: Store | None, budget: BudgetGuard | None = None,
        alerts: Listener | None = None,
    ) -> SessionRecord:
        """`alerts` hears every event from the first (a tenant over budget crosses at open)."""
        events = EventLog(session_id=session_id, tenant=tenant, costs_dir=costs_dir, store=store)
        if alerts is not None:
            events.subscribe(alerts)
        observe(events)
        totals = SessionTotals(session_id=session_id, tenant=tenant, source=source,
                               prices=prices.path, cost_log=events.path)
        events.subscribe(totals.add)
        if budget is not None:
            budget.watch(events)
        return cls(events, totals, CostMeter(events, prices), budget)

    def summary(self) -> dict[str, Any]:
        """The summary as of now (the log stays open)."""
        summary = self.totals.summary()
        if self.budget is not None:
            summary["budget"] = self.budget.summary()
        return summary

    def note_process(self, room: str | None) -> None:
        """Record which process runs the session, and in which room (a `session` event), so
        that closing a session its process left open can tell whether that process still
        lives, and a session's log can be matched to its room's users."""
        self.events.record("session", detail={"host": socket.gethostname(), "pid": os.getpid(),
                                              **({"room": room} if room else {})})

    async def close(self, outcome: str = COMPLETED, error: str | None = None) -> dict[str, Any]:
        """Flush the log and end it with the summary; returns the summary. `outcome` says how
        the session ended (`failed` and `interrupted` ones carry the `error`), so a session
        that went wrong is still closed, and says so in its summary."""
        summary = {**self.summary(), "outcome": outcome, **({"error": error} if error else {})}
        return await self.events.close(summary)


def recompute_summary(
    events: list[Event], *, session_id: str, tenant: str, source: str, prices: Path,
    cost_log: Path,
) -> dict[str, Any]:
    """The summary of a session that never wrote one, folded from its events (every figure
    of a summary is a sum over them)."""
    totals = SessionTotals(session_id=session_id, tenant=tenant, source=source, prices=prices,
                           cost_log=cost_log)
    for event in events:
        if event["kind"] != "summary":
            totals.add(event)
    times = [float(e["ts"]) for e in events]
    return {**totals.summary(),
            "duration_s": round(max(times) - min(times), 2) if times else 0.0}


async def close_abandoned(
    store: Store, session: dict[str, Any], events: list[Event], *, why: str, prices: Path,
    cost_log: Path, recomputed_from: str,
) -> dict[str, Any] | None:
    """Close `session` (`Store.get_session`'s), which its process left open, with the summary
    folded from its `events`: outcome abandoned, `why` as its error. None when it ended by
    itself meanwhile (its own summary is never replaced)."""
    summary = {
        **recompute_summary(events, session_id=session["id"], tenant=session["tenant"],
                            source=session["source"], prices=prices, cost_log=cost_log),
        "outcome": ABANDONED, "error": why, "recomputed_from": recomputed_from,
    }
    if not await store.close_session(session["id"], summary["total_cost_usd"], summary):
        return None
    return summary


def append_summary(path: Path, events: list[Event], summary: dict[str, Any]) -> None:
    """End a cost log its process left open with `summary`, as its closing line."""
    last = events[-1] if events else {"session_id": summary["session_id"],
                                      "tenant": summary["tenant"], "seq": 0}
    line = {"session_id": last["session_id"], "tenant": last["tenant"], "seq": last["seq"] + 1,
            "ts": time.time(), "kind": "summary", "cost_usd": summary["total_cost_usd"],
            "detail": summary}
    with path.open("ab+") as file:  # writes append wherever the file was read
        end = file.seek(0, os.SEEK_END)
        torn = False
        if end:
            file.seek(end - 1)
            torn = file.read(1) != b"\n"  # a killed process's half-written line: end it first
        file.write((b"\n" if torn else b"") + (json.dumps(line) + "\n").encode())
