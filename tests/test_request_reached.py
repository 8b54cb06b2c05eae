"""Whether a failed model or embedding request reached its provider, as the HTTP client that
sent it says, attempt by attempt, not as the failure the call ended with.

Protects: a call whose first attempt delivered its whole request and lost the answer is billed
its estimate, and the user hears the connection broke off, though the SDK's retry was refused
(it was billed nothing, the model said "could not be reached"), and so is a call or an
embedding whose retries were answered HTTP 500 (billed nothing); a call whose one attempt that
went out was answered HTTP 500, its retry refused, is billed nothing and the model "had an
internal error" (it was billed its estimate, and the connection "broke off"; then "could not be
reached"), and so is a Claude turn answered 529 whose deadline passed in the SDK's back-off,
the model "overloaded" (it "could not be reached"); a 200 stream that begins with the
provider's overload error is billed nothing, Claude's as Gemini's (Claude's was billed its
estimate); a turn cut off while its request still connects (the cascade's own deadline, the
user's cancel) is billed nothing, and past the deadline the model "could not be reached" (it
was billed the prompt, told "took too long"); a Gemini embedding cancelled is in the ledger,
billed once Gemini had it and unbilled while it still connected (it was not recorded at all);
an embedding whose first attempt went out is billed though its retry was refused. Through the
real SDK clients against local sockets.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from test_command_costs import QUESTION, billed, logged
from test_cost_records import (
    CLAUDE,
    GEMINI,
    ask_once,
    assert_billed_the_prompt,
    ledger,
    open_record,
    question,
    settings,
)

from agent.cascade import CascadeLLM
from agent.config import Tier
from agent.event_log import EventLog
from agent.images import ImageEncoder
from agent.metering import CostMeter
from agent.pricing import PriceTable
from agent.providers import make_provider
from agent.tier_call import MeteredTierCall
from agent.wire_format_server import CapturedRequest, ScriptedModelServer, ScriptedReply
from memory.embeddings import EmbeddingError, GeminiEmbedder
from memory.keeper import memory_prompt

IMAGE_TOKENS = {GEMINI.model: 516, CLAUDE.model: 1199}  # the question's screenshot, as sent
_ERROR = (b'{"type": "error", "error": {"type": "api_error", "code": 500, "status": "INTERNAL", '
          b'"message": "Internal error"}}')  # Anthropic's error and Gemini's in one
SERVER_ERROR = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_ERROR), _ERROR))
_OVERLOADED = b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
# Anthropic's overload, to be asked again in 10 s: the SDK waits that long before its retry
OVERLOADED = (b"HTTP/1.1 529 Overloaded\r\nContent-Type: application/json\r\nretry-after: 10\r\n"
              b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
              % (len(_OVERLOADED), _OVERLOADED))


class OneRequest:
    """A local listener that reads one HTTP request whole (`bodies`: each one's length), then
    either stops listening and hangs up (`hang_up`: the SDK's retry is refused), without a word
    or once it wrote `answer`, or holds the connection, never answering. `arrived` is set once
    a request was read."""

    def __init__(self, *, hang_up: bool, answer: bytes = b"") -> None:
        self.hang_up = hang_up
        self.answer = answer
        self.bodies: list[int] = []
        self.arrived = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        self.bodies.append(len(await reader.readexactly(length)))
        self.arrived.set()
        if self.hang_up:
            assert self._server is not None
            self._server.close()
            writer.write(self.answer)
            await writer.drain()
        else:
            await reader.read()  # until the client leaves
        writer.close()

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()


@pytest.fixture
async def handshaking() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """An https URL whose listener takes each connection and never answers its TLS handshake:
    a request there is still connecting when it is cut off. The event is set once a
    connection arrived."""
    arrived = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        arrived.set()
        while await reader.read(65536):  # the client's hello, then nothing until it leaves
            pass
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}", arrived
    finally:
        server.close()


def unbilled(call: dict[str, Any]) -> None:
    assert call["kind"] == "model_error" and call["detail"]["usage"] == "unbilled"
    assert (call["input_tokens"], call["output_tokens"], call["cost_usd"]) == (0, 0, 0.0)


@pytest.mark.parametrize("tier", [GEMINI, CLAUDE], ids=lambda t: t.provider)
async def test_a_call_whose_first_attempt_went_out_is_billed_though_its_retry_was_refused(
    tmp_path: Path, tier: Tier,
) -> None:
    """anthropic retries a connection error, google-genai a server that hung up: with one
    retry (the default), a first attempt taken whole, then dropped, was hidden by the refused
    retry after it."""
    record = open_record(tmp_path)
    server = OneRequest(hang_up=True)
    async with server as url:
        heard = await ask_once(tmp_path, record, tier, url, SIGHTLINE_MODEL_RETRIES="1")
    assert len(server.bodies) == 1  # the retry found nobody listening
    assert heard == (f"Sorry, the connection to the model ({tier.model}) broke off, so I have "
                     "no answer. Please ask again.")
    (call,) = ledger(record, ("model_call", "model_error"))
    assert call["kind"] == "model_error" and call["detail"]["usage"] == "estimated"
    assert call["input_tokens"] > call["image_tokens"] == IMAGE_TOKENS[tier.model]
    assert call["cost_usd"] > call["image_cost_usd"] > 0


class HangsUpThenFails(ScriptedModelServer):
    """Takes each request whole: hangs up on the first without a word, and answers every one
    after it with an HTTP 500, the provider's own error (an embedding's too)."""

    def __init__(self) -> None:
        super().__init__(replies=[ScriptedReply(status=500)])

    def _capture(self, request: web.Request, *args: Any, **kwargs: Any) -> CapturedRequest:
        captured = super()._capture(request, *args, **kwargs)
        if len(self.requests) == 1:
            assert request.transport is not None
            request.transport.close()
        return captured

    async def _gemini_embed(self, request: web.Request, model: str) -> web.Response:
        vectors = await super()._gemini_embed(request, model)
        return vectors if len(self.requests) == 1 else self._gemini_error(500, "scripted")


@pytest.mark.parametrize("tier", [GEMINI, CLAUDE], ids=lambda t: t.provider)
async def test_a_call_whose_first_attempt_went_out_is_billed_though_its_retries_answered_500(
    tmp_path: Path, tier: Tier,
) -> None:
    """Both SDKs retry a 500 as they retry a server that hung up: the last attempt's HTTP 500
    (the provider ran nothing of it) hid the first one, taken whole and dropped."""
    record = open_record(tmp_path)
    async with HangsUpThenFails() as server:
        heard = await ask_once(tmp_path, record, tier, server.base_url,
                               SIGHTLINE_MODEL_RETRIES="2")
    assert len(server.requests) == 3
    assert heard == (f"Sorry, the model ({tier.model}) had an internal error, so I have no "
                     "answer. Please ask again.")
    (call,) = ledger(record, ("model_call", "model_error"))
    assert call["kind"] == "model_error" and "HTTP 500" in call["detail"]["error"]
    assert_billed_the_prompt(call, server.requests[0])
    assert call["image_cost_usd"] > 0


@pytest.mark.parametrize("tier", [GEMINI, CLAUDE], ids=lambda t: t.provider)
async def test_a_call_whose_one_attempt_that_went_out_was_answered_500_is_billed_nothing(
    tmp_path: Path, tier: Tier,
) -> None:
    """An attempt answered HTTP 500 was not run, and the SDK's retry after it was refused:
    nothing the provider ran went out (it was billed the prompt's estimate, and the user heard
    that the connection broke off), but the model answered: the user hears the 500 (they heard
    the model "could not be reached")."""
    record = open_record(tmp_path)
    server = OneRequest(hang_up=True, answer=SERVER_ERROR)
    async with server as url:
        heard = await ask_once(tmp_path, record, tier, url, SIGHTLINE_MODEL_RETRIES="1")
    assert len(server.bodies) == 1  # the retry found nobody listening
    assert heard == (f"Sorry, the model ({tier.model}) had an internal error, so I have no "
                     "answer. Please ask again.")
    (call,) = ledger(record, ("model_call", "model_error"))
    unbilled(call)
    assert ": HTTP 500: " in call["detail"]["error"]
    assert call["image_tokens"] == IMAGE_TOKENS[tier.model] and call["image_cost_usd"] == 0.0


async def test_a_turn_whose_deadline_passed_after_claude_answered_529_says_so(
    tmp_path: Path,
) -> None:
    """Claude answered 529 (overloaded, retry in 10 s) and the turn's deadline passed while
    the SDK waited to ask again: nothing was run, so it is billed nothing, and the user hears
    the model's own answer (they heard it "could not be reached")."""
    record = open_record(tmp_path)
    server = OneRequest(hang_up=True, answer=OVERLOADED)
    async with server as url:
        heard = await ask_once(tmp_path, record, CLAUDE, url, deadline_s=1.0,
                               SIGHTLINE_MODEL_RETRIES="1")
    assert len(server.bodies) == 1
    assert heard == (f"Sorry, the model ({CLAUDE.model}) is overloaded right now, so I have no "
                     "answer. Please ask again.")
    (call,) = ledger(record, ("model_call", "model_error"))
    unbilled(call)
    assert call["detail"]["outcome"] == "failed"
    assert call["detail"]["error"].startswith(f"anthropic {CLAUDE.model}: HTTP 529: turn deadline")


class OverloadedInStream(ScriptedModelServer):
    """Answers each request 200 OK, with the provider's overload error in place of the
    stream's first event: Anthropic's `error` event before its `message_start`, Gemini's
    error chunk before its first candidate."""

    @staticmethod
    async def _sse(request: web.Request, events: list[bytes], delay: float) -> web.StreamResponse:
        error = (b"event: error\ndata: " + _OVERLOADED + b"\n\n"
                 if request.path.startswith("/v1/messages") else
                 b'data: {"error": {"code": 503, "message": "The model is overloaded.", '
                 b'"status": "UNAVAILABLE"}}\r\n\r\n')
        return await ScriptedModelServer._sse(request, [error], 0.0)


@pytest.mark.parametrize("tier", [GEMINI, CLAUDE], ids=lambda t: t.provider)
async def test_a_stream_that_begins_with_an_overload_error_is_billed_nothing(
    tmp_path: Path, tier: Tier,
) -> None:
    """The provider ran nothing of a request whose answer began with its error: Gemini's
    was billed nothing, Claude's its prompt's estimate."""
    record = open_record(tmp_path)
    async with OverloadedInStream() as server:
        heard = await ask_once(tmp_path, record, tier, server.base_url)
    assert len(server.requests) == 1
    told = {"gemini": "is unavailable right now", "anthropic": "is overloaded right now"}
    assert heard == (f"Sorry, the model ({tier.model}) {told[tier.provider]}, so I have no "
                     "answer. Please ask again.")
    (call,) = ledger(record, ("model_call", "model_error"))
    unbilled(call)
    assert "overloaded" in call["detail"]["error"].lower()
    assert call["image_tokens"] == IMAGE_TOKENS[tier.model] and call["image_cost_usd"] == 0.0


class OverloadedMidAnswer(ScriptedModelServer):
    """Answers Gemini's request 200 OK with two chunks of the answer, neither carrying usage
    (a proxy may strip it; the API sends it on every chunk), then its overload error."""

    def __init__(self) -> None:
        super().__init__(replies=[ScriptedReply(
            text="[[confidence: 0.9]] The build failed because the config file is missing a "
                 "comma on line three.", words_per_chunk=3)])

    @staticmethod
    async def _sse(request: web.Request, events: list[bytes], delay: float) -> web.StreamResponse:
        chunks = []
        for event in events[:2]:
            chunk = json.loads(event.decode().removeprefix("data: "))
            chunk.pop("usageMetadata", None)
            chunks.append(f"data: {json.dumps(chunk)}\r\n\r\n".encode())
        error = (b'data: {"error": {"code": 503, "message": "The model is overloaded.", '
                 b'"status": "UNAVAILABLE"}}\r\n\r\n')
        return await ScriptedModelServer._sse(request, [*chunks, error], 0.0)


async def test_an_error_after_part_of_geminis_answer_is_billed_its_estimate(
    tmp_path: Path,
) -> None:
    """Gemini's error after part of the answer came: the model ran the request, so it is
    billed its estimate, as the user heard part of it (it was billed nothing, the attempt
    marked refused as an error in place of the first chunk is)."""
    record = open_record(tmp_path)
    async with OverloadedMidAnswer() as server:
        heard = await ask_once(tmp_path, record, GEMINI, server.base_url)
    assert len(server.requests) == 1
    assert "that answer is incomplete" in heard
    (call,) = ledger(record, ("model_call", "model_error"))
    assert call["detail"]["usage"] == "estimated"
    assert call["input_tokens"] > 0 and call["output_tokens"] > 0 and call["cost_usd"] > 0


@pytest.mark.parametrize("tier", [GEMINI, CLAUDE], ids=lambda t: t.provider)
@pytest.mark.parametrize("cut", ["cancelled", "deadline"])
async def test_a_turn_cut_off_while_its_request_still_connects_is_billed_nothing(
    tmp_path: Path, handshaking: tuple[str, asyncio.Event], tier: Tier, cut: str,
) -> None:
    """The cascade's turn deadline or the user's cancel, while the SDK was still connecting
    (its own timeout far off): billed the prompt as if it had been sent, and past the deadline
    the user heard the model "took too long to answer"."""
    url, connecting = handshaking
    record = open_record(tmp_path)
    model = CascadeLLM([tier], [make_provider(settings(tmp_path, url), tier)], record.meter,
                       1.0 if cut == "deadline" else 60.0, ImageEncoder("medium"))

    async def ask() -> str:
        async with model.chat(chat_ctx=question()) as stream:
            return "".join([c.delta.content async for c in stream
                            if c.delta and c.delta.content])

    try:
        asking = asyncio.create_task(ask())
        if cut == "cancelled":
            await connecting.wait()
            asking.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asking
        else:
            assert await asking == (f"Sorry, the model ({tier.model}) could not be reached, so "
                                    "I have no answer. Please ask again.")
    finally:
        await model.aclose()
    assert connecting.is_set()
    (call,) = ledger(record, ("model_call", "model_error"))
    assert call["detail"]["outcome"] == ("cancelled" if cut == "cancelled" else "failed")
    unbilled(call)
    assert call["image_tokens"] == IMAGE_TOKENS[tier.model] and call["image_cost_usd"] == 0.0


def embedder(url: str, meter: CostMeter, retries: int) -> GeminiEmbedder:
    return GeminiEmbedder(api_key="test-key", base_url=url, timeout_s=20.0, retries=retries,
                          record=meter.embedding_call)


@pytest.fixture
def meter(tmp_path: Path) -> CostMeter:
    return CostMeter(EventLog(session_id="s1", tenant="acme", costs_dir=tmp_path, store=None),
                     PriceTable.load())


async def test_an_embedding_whose_first_attempt_went_out_is_billed_though_its_retry_was_refused(
    meter: CostMeter, tmp_path: Path,
) -> None:
    server = OneRequest(hang_up=True)
    async with server as url:
        client = embedder(url, meter, retries=1)
        try:
            with pytest.raises(EmbeddingError, match="Cannot connect"):
                await client.embed_query(QUESTION)
        finally:
            await client.aclose()
    assert len(server.bodies) == 1
    (event,) = logged(tmp_path)
    assert event["kind"] == "model_error" and event["detail"]["usage"] == "estimated"
    assert event["input_tokens"] == billed([QUESTION]) > 0


async def test_an_embedding_whose_first_attempt_went_out_is_billed_though_its_retries_answered_500(
    meter: CostMeter, tmp_path: Path,
) -> None:
    async with HangsUpThenFails() as server:
        client = embedder(server.base_url, meter, retries=2)
        try:
            with pytest.raises(EmbeddingError, match="500"):
                await client.embed_query(QUESTION)
        finally:
            await client.aclose()
    assert len(server.requests) == 3
    (event,) = logged(tmp_path)
    assert event["kind"] == "model_error" and event["detail"]["usage"] == "estimated"
    assert event["input_tokens"] == billed([QUESTION]) > 0


async def cancel_once_arrived(url: str, arrived: asyncio.Event, meter: CostMeter,
                              texts: list[str]) -> None:
    """Embeds `texts` at `url` and cancels the call once `arrived` is set."""
    client = embedder(url, meter, retries=0)
    try:
        embedding = asyncio.create_task(client.embed_documents(texts))
        await arrived.wait()
        embedding.cancel()
        with pytest.raises(asyncio.CancelledError):
            await embedding
    finally:
        await client.aclose()


@pytest.mark.parametrize("when", ["received", "connecting"])
async def test_a_cancelled_embedding_is_in_the_ledger_billed_once_gemini_had_it(
    meter: CostMeter, tmp_path: Path, handshaking: tuple[str, asyncio.Event], when: str,
) -> None:
    """An embedding cancelled (a session closing, its turn interrupted) once Gemini had the
    request is billed its estimate; one cancelled while it still connected is in the ledger
    unbilled. Neither was recorded."""
    texts = [f"{QUESTION} ({i})" for i in range(3)]
    if when == "received":
        server = OneRequest(hang_up=False)
        async with server as url:
            await cancel_once_arrived(url, server.arrived, meter, texts)
    else:
        await cancel_once_arrived(*handshaking, meter, texts)
    (event,) = logged(tmp_path)
    assert event["kind"] == "model_error" and event["detail"]["error"] == "cancelled"
    assert event["detail"]["texts"] == len(texts)
    if when == "received":
        assert event["detail"]["usage"] == "estimated"
        assert event["input_tokens"] == billed(texts) > 0 and event["cost_usd"] > 0
    else:
        unbilled(event)


@pytest.mark.parametrize("tier", [GEMINI, CLAUDE], ids=lambda t: t.provider)
@pytest.mark.parametrize("sent", [False, True], ids=["connecting", "sent"])
async def test_a_memory_call_that_timed_out_is_billed_only_once_it_went_out(
    meter: CostMeter, tmp_path: Path, handshaking: tuple[str, asyncio.Event], tier: Tier,
    sent: bool,
) -> None:
    """The memory keeper's call (`MeteredTierCall`) past its own timeout: billed the prompt when
    its request had gone out, nothing while it still connected (it was billed either way)."""
    async def ask(url: str) -> None:
        provider = make_provider(settings(tmp_path, url), tier)
        call = MeteredTierCall(provider, tier, meter, timeout_s=1.0)
        try:
            await call.ask(memory_prompt({}, None, QUESTION, "Sure."), max_output_tokens=50,
                           read=lambda text: {})
        finally:
            await provider.aclose()

    if sent:
        server = OneRequest(hang_up=False)
        async with server as url:
            await ask(url)
        assert len(server.bodies) == 1
    else:
        url, connecting = handshaking
        await ask(url)
        assert connecting.is_set()
    (event,) = logged(tmp_path)
    assert event["kind"] == "model_error" and event["detail"]["purpose"] == "memory"
    if sent:
        assert event["detail"]["usage"] == "estimated" and event["input_tokens"] > 0
    else:
        unbilled(event)
