"""What embedding spilled rows costs, billed to the tenant whose rows they are.

A session whose database was down leaves its messages, memory and screen events in spill files;
whoever imports them later (the next session, a `sightline memory` command, a worker on its way
out: memory/spill_recovery.py) embeds them then. With Gemini's embeddings that is a billed call
of the spilled session's tenant, not of the session or command that happens to import them, so
it goes into that tenant's command ledger as `spill import` (agent/command_ledger.py: in
`cost_events` with no session, counted by `usage`, the report and the tenant's daily budget).
The import runs inside `billing_spills`; the importer's embedder reports each call to
`billed_as_spill` first, which takes those made while spilled rows were being written
(`IMPORTING_FOR`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextvars import ContextVar

from memory.embeddings import EmbeddingCall
from memory.spill_recovery import IMPORTING_FOR
from memory.store import Store

from .command_ledger import CommandLedger
from .config import Settings
from .metering import CostMeter

COMMAND = "spill import"


class _SpillLedgers:
    """One command ledger for each tenant whose spilled rows an import embedded."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._ledgers: dict[str, tuple[CommandLedger, CostMeter]] = {}

    def record(self, tenant: str, call: EmbeddingCall) -> None:
        if tenant not in self._ledgers:
            self._ledgers[tenant] = CommandLedger.metered(self._settings, tenant, COMMAND)
        self._ledgers[tenant][1].embedding_call(call)

    async def save(self, store: Store) -> None:
        for ledger, _ in self._ledgers.values():
            await ledger.save(store)  # a failure is one line; the events stay on disk


_IMPORT: ContextVar[_SpillLedgers | None] = ContextVar("spill_ledgers", default=None)


@contextlib.asynccontextmanager
async def billing_spills(settings: Settings, store: Store) -> AsyncIterator[None]:
    """Around an import of spill files: the embeddings of their rows are billed to their
    tenants (`billed_as_spill`), and saved to `store` when it ends, however it ends."""
    ledgers = _SpillLedgers(settings)
    token = _IMPORT.set(ledgers)
    try:
        yield
    finally:
        _IMPORT.reset(token)
        await ledgers.save(store)


def billed_as_spill(call: EmbeddingCall) -> bool:
    """Whether `call` embedded spilled rows within `billing_spills`: then it is recorded in
    their tenant's ledger, and the caller records it nowhere else."""
    ledgers, tenant = _IMPORT.get(), IMPORTING_FOR.get()
    if ledgers is None or tenant is None:
        return False
    ledgers.record(tenant, call)
    return True


def record_spilled(call: EmbeddingCall) -> None:
    """The `record` of an embedder that embeds spilled rows alone (a stopping worker's): each
    call billed to their tenant."""
    billed_as_spill(call)
