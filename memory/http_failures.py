"""Whether a model or embedding request went out to its provider, which bills a prompt it
received, answered or not. One rule for the chat providers (agent/providers.py), the cascade's
own deadline (agent/cascade.py) and Gemini embeddings (memory/embeddings.py).

The failure a call ends with cannot say: the SDKs retry a connection that failed (anthropic a
connect error or a timeout, google-genai's tenacity a server that hung up), so a first attempt
that delivered the whole request and lost its answer ends, after a refused retry, in a
"connection refused"; and a call the cascade's deadline or the user's cancel stopped says
nothing of where it was. Each call is watched instead (`RequestWatch`): the HTTP clients the
SDKs send with report each request as it is handed to a connection, to the watch active where
it was made. Anthropic's httpx2 client reports through httpcore's `trace` extension
(`watch_httpx2_request`, an event hook), google-genai's aiohttp session through a `TraceConfig`
(`GenaiClient`: google-genai 3.4.0 sends with aiohttp when it is installed, falling back to
httpx2, and its own session takes no trace). A call whose connection was refused, failed DNS or
TLS, or was still connecting when its time ran out or it was cancelled, sent nothing.

Imported where a provider's SDK is: memory/embeddings.py imports it with google-genai, and a
command that never calls a provider pays for neither.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx2
from google import genai
from google.genai import types as genai_types

if TYPE_CHECKING:
    from google.genai.client import AsyncClient


class RequestWatch:
    """One call's requests: `sent` once any of its attempts handed its request to a
    connection, so the provider may have it (and bill it), whatever the call ended with."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = False

    @contextmanager
    def active(self) -> Iterator[None]:
        """Requests made in this block, the SDK's retries included, are this call's. Entered
        and left within one step of a coroutine, never across a generator's `yield`: the watch
        is a ContextVar of the task making the request, and concurrent calls never mix."""
        token = _ACTIVE.set(self)
        try:
            yield
        finally:
            _ACTIVE.reset(token)

    async def _httpcore_event(self, name: str, info: dict[str, Any]) -> None:
        # httpcore's trace: "http11.send_request_body.complete" (or http2's) once it has
        # written the whole request
        if name.endswith(".send_request_body.complete"):
            self.sent = True


_ACTIVE: ContextVar[RequestWatch | None] = ContextVar("sightline_request_watch", default=None)


async def watch_httpx2_request(request: httpx2.Request) -> None:
    """httpx2 `request` event hook (anthropic's client): a request made under a watch reports
    its writes to it. Each retry sends a request of its own, through here again."""
    watch = _ACTIVE.get()
    if watch is not None:
        request.extensions["trace"] = watch._httpcore_event


async def _body_handed_over(session: aiohttp.ClientSession, context: Any,
                            params: aiohttp.TraceRequestChunkSentParams) -> None:
    # run by the task writing the body, which holds a copy of the requesting task's context
    watch = _ACTIVE.get()
    if watch is not None:
        watch.sent = True


def _aiohttp_trace() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(_body_handed_over)
    trace.freeze()
    return trace


_SENDS = _aiohttp_trace()
# what google-genai reads its aiohttp answers with (3.4.0's READ_BUFFER_SIZE): a streamed
# chunk or an embedding batch's answer can be larger than aiohttp's 64 KiB default
_READ_BUFFER = 2**22


class GenaiClient:
    """A google-genai client that sends through an aiohttp session of its own, made as
    google-genai makes its own (no limit on connections, proxies from the environment) but
    traced into the active `RequestWatch`. aiohttp binds a session to the event loop it is made
    in: made at once where a loop runs (a session opening, so its first turn does not pay the
    ~0.8 ms of a client), else where it is first used. `aclose` closes both."""

    def __init__(self, api_key: str, options: genai_types.HttpOptions) -> None:
        self._api_key, self._options = api_key, options
        self._made: tuple[genai.Client, aiohttp.ClientSession] | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._make()

    def _make(self) -> tuple[genai.Client, aiohttp.ClientSession]:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), trust_env=True, read_bufsize=_READ_BUFFER,
            trace_configs=[_SENDS])
        client = genai.Client(api_key=self._api_key, http_options=self._options.model_copy(
            update={"aiohttp_client": session}))
        self._made = (client, session)
        return self._made

    @property
    def aio(self) -> AsyncClient:
        return (self._made or self._make())[0].aio

    async def aclose(self) -> None:
        if self._made is not None:
            client, session = self._made
            await client.aio.aclose()
            await session.close()
