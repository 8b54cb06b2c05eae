"""Write rows to Postgres off the reply path, and lose none of them when the database is down.

Callers `put()` without waiting. A background task writes batches; a failed batch stays queued
and is retried with backoff. On `close()` whatever still cannot be written is appended to a JSONL
spill file and reported, so a database outage costs latency for nobody and records for nobody.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("sightline.db")

Row = dict[str, Any]


class BackgroundWriter:
    def __init__(
        self,
        name: str,
        write_batch: Callable[[list[Row]], Awaitable[None]],
        spill_path: Path,
        *,
        max_batch: int = 200,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._name = name
        self._write_batch = write_batch
        self._spill_path = spill_path
        self._max_batch = max_batch
        self._max_backoff_s = max_backoff_s
        self._pending: list[Row] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._failing_since: str | None = None
        self.written = 0
        self._task = asyncio.create_task(self._run(), name=f"writer:{name}")

    def put(self, row: Row) -> None:
        self._pending.append(row)
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def _flush_once(self) -> bool:
        batch = self._pending[: self._max_batch]
        try:
            await self._write_batch(batch)
        except Exception as exc:
            if self._failing_since is None:
                self._failing_since = repr(exc)
                log.error("%s: database write failed, keeping %d rows queued: %r",
                          self._name, len(self._pending), exc)
            return False
        del self._pending[: len(batch)]
        self.written += len(batch)
        if self._failing_since is not None:
            log.info("%s: database writes recovered", self._name)
            self._failing_since = None
        return True

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                if await self._flush_once():
                    backoff = 0.2
                    continue
                if self._closing:
                    return
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=backoff)
                except TimeoutError:
                    pass
                self._wake.clear()
                backoff = min(backoff * 2, self._max_backoff_s)
            if self._closing:
                return

    async def close(self, timeout_s: float = 10.0) -> int:
        """Flush what can be flushed; spill the rest. Returns the number of rows spilled."""
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(self._task, timeout=timeout_s)
        except TimeoutError:
            self._task.cancel()
        if self._pending:
            await self._flush_once()
        if not self._pending:
            return 0
        spilled = len(self._pending)
        self._spill_path.parent.mkdir(parents=True, exist_ok=True)
        with self._spill_path.open("a") as fh:
            for row in self._pending:
                fh.write(json.dumps(row, default=str) + "\n")
        log.error("%s: database unreachable, %d rows kept in %s", self._name, spilled,
                  self._spill_path)
        self._pending.clear()
        return spilled
