"""Watches for the database a session opened without, and hands it over once it answers.

A session opened while Postgres did not answer (a restart, a managed database failing over)
would otherwise go without knowledge, memory and earlier screens for the whole call, however
soon the database came back. The watch asks it again about every `every_s` seconds, quietly,
and calls `join` with it once it answers; a join that fails (the database gone again before it
finished) is said in one line and tried again at the next answer. A session that joined
imports its own rows at its close (agent/session.py), so the watch takes a last look when it
is closed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from memory.db import Database, error_reason

log = logging.getLogger("sightline.session")


class DatabaseWatch:
    def __init__(self, db: Database, join: Callable[[Database, float], Awaitable[None]], *,
                 every_s: float) -> None:
        self._db, self._join, self._every_s = db, join, every_s
        self._since = time.monotonic()
        self._joined = False
        self._task = asyncio.create_task(self._watch(), name="database-watch")

    async def _watch(self) -> None:
        while not self._joined:
            # spread: a worker's sessions that all opened in one outage do not all ask (and
            # then join, each with its reads and its spill import) in the same moment
            await asyncio.sleep(self._every_s * random.uniform(0.75, 1.25))
            if await self._db.answers(quiet=True):
                await self._try_join()

    async def _try_join(self) -> None:
        try:
            await self._join(self._db, time.monotonic() - self._since)
        except Exception as exc:  # gone again mid-way: the next answer tries again
            log.error("the database answered, but joining it failed (%s): trying again "
                      "in %.0f s", error_reason(exc), self._every_s)
        else:
            self._joined = True

    async def aclose(self) -> None:
        """Stop watching (a join under way is cancelled: it closes what it made). A session
        that has not joined the database takes one last look, and joins it if it answers
        now: its own rows can then be imported as it closes."""
        self._task.cancel()
        await asyncio.wait({self._task})
        if not self._joined and await self._db.answers(quiet=True):
            await self._try_join()
