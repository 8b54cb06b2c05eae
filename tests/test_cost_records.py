"""Cost records of calls that did not run their course, and what the budget counts.

Protects: a model call cut off (cancelled, or past its deadline) before the provider's first
usage report is billed an estimate of the prompt it sent, images included, marked so, and so is
one whose connection dropped after its request went out (before any answer, or mid-answer:
the user hears that it broke off); one cut off before its request went out, refused by the
provider, or never sent (the connection refused, or timed out: the user hears the model could
not be reached) is billed nothing (tests/test_request_reached.py: retries, a turn cut off
while it still connects); a memory call cancelled by the session's close is in the ledger;
speech spend counts against the budgets as it counts in the session's total; a screen not
sent again saved what its frame would have cost less the screenshot held instead, at that one's
place in Claude's cache (written, then read), and a write that cost more is printed as costing
more. Through the real SDK clients against the wire-format server (and sockets that take no
request).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from livekit.agents import llm
from synthetic_screen import Desk
from test_cascade import reply

from agent.budget import BudgetGuard
from agent.cascade import CascadeLLM
from agent.cli_costs import _unsent_saving, format_summary
from agent.config import Settings, Tier
from agent.images import ImageBill, ImageEncoder
from agent.pricing import PriceTable, Usage, estimate_text_tokens
from agent.providers import make_provider
from agent.screen_context import ScreenContext
from agent.session_record import SessionRecord
from agent.speech import build_speech
from agent.tier_call import MeteredTierCall
from agent.turn_context import TurnContext
from agent.wire_format_server import CapturedRequest, ScriptedModelServer, ScriptedReply
from vision.sampler import FrameSampler
from vision.screen import ScreenWatcher

GEMINI = Tier("gemini", "gemini-2.5-flash", 0.0, 256)
CLAUDE = Tier("anthropic", "claude-sonnet-4-6", 0.0, 256)
INSTRUCTIONS = "You are a support agent who reads the user's screen. " * 60
SLOW = 30.0  # seconds the server waits before its first byte: no usage report comes in time


def settings(tmp_path: Path, server: ScriptedModelServer | str, **env: str) -> Settings:
    url = server if isinstance(server, str) else server.base_url
    return Settings.from_env({
        "SIGHTLINE_DATA_DIR": str(tmp_path), "GEMINI_API_KEY": "test-key",
        "ANTHROPIC_API_KEY": "test-key", "SIGHTLINE_GEMINI_BASE_URL": url,
        "SIGHTLINE_ANTHROPIC_BASE_URL": url, "SIGHTLINE_MODEL_RETRIES": "0", **env,
    })


class SlowReplies:
    """A confident answer, too late for any usage report to arrive in the test."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()  # set when the first request reaches the server

    def __call__(self, request: CapturedRequest) -> ScriptedReply:
        self.asked.set()
        return ScriptedReply(text="[[confidence: 0.9]] " + "word " * 50, delay_s=SLOW)


@pytest.fixture
def slow() -> SlowReplies:
    return SlowReplies()


@pytest.fixture
async def server(slow: SlowReplies) -> AsyncIterator[ScriptedModelServer]:
    async with ScriptedModelServer(replies=slow) as running:
        yield running


def open_record(tmp_path: Path, budget: BudgetGuard | None = None) -> SessionRecord:
    return SessionRecord.open(session_id="sess_costs", tenant="acme", source="test",
                              costs_dir=tmp_path, prices=PriceTable.load(), store=None,
                              budget=budget)


def ledger(record: SessionRecord, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    lines = record.events.path.read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] in kinds]


def question() -> llm.ChatContext:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="system", content=INSTRUCTIONS)
    ctx.add_message(role="user", content=["What failed?", llm.ImageContent(image=Desk().frame())])
    return ctx


