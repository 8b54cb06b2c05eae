"""Budget guard: per-session and per-tenant spending limits in US dollars.

Crossing 70%, 90% and 100% of a budget writes a `budget` event to the cost log (and a log line),
once per threshold. At 100% the cascade stops climbing above `SIGHTLINE_BUDGET_MAX_TIER`: answers
still come, from the cheaper tiers. A tenant's budget covers its spend since the start of the
current UTC day, across sessions: what Postgres had when the session opened plus this session.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

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

    def _limits(self, session_spent: float) -> list[tuple[str, float, float]]:
        limits = []
        if self.session_budget_usd:
            limits.append(("session", session_spent, self.session_budget_usd))
        if self.tenant_budget_usd:
            limits.append(
                ("tenant", self.tenant_spent_before_usd + session_spent, self.tenant_budget_usd)
            )
        return limits

    def observe(self, session_spent: float) -> list[dict[str, Any]]:
        """The thresholds newly crossed by this spend, as event details (each reported once)."""
        events = []
        for scope, spent, budget in self._limits(session_spent):
            for threshold in THRESHOLDS:
                if spent >= threshold * budget and (scope, threshold) not in self._crossed:
                    self._crossed.add((scope, threshold))
                    events.append({
                        "scope": scope, "threshold": threshold, "spent_usd": round(spent, 8),
                        "budget_usd": budget,
                    })
                    if threshold >= 1.0:
                        self.exhausted.append(scope)
                    log.warning("%s budget %.0f%% used: $%.6f of $%.2f", scope,
                                threshold * 100, spent, budget)
        return events

    def tier_cap(self) -> int | None:
        """The highest tier allowed now, or None while every budget has room."""
        return self.max_tier_over_budget if self.exhausted else None

    def summary(self, session_spent: float) -> dict[str, Any]:
        return {
            "session_budget_usd": self.session_budget_usd,
            "tenant_budget_usd": self.tenant_budget_usd,
            "tenant_spent_usd": round(self.tenant_spent_before_usd + session_spent, 8),
            "thresholds_crossed": sorted(f"{s}:{int(t * 100)}%" for s, t in self._crossed),
            "escalation_capped_at_tier": self.tier_cap(),
        }
