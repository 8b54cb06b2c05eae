"""Whether a model or embedding request may be billed by its provider, which bills a prompt it
received and ran, answered or not. One rule for the chat providers (agent/providers.py), the
cascade's own deadline (agent/cascade.py), the off-path tier calls (agent/tier_call.py) and
Gemini embeddings (memory/embeddings.py).

The failure a call ends with cannot say: the SDKs retry (anthropic a connect error, a timeout or
a 5xx, google-genai's tenacity a server that hung up or a 5xx), so a first attempt that
delivered the whole request and lost its answer ends, after a refused retry, in a "connection
refused", or after a retry answered 500 in an HTTP 500; and a call the cascade's deadline or
the user's cancel stopped says nothing of where it was. Each call is watched instead
(`RequestWatch`), attempt by attempt: the HTTP clients the SDKs send with report each request
as it is handed to a connection, and the status it was answered with, to the watch active where
it was made. Anthropic's httpx2 client reports through httpcore's `trace` extension and its
response hook (`WATCHED_HTTPX2_HOOKS`), google-genai's aiohttp session through a `TraceConfig`
(`AIOHTTP_TRACE`, which memory/genai_client.py's `GenaiClient` sends with). An attempt whose
connection was refused, failed DNS or TLS, or was still connecting when its time ran out or it
was cancelled, sent nothing; one answered with an HTTP error status was not run, and a call
whose every attempt that went out was answered so is told by that status, not as unreached.

Imported where a provider's SDK is: with agent/providers.py and memory/genai_client.py, so a
command that never calls a provider pays for neither.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import SimpleNamespace
from typing import Any

import aiohttp
import httpx2


class _Attempt:
    """One attempt of a call: one request the SDK made. `sent` once its whole request was
    handed to a connection; `refused` once it was answered without being run (an HTTP error
    status, or, as the SDK's error says, an error or a page in place of the provider's answer),
    with `status` the error's HTTP status when it has one; `ran` once the provider's answer
    began (a refusal after that is none: the model ran the request). It is httpcore's `trace`
    extension for its own request."""

    __slots__ = ("ran", "refused", "sent", "status")

    def __init__(self) -> None:
        self.sent = False
        self.ran = False
        self.refused = False
        self.status: int | None = None

    async def __call__(self, name: str, info: dict[str, Any]) -> None:
        # httpcore's trace: "http11.send_request_body.complete" (or http2's) once it has
        # written the whole request
        if name.endswith(".send_request_body.complete"):
            self.sent = True

    def answered(self, status: int) -> None:
        if status >= 400:
            self.refuse(status)

    def refuse(self, status: int | None) -> None:
        if self.ran:
            return
        self.refused = True
        if status is not None:  # an SDK's error with no status of its own keeps the response's
            self.status = status


class RequestWatch:
    """One call's attempts, the SDK's retries included. The provider may bill the call
    (`billed`) when any attempt went out and was not refused, whatever the call ended with: a
    later attempt answered 5xx, refused, or cut off while it still connected hides nothing an
    earlier one cost. What the user is told of a call that ended without an answer is `sent`
    and `refusal`: a model that answered every attempt with an error status was reached."""

    __slots__ = ("_attempts",)

    def __init__(self) -> None:
        self._attempts: list[_Attempt] = []

    @property
    def sent(self) -> bool:
        """Whether any attempt went out, refused or not: the provider had the request."""
        return any(attempt.sent for attempt in self._attempts)

    @property
    def billed(self) -> bool:
        return any(attempt.sent and not attempt.refused for attempt in self._attempts)

    @property
    def refusal(self) -> int | None:
        """The HTTP status the latest attempt that went out was refused with, when every one
        that went out was refused with a status: the provider's own answer, though the call
        ended otherwise (its time ran out during the SDK's back-off, a retry was refused)."""
        went_out = [attempt for attempt in self._attempts if attempt.sent]
        if went_out and all(attempt.status is not None for attempt in went_out):
            return went_out[-1].status
        return None

    def began(self) -> None:
        """The latest attempt's answer began (Gemini's first chunk, Claude's `message_start`):
        the model ran it, and an error after that (an overload mid-answer, a stream cut off)
        refuses nothing: the attempt stays billed."""
        if self._attempts:
            self._attempts[-1].ran = True

    def refused(self, status: int | None = None) -> None:
        """The call's error says its latest attempt was not run, unless its answer `began`:
        an error in place of the answer (google-genai's for an error status or an error in a
        200 stream, Anthropic's `error` event before its message), with the HTTP status it
        stands for, or something that is not the provider's answer (a proxy's page, a stream
        cut off mid-object)."""
        if self._attempts:
            self._attempts[-1].refuse(status)

    def _attempt(self) -> _Attempt:
        attempt = _Attempt()
        self._attempts.append(attempt)
        return attempt

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


_ACTIVE: ContextVar[RequestWatch | None] = ContextVar("sightline_request_watch", default=None)


async def _httpx2_request(request: httpx2.Request) -> None:
    # each retry sends a request of its own, through here again
    watch = _ACTIVE.get()
    if watch is not None:
        request.extensions["trace"] = watch._attempt()


async def _httpx2_response(response: httpx2.Response) -> None:
    attempt = response.request.extensions.get("trace")
    if isinstance(attempt, _Attempt):
        attempt.answered(response.status_code)


# httpx2's `event_hooks` (anthropic's client): a request made under a watch is an attempt of it
WATCHED_HTTPX2_HOOKS: dict[str, list[Callable[[Any], Awaitable[None]]]] = {
    "request": [_httpx2_request], "response": [_httpx2_response]}


async def _request_started(session: aiohttp.ClientSession, context: SimpleNamespace,
                           params: aiohttp.TraceRequestStartParams) -> None:
    # run by the requesting task; `context` is this request's alone (a retry makes its own)
    watch = _ACTIVE.get()
    context.attempt = watch._attempt() if watch is not None else None


async def _body_handed_over(session: aiohttp.ClientSession, context: SimpleNamespace,
                            params: aiohttp.TraceRequestChunkSentParams) -> None:
    if context.attempt is not None:
        context.attempt.sent = True


async def _answered(session: aiohttp.ClientSession, context: SimpleNamespace,
                    params: aiohttp.TraceRequestEndParams) -> None:
    if context.attempt is not None:
        context.attempt.answered(params.response.status)


def _aiohttp_trace() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(_request_started)
    trace.on_request_chunk_sent.append(_body_handed_over)
    trace.on_request_end.append(_answered)
    trace.freeze()
    return trace


# what an aiohttp session sends with so its requests under a watch are attempts of it
AIOHTTP_TRACE = _aiohttp_trace()