def assert_billed_the_prompt(call: dict[str, Any], request: CapturedRequest) -> None:
    """Billed its prompt as the provider would count it (the wire-format server's count: its
    text and images), at the model's price, and marked an estimate."""
    would_bill = estimate_text_tokens(request.text) + request.image_tokens
    assert call["input_tokens"] == pytest.approx(would_bill, rel=0.02)
    assert call["image_tokens"] == request.image_tokens > 0
    usage = Usage(input_tokens=call["input_tokens"], output_tokens=call["output_tokens"])
    assert call["cost_usd"] == pytest.approx(PriceTable.load().cost(call["model"], usage))
    assert call["cost_usd"] > 0
    assert call["detail"]["usage"] == "estimated"


@pytest.mark.parametrize("tier", [GEMINI, CLAUDE], ids=lambda t: t.provider)
@pytest.mark.parametrize("cut", ["cancelled", "deadline"])
async def test_a_call_cut_off_before_the_providers_usage_report_is_billed_its_prompt(
    tmp_path: Path, server: ScriptedModelServer, slow: SlowReplies, tier: Tier, cut: str,
) -> None:
    """Usage comes with Gemini's first chunk and Claude's `message_start`; a turn cancelled
    (preemptive generation, an interruption) or past its deadline before then was billed $0."""
    record = open_record(tmp_path)
    model = CascadeLLM([tier], [make_provider(settings(tmp_path, server), tier)], record.meter,
                       1.0 if cut == "deadline" else 60.0, ImageEncoder("medium"))
    try:
        async with model.chat(chat_ctx=question()) as stream:
            if cut == "cancelled":
                await slow.asked.wait()
            else:
                assert "took too long" in "".join(
                    [c.delta.content async for c in stream if c.delta and c.delta.content])
        (call,) = ledger(record, ("model_call", "model_error"))
        (turn,) = ledger(record, ("turn",))
    finally:
        await model.aclose()
    assert call["kind"] == "model_error" and call["detail"]["outcome"] == (
        "cancelled" if cut == "cancelled" else "failed")
    assert_billed_the_prompt(call, server.requests[0])
    assert turn["detail"]["cost_usd"] == pytest.approx(call["cost_usd"])


class HeldEncoder(ImageEncoder):
    """Encodes nothing and never finishes: the turn is cut off before its request goes out."""

    def __init__(self) -> None:
        super().__init__("medium")
        self.preparing = asyncio.Event()

    async def prepare(
        self, chat_ctx: llm.ChatContext, provider: str,
    ) -> tuple[llm.ChatContext, ImageBill]:
        self.preparing.set()
        await asyncio.Event().wait()
        raise AssertionError("never reached")


async def test_a_call_never_sent_or_refused_is_billed_nothing(tmp_path: Path) -> None:
    record = open_record(tmp_path)
    encoder = HeldEncoder()
    async with ScriptedModelServer(replies=[ScriptedReply(status=400)]) as server:
        unsent = CascadeLLM([GEMINI], [make_provider(settings(tmp_path, server), GEMINI)],
                            record.meter, 60.0, encoder)
        refused = CascadeLLM([CLAUDE], [make_provider(settings(tmp_path, server), CLAUDE)],
                             record.meter, 60.0, ImageEncoder("medium"))
        try:
            async with unsent.chat(chat_ctx=question()):
                await encoder.preparing.wait()
            async with refused.chat(chat_ctx=question()) as stream:
                async for _ in stream:
                    pass
        finally:
            await unsent.aclose()
            await refused.aclose()
    held, rejected = ledger(record, ("model_call", "model_error"))
    assert held["detail"]["outcome"] == "cancelled" and "HTTP 400" in rejected["detail"]["error"]
    assert [r.provider for r in server.requests] == ["anthropic"]
    for call in (held, rejected):
        assert call["kind"] == "model_error" and call["detail"]["usage"] == "unbilled"
        assert (call["input_tokens"], call["output_tokens"], call["cost_usd"]) == (0, 0, 0.0)
    # the refused request sent its screenshot, but no share of a call billed nothing
    assert rejected["image_tokens"] == 1199 and rejected["image_cost_usd"] == 0.0


