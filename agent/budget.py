"""Budget guard: per-session and per-tenant spending limits in US dollars.

The guard watches the session's event log: each event with a cost adds to the session's spend
(model calls of every purpose, speech heard and spoken: what the session's total and the
tenant's spend in Postgres add up), and crossing 70%, 90% and 100% of a budget records a
`budget` event (and a log line), once per threshold. At 100% the cascade, which asks the guard
directly, stops climbing above `SIGHTLINE_BUDGET_MAX_TIER`: answers still come, from the cheaper
tiers. A tenant's budget covers its spend since the start of the current UTC day, across
sessions: what the tenant's other sessions and commands spent, as Postgres has it (read when the
session opens or joins the database, and every few seconds while it runs:
agent/tenant_spend.py), plus this session.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .event_log import Event, EventLog

log = logging.getLogger("sightline.budget")

THRESHOLDS = (0.7, 0.9, 1.0)


@dataclass
class BudgetGuard:
    session_budget_usd: float | None
    tenant_budget_usd: float | None
    max_tier_over_budget: int
    tenant_spent_before_usd: float = 0.0
    _crossed: set[tuple[str, float]] = field(default_factory=set)
    exhausted: list[str] = field(default_factory=list)
    session_spent_usd: float = 0.0

    def watch(self, events: EventLog) -> None:
        """Count every cost the session records, and record each threshold crossed (a tenant
        may start the session over its budget already)."""
        def on_event(event: Event) -> None:
            if event["cost_usd"]:
                for crossed in self.spend(event["cost_usd"]):
                    events.record("budget", detail=crossed)

        for crossed in self.spend(0.0):
            events.record("budget", detail=crossed)
        events.subscribe(on_event)

    def _limits(self, session_spent: float) -> list[tuple[str, float, float]]:
        limits = []
        if self.session_budget_usd:
            limits.append(("session", session_spent, self.session_budget_usd))
        if self.tenant_budget_usd:
            limits.append(
                ("tenant", self.tenant_spent_before_usd + session_spent, self.tenant_budget_usd)
            )
        return limits

    def spend(self, cost_usd: float) -> list[dict[str, Any]]:
        """Add a cost to the session's spend; the thresholds it newly crossed, as event details
        (each reported once)."""
        self.session_spent_usd += cost_usd
        events = []
        for scope, spent, budget in self._limits(self.session_spent_usd):
            for threshold in THRESHOLDS:
                if spent >= threshold * budget and (scope, threshold) not in self._crossed:
                    self._crossed.add((scope, threshold))
                    events.append({
                        "scope": scope, "threshold": threshold, "spent_usd": round(spent, 8),
                        "budget_usd": budget,
                    })
                    if threshold >= 1.0:
                        self.exhausted.append(scope)
                    log.warning("%s budget %.0f%% used: $%.6f of $%g", scope,
                                threshold * 100, spent, budget)
        return events

    def tenant_spent_elsewhere(self, usd: float) -> list[dict[str, Any]]:
        """What the tenant's other sessions spent today, learnt late (a session opened
        without the database counted from $0 until it joined it): the thresholds that now
        stand crossed, as `spend` gives them."""
        self.tenant_spent_before_usd = usd
        return self.spend(0.0)

    def tier_cap(self) -> int | None:
        """The highest tier allowed now, or None while every budget has room."""
        return self.max_tier_over_budget if self.exhausted else None

    def summary(self) -> dict[str, Any]:
        return {
            "session_budget_usd": self.session_budget_usd,
            "tenant_budget_usd": self.tenant_budget_usd,
            "tenant_spent_usd": round(self.tenant_spent_before_usd + self.session_spent_usd, 8),
            "thresholds_crossed": sorted(f"{s}:{int(t * 100)}%" for s, t in self._crossed),
            "escalation_capped_at_tier": self.tier_cap(),
        }
