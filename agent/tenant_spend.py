"""Keeps a session's tenant budget current with what the tenant's other sessions spend.

A session's budget guard (agent/budget.py) knew the tenant's spend today as it was when the
session opened, plus the session's own: two sessions of one tenant running together each saw
the other's spend only once they had ended, so together they could pass the tenant's budget
far before either noticed. The watch reads the tenant's spend today but this session's (other
sessions', and commands' outside any session: agent/command_ledger.py) about every `every_s`
seconds and gives it to the guard, whose thresholds are then crossed as if the spend had been
the session's own. A read that fails is said once and tried again at the next look; the guard
keeps the last figure meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

from memory.db import error_reason
from memory.store import Store

from .budget import BudgetGuard

log = logging.getLogger("sightline.budget")

EVERY_S = 10.0  # how stale the other sessions' spend may be: a turn or two


class TenantSpendWatch:
    def __init__(self, store: Store, *, tenant: str, session_id: str, budget: BudgetGuard,
                 crossed: Callable[[dict[str, Any]], None], every_s: float | None = None,
                 ) -> None:
        self._store, self._tenant, self._session_id = store, tenant, session_id
        self._budget, self._crossed = budget, crossed
        self._every_s = EVERY_S if every_s is None else every_s
        self._failing = False
        self._task = asyncio.create_task(self._watch(), name="tenant-spend-watch")

    async def _watch(self) -> None:
        while True:
            # spread: a tenant's sessions that opened together do not all ask at once
            await asyncio.sleep(self._every_s * random.uniform(0.75, 1.25))
            await self.look()

    async def look(self) -> None:
        """Read the others' spend and give it to the guard; the thresholds it now stands past
        are recorded (`crossed`)."""
        try:
            spent = await self._store.tenant_spent_today(self._tenant, but=self._session_id)
        except Exception as exc:  # the database away for a while: the last figure stands
            if not self._failing:
                log.warning("could not read tenant %s's spend today for session %s's budget: "
                            "%s (tried again every %.0f s)", self._tenant, self._session_id,
                            error_reason(exc), self._every_s)
            self._failing = True
            return
        self._failing = False
        for crossed in self._budget.tenant_spent_elsewhere(spent):
            self._crossed(crossed)

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