class HangsUp(ScriptedModelServer):
    """Takes each request whole, then closes its connection without a word of answer."""

    def _capture(self, request: web.Request, *args: Any, **kwargs: Any) -> CapturedRequest:
        captured = super()._capture(request, *args, **kwargs)
        assert request.transport is not None
        request.transport.close()
        return captured


class BreaksOff(ScriptedModelServer):
    """Answers each request, then closes the connection after the answer's headers, before
    its first event (and so before the provider's usage report)."""

    @staticmethod
    async def _sse(request: web.Request, events: list[bytes], delay: float) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        assert request.transport is not None
        request.transport.close()
        return response


async def ask_once(tmp_path: Path, record: SessionRecord, tier: Tier, url: str, *,
                   deadline_s: float = 60.0, **env: str) -> str:
    """One cascade turn on `tier` alone, asked at `url`: what the user heard."""
    model = CascadeLLM([tier], [make_provider(settings(tmp_path, url, **env), tier)],
                       record.meter, deadline_s, ImageEncoder("medium"))
    try:
        async with model.chat(chat_ctx=question()) as stream:
            return "".join([c.delta.content async for c in stream
                            if c.delta and c.delta.content])
    finally:
        await model.aclose()


@pytest.mark.parametrize("tier", [GEMINI, CLAUDE], ids=lambda t: t.provider)
@pytest.mark.parametrize("server", [HangsUp, BreaksOff], ids=["before_answer", "mid_answer"])
async def test_a_call_whose_connection_dropped_after_it_went_out_is_billed_its_prompt(
    tmp_path: Path, tier: Tier, server: type[ScriptedModelServer],
) -> None:
    """The provider bills a prompt it received, answered or not: a request whose connection
    dropped once it was sent (before any answer, or mid-answer before the usage report) is
    billed its prompt's estimate, as a timed-out one is; it was billed $0 as if never sent.
    The user hears one plain sentence that says the connection broke off (a drop mid-answer
    was Claude's SDK's own exception; both were told the model "could not be reached")."""
    record = open_record(tmp_path)
    async with server() as running:
        heard = await ask_once(tmp_path, record, tier, running.base_url)
    assert heard == (f"Sorry, the connection to the model ({tier.model}) broke off, so I have "
                     "no answer. Please ask again.")
    (call,) = ledger(record, ("model_call", "model_error"))
    assert call["kind"] == "model_error" and "connection" in call["detail"]["error"]
    assert_billed_the_prompt(call, running.requests[0])
    assert call["image_cost_usd"] > 0


@pytest.fixture
def refusing() -> Iterator[str]:
    """The URL of a port bound by no listener: a connection there is refused."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{bound.getsockname()[1]}"


@pytest.fixture
def unanswered() -> Iterator[str]:
    """The URL of a listener whose queue of connections to accept is full and never read:
    a new connection's handshake goes unanswered until the client's connect times out."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        fillers = [socket.socket() for _ in range(2)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(listener.getsockname())
            yield f"http://127.0.0.1:{listener.getsockname()[1]}"
        finally:
            for filler in fillers:
                filler.close()


async def test_a_call_whose_connection_was_never_made_is_billed_nothing(
    tmp_path: Path, refusing: str, unanswered: str,
) -> None:
    """A connection refused, or one whose connect timed out, never carried the request: $0,
    with the error kept, and the user hears the model could not be reached. (A connect timeout
    was billed the prompt's estimate, Claude's and Gemini's, whose one deadline over the
    connect and the answer does not say which it ran out in; the user heard the model "took
    too long to answer".)"""
    record = open_record(tmp_path)
    for tier in (GEMINI, CLAUDE):
        assert "could not be reached" in await ask_once(tmp_path, record, tier, refusing)
    for tier in (GEMINI, CLAUDE):
        assert "could not be reached" in await ask_once(tmp_path, record, tier, unanswered,
                                                        SIGHTLINE_MODEL_TIMEOUT_S="0.5")
    calls = ledger(record, ("model_call", "model_error"))
    assert [c["model"] for c in calls] == [GEMINI.model, CLAUDE.model] * 2
    assert [c["detail"]["error"].split(": ")[1] for c in calls] == [
        "connection", "connection", "timeout", "timeout"]
    for call in calls:
        assert call["kind"] == "model_error" and call["detail"]["usage"] == "unbilled"
        assert (call["input_tokens"], call["output_tokens"], call["cost_usd"]) == (0, 0, 0.0)
        assert call["image_tokens"] == (516 if call["model"] == GEMINI.model else 1199)


