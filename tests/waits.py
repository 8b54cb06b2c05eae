"""Waiting for what arrives in its own time (a room's messages, a writer's retries), failing
with a message that says what never came."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def eventually(check: Callable[[], bool], what: object, timeout_s: float = 15.0,
                     poll_s: float = 0.05) -> None:
    """Waits until `check()` holds; fails saying `what` after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(poll_s)
