"""Sightline's client of LiveKit's server API, whose every call ends.

livekit-api (1.2.2) passes `timeout=None` to aiohttp on each request, which aiohttp reads as no
timeout at all: the `timeout` given to `api.LiveKitAPI`, and its 10 s default, never apply, and
a call to a LiveKit server (or a proxy before it) that takes the connection and never answers
waits until the process is killed: a fleet's watcher of a room stops for good, the console's
page waits for ever. So the client made here sends through an aiohttp session that bounds each
request itself, in a middleware the SDK's arguments cannot override: from the connection to the
last byte of the answer within `TIMEOUT_S`, else `LiveKitTimeout`, a failure to reach LiveKit
like any other (an `aiohttp.ClientError`, a `TimeoutError`).

A call is one request, so the call too ends within `TIMEOUT_S`: the client is built without the
SDK's region failover, which on a LiveKit Cloud host (`*.livekit.cloud`) makes each call up to
3 requests and a lookup of the project's regions, ~33 s for a call LiveKit does not answer.
Every caller here already asks again on its own terms (the fleet's watcher on its backoff, the
console's user, told on its page), and a bound per call, in one place, is what they count on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from livekit import api

TIMEOUT_S = 10.0  # per request: what LiveKitAPI means its own default to be


class LiveKitTimeout(aiohttp.ServerTimeoutError):
    """LiveKit took a request and did not answer it within `after_s`. The request may have
    reached it all the same: a caller that asks again checks for what it asked for first."""

    def __init__(self, origin: str, after_s: float) -> None:
        super().__init__(f"LiveKit at {origin} did not answer within {after_s:g} s")
        self.after_s = after_s


@asynccontextmanager
async def livekit_api(url: str, key: str, secret: str) -> AsyncIterator[api.LiveKitAPI]:
    """An `api.LiveKitAPI` for `url` whose every call, one request, ends within `TIMEOUT_S`
    (its session closed on leaving: the SDK leaves a session it was given open)."""
    timeout_s = TIMEOUT_S

    async def bounded(request: aiohttp.ClientRequest,
                      handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
        try:
            async with asyncio.timeout(timeout_s):
                response = await handler(request)
                try:
                    await response.read()  # the SDK reads the body after this, with no bound
                except BaseException:
                    response.close()
                    raise
        except TimeoutError:
            raise LiveKitTimeout(str(request.url.origin()), timeout_s) from None
        return response

    async with aiohttp.ClientSession(middlewares=(bounded,)) as session:
        yield api.LiveKitAPI(url, key, secret, session=session, failover=False)