async def test_a_memory_call_cancelled_by_the_sessions_close_is_in_the_ledger(
    tmp_path: Path, server: ScriptedModelServer, slow: SlowReplies,
) -> None:
    """`MemoryKeeper.close` cancels a memory call still running when its wait runs out: the
    call was sent, so it is billed (its prompt, estimated) like a cancelled turn's."""
    record = open_record(tmp_path)
    tier = Tier("gemini", "gemini-2.5-flash-lite", 0.7, 512)
    provider = make_provider(settings(tmp_path, server), tier)
    memory = MeteredTierCall(provider, tier, record.meter, timeout_s=60)
    prompt = llm.ChatContext.empty()
    prompt.add_message(role="user", content="Remember what the user said: " + "vim " * 500)
    try:
        task = asyncio.create_task(memory.ask(prompt, max_output_tokens=100, read=lambda _: {}))
        await slow.asked.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await provider.aclose()
    summary = await record.close()
    (call,) = ledger(record, ("model_call", "model_error"))
    assert call["kind"] == "model_error" and call["detail"]["error"] == "cancelled"
    assert call["detail"]["purpose"] == "memory" and call["detail"]["usage"] == "estimated"
    request = server.requests[0]
    assert call["input_tokens"] == pytest.approx(estimate_text_tokens(request.text), rel=0.02)
    assert call["cost_usd"] > 0
    assert summary["memory"]["cost_usd"] == pytest.approx(call["cost_usd"])


async def test_speech_spend_counts_against_the_budget(tmp_path: Path) -> None:
    """The session's total and the tenant's spend in Postgres add speech to model calls; the
    budget counted model calls alone, so a session talking a lot never hit its limit."""
    guard = BudgetGuard(session_budget_usd=0.001, tenant_budget_usd=None,
                        max_tier_over_budget=0)
    record = open_record(tmp_path, guard)
    async with ScriptedModelServer() as server:
        speech = build_speech(Settings.from_env({
            "SIGHTLINE_DATA_DIR": str(tmp_path), "SIGHTLINE_STT": "local",
            "SIGHTLINE_TTS": "openai:tts-1:alloy", "OPENAI_API_KEY": "sk-test-123456",
            "SIGHTLINE_TTS_BASE_URL": f"{server.base_url}/v1"}))
        speech.on_metrics(record.meter.speech)
        assert speech.tts is not None
        reply = "The build fails because line 3 imports a module that is not installed. " * 2
        async for _ in speech.tts.synthesize(reply):
            pass
    summary = await record.close()
    (spoken,) = ledger(record, ("speech",))
    assert spoken["cost_usd"] == pytest.approx(len(reply) * 15.0 / 1e6)
    assert spoken["cost_usd"] > guard.session_budget_usd
    assert guard.session_spent_usd == pytest.approx(summary["total_cost_usd"])
    assert [e["detail"]["threshold"] for e in ledger(record, ("budget",))] == [0.7, 0.9, 1.0]
    assert guard.tier_cap() == 0


