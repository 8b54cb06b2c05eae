"""One call per key, shared by whoever asks for it while it runs or is kept.

A turn's recall and its live assist ask for the same question's vector and the same knowledge
probe moments apart; a turn's request asks for a screenshot its warm-up is already encoding.
Each such answer is computed once and awaited by all. (`functools.cache` and `async-lru` keep
successes forever or by count only, not by age, and not one call's failure apart from the next.)
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SharedCalls(Generic[K, V]):
    """Calls of one event loop, by key. Up to `size` keys are kept (None: no limit), the least
    recently asked dropped first. A call that fails or is cancelled is dropped as it ends, so
    the next ask calls again; its error reaches whoever waits for it and is retrieved here when
    nobody does (a warm-up's)."""

    def __init__(self, size: int | None = None) -> None:
        self.size = size
        self._calls: OrderedDict[K, tuple[float, asyncio.Future[V]]] = OrderedDict()

    def start(self, key: K, call: Callable[[], Awaitable[V]], *,
              max_age_s: float = math.inf) -> asyncio.Future[V]:
        """The call kept for `key` if it started within `max_age_s`, else `call()` started now."""
        now = time.monotonic()
        held = self._calls.get(key)
        if held is None or now - held[0] > max_age_s:
            future = asyncio.ensure_future(call())
            future.add_done_callback(lambda done: self._settled(key, done))
            held = self._calls[key] = (now, future)
            while self.size is not None and len(self._calls) > self.size:
                self._calls.popitem(last=False)
        self._calls.move_to_end(key)
        return held[1]

    async def __call__(self, key: K, call: Callable[[], Awaitable[V]], *,
                       max_age_s: float = math.inf) -> V:
        """The call's result; shielded, so one waiter cancelled leaves the call to the others."""
        return await asyncio.shield(self.start(key, call, max_age_s=max_age_s))

    def forget(self, key: K) -> None:
        """The next ask for `key` calls again (what it answered has changed)."""
        self._calls.pop(key, None)

    def cancel(self) -> None:
        """Cancel the calls still running (their owner is closing)."""
        for _, future in self._calls.values():
            future.cancel()

    def _settled(self, key: K, done: asyncio.Future[V]) -> None:
        if done.cancelled() or done.exception() is not None:
            held = self._calls.get(key)
            if held is not None and held[1] is done:
                del self._calls[key]
