"""A session's record: its event log with the running totals, the meter and the budget guard
that listen to it, opened together and closed together.

Each part has one job (the log records, the meter prices, the totals add up, the guard watches
the spend); this only wires them, so a live session, a replay, a benchmark and a test keep the
same record the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memory.store import Store

from .budget import BudgetGuard
from .event_log import EventLog
from .metering import CostMeter
from .pricing import PriceTable
from .session_summary import SessionTotals


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
    ) -> SessionRecord:
        events = EventLog(session_id=session_id, tenant=tenant, costs_dir=costs_dir, store=store)
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

    async def close(self) -> dict[str, Any]:
        """Flush the log and end it with the summary; returns the summary."""
        return await self.events.close(self.summary())