async def ask_about_an_unchanged_screen(
    tmp_path: Path, questions: list[str],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Claude asked `questions`, one turn each, the same screen offered before every one: its
    calls, and the session's summary (its turns' notes recorded as a session records them)."""
    record = open_record(tmp_path)
    screen = ScreenWatcher(FrameSampler(1.0), lambda _d: None)
    turn = TurnContext(ScreenContext(screen, "changed"),
                       note=lambda note: record.events.record("context", detail=note))
    desk = Desk()
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="system", content=INSTRUCTIONS)
    answer = ScriptedReply(text="[[confidence: 0.9]] Exit 2.")
    async with ScriptedModelServer(replies=[answer]) as server:
        model = CascadeLLM([CLAUDE], [make_provider(settings(tmp_path, server), CLAUDE)],
                           record.meter, 60.0, ImageEncoder("medium"))
        try:
            for t, asked in enumerate(questions):
                screen.offer(float(t), desk.frame())  # the same screen every time
                ctx.add_message(role="user", content=asked)
                ctx.add_message(role="assistant", content=await reply(model,
                                                                      await turn.build(ctx)))
        finally:
            await model.aclose()
    summary = await record.close()
    return ledger(record, ("model_call",)), summary


async def test_a_screen_not_sent_again_saved_by_the_place_of_the_screenshot_held_instead(
    tmp_path: Path,
) -> None:
    """While the screen is unchanged a question sends no new frame: the request holds the
    screenshot an earlier question carried, which the first request that carries it past the
    cache mark writes to Claude's cache (at 1.25x fresh input) and the next reads. The frame
    left out saved its tokens at the fresh rate less the rate of that place, as the carried
    screenshot's own share is priced; it was priced as read from the cache every time, so the
    write's extra cost showed as a saving."""
    (first, written, read), summary = await ask_about_an_unchanged_screen(
        tmp_path, ["What failed?", "Which step ran last?", "Its log?"])
    assert [c["image_tokens_unsent"] for c in (first, written, read)] == [0, 1199, 1199]
    assert written["cache_write_tokens"] > 1199 and read["cached_input_tokens"] > 1199
    sonnet = PriceTable.load().get(CLAUDE.model)
    assert sonnet is not None
    assert [c["image_unsent_saved_usd"] for c in (first, written, read)] == [0.0, *(
        pytest.approx(1199 * (sonnet.input_per_mtok - rate) / 1e6)
        for rate in (sonnet.cache_write_per_mtok, sonnet.cached_input_per_mtok))]
    assert written["image_unsent_saved_usd"] < 0 < read["image_unsent_saved_usd"]
    saved = summary["images"]["unsent_saved_usd"]
    assert saved == pytest.approx(
        written["image_unsent_saved_usd"] + read["image_unsent_saved_usd"])
    assert f"(2398 tokens not sent again, ${saved:.6f} saved)" in format_summary(summary)


async def test_a_screen_not_sent_again_that_cost_more_is_printed_as_costing_more(
    tmp_path: Path,
) -> None:
    """One question on the unchanged screen: the screenshot carried instead is written to
    Claude's cache, which costs more than the frame left out would have cost as fresh input.
    `sightline costs` printed it as "$-0.000899 saved"."""
    (_, written), summary = await ask_about_an_unchanged_screen(
        tmp_path, ["What failed?", "Which step ran last?"])
    sonnet = PriceTable.load().get(CLAUDE.model)
    assert sonnet is not None
    extra = -summary["images"]["unsent_saved_usd"]
    assert extra == pytest.approx(-written["image_unsent_saved_usd"]) == pytest.approx(
        1199 * (sonnet.cache_write_per_mtok - sonnet.input_per_mtok) / 1e6)
    text = format_summary(summary)
    assert (f"(1199 tokens not sent again, ${extra:.6f} more: the carried screenshot was "
            "written to the cache)") in text
    assert "$-" not in text


@pytest.mark.parametrize("saved", [-0.0, -3e-7, -4.9e-9])
def test_an_unsent_saving_that_rounds_to_nothing_prints_as_nothing_saved(saved: float) -> None:
    """A session whose cache writes and reads of the carried screenshot net to about nothing
    (its summary rounds the sum to 8 places: -0.0 from below) printed "$-0.000000 saved" or
    "$0.000000 more"."""
    assert _unsent_saving(saved) == "$0.000000 saved"
