"""Words on their way to storage: their secrets hidden on a thread, handed on in the order said.

A session's messages and the exchanges the memory keeper analyses reach disk before Postgres
whenever Postgres is away (the conversation's and the keeper's spill files, the deferred
exchanges) and the memory model and its backlog whenever it is there. Hiding their secrets
where each is written would leave the others holding the value, so the session hides them once,
before any of these: `put` takes the texts of one message (or of one exchange) and a callback,
and the callback gets them with each secret's value replaced (memory/secret_text.py), in the
order `put` was called. Scanning takes about 0.1 ms a line, but a pasted page is hundreds of
lines, and a line crafted for the patterns' worst case takes seconds: it runs on a thread, never
on the event loop.

The queue is not bounded: it holds what the user and the model say, at the pace they say it, and
none of it may be dropped. `drained` is what a replay waits on between turns, and `aclose` what
a session's close waits on, before the conversation and the keeper flush what they were handed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from .secret_text import hide_in_texts

log = logging.getLogger("sightline.memory")

Then = Callable[[list[str]], None]


class HidingQueue:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[Sequence[str], Then]] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="hiding-secrets")
        self.failed = 0  # texts handed on as they were: the scan raised (said in one line each)

    def put(self, texts: Sequence[str], then: Then) -> None:
        """Hide the secrets in `texts` off the loop, then call `then` with them, on the loop,
        after every callback `put` before it; returns at once."""
        self._queue.put_nowait((texts, then))

    async def _run(self) -> None:
        while True:
            texts, then = await self._queue.get()
            try:
                try:
                    hidden = await asyncio.to_thread(hide_in_texts, texts)
                except Exception as exc:  # a bug in a pattern must not lose the message
                    self.failed += len(texts)
                    log.error("hiding secrets failed (%r): stored as said", exc)
                    hidden = list(texts)
                then(hidden)
            except Exception as exc:  # one callback's failure must not stop the ones after it
                log.error("storing what was said failed: %r", exc)
            finally:
                self._queue.task_done()

    async def drained(self) -> None:
        """Everything `put` so far is handed on."""
        await self._queue.join()

    async def aclose(self) -> None:
        """Hand on everything `put` so far, then stop."""
        try:
            await self.drained()
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
