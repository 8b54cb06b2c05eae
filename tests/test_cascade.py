"""The model cascade through the real google-genai and anthropic SDKs against the local wire-format
server, with replies scripted per model.

Protects: a low-confidence tier is dropped unseen and the next tier answers in the same turn; a
missing or malformed header counts as low; the header never reaches the user; the last tier
always answers; a rephrased question or "that didn't help" starts one tier higher, "it worked"
and a new topic start at tier 0; a failing tier (HTTP 500, 429, timeout) falls through, and when
every tier fails the user gets one sentence (a connection that broke off mid-answer ends what
was said with one that says so); every tier's call and the turn are in the ledger;
a tool call made by whichever tier acts runs once (through LiveKit's own tool execution), its
result goes back in that provider's wire format, and the same tier answers it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from google.genai import _common as genai_common
from google.genai import types as genai_types
from livekit.agents import Agent, AgentSession, llm
from synthetic_screen import Desk

from agent import providers
from agent.budget import BudgetGuard
from agent.cascade import CascadeLLM, ConfidenceHeader, EscalationPolicy, Tier
from agent.config import Settings
from agent.images import ImageEncoder
from agent.pricing import PriceTable
from agent.providers import (
    ChatProvider,
    ClaudeProvider,
    GeminiProvider,
    ProviderError,
    ToolSchemas,
    make_provider,
    tier_providers,
)
from agent.screen_context import ScreenContext
from agent.session_record import SessionRecord
from agent.turn_context import TurnContext
from agent.wire_format_server import (
    CapturedRequest,
    ScriptedModelServer,
    ScriptedReply,
    ScriptedToolCall,
)
from vision.sampler import FrameSampler
from vision.screen import ScreenWatcher

TIERS = [
    Tier("gemini", "gemini-2.5-flash-lite", 0.7, 256),
    Tier("gemini", "gemini-2.5-flash", 0.6, 256),
    Tier("anthropic", "claude-sonnet-4-6", 0.0, 256),
]
Script = dict[str, list[ScriptedReply]]


class PerModel:
    """Replies by model name, in order; the last one repeats."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.asked: list[str] = []
        self.requests: list[CapturedRequest] = []

    def __call__(self, request: CapturedRequest) -> ScriptedReply:
        self.asked.append(request.model)
        self.requests.append(request)
        replies = self.script[request.model]
        served = self.asked.count(request.model) - 1
        return replies[min(served, len(replies) - 1)]


Make = Callable[..., Awaitable[tuple[CascadeLLM, PerModel]]]
RECORDS: dict[CascadeLLM, SessionRecord] = {}  # each cascade's session record, by `make`
MADE: dict[CascadeLLM, list[str]] = {}  # the models whose providers `make` made, in order


def record(model: CascadeLLM) -> SessionRecord:
    return RECORDS[model]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Make]:
    """Builds cascades on their own scripted server; closes everything afterwards."""
    servers: list[ScriptedModelServer] = []
    models: list[CascadeLLM] = []

    async def build(
        script: Script, deadline_s: float = 20.0, budget: BudgetGuard | None = None,
        serve: type[ScriptedModelServer] = ScriptedModelServer,
    ) -> tuple[CascadeLLM, PerModel]:
        replies = PerModel(script)
        server = serve(replies=replies)
        await server.start()
        servers.append(server)
        session_record = SessionRecord.open(
            session_id=f"sess_cascade_{len(servers)}", tenant="acme", source="test",
            costs_dir=tmp_path, prices=PriceTable.load(), store=None, budget=budget,
        )
        made: list[str] = []

        def provider(tier: Tier) -> ChatProvider:
            made.append(tier.model)
            return (GeminiProvider if tier.provider == "gemini" else ClaudeProvider)(
                api_key="test-key", model=tier.model, base_url=server.base_url,
                timeout_s=2.0, retries=0,
            )

        model = CascadeLLM(TIERS, tier_providers(TIERS, provider), session_record.meter,
                           deadline_s, ImageEncoder("medium"), budget)
        models.append(model)
        RECORDS[model], MADE[model] = session_record, made
        return model, replies

    yield build
    for model in models:
        await model.aclose()
        RECORDS.pop(model), MADE.pop(model)
    for server in servers:
        await server.stop()


async def reply(model: CascadeLLM, request: llm.ChatContext) -> str:
    parts: list[str] = []
    async with model.chat(chat_ctx=request) as stream:
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                parts.append(chunk.delta.content)
    return "".join(parts)


async def ask(model: CascadeLLM, ctx: llm.ChatContext, question: str) -> str:
    ctx.add_message(role="user", content=question)
    answer = await reply(model, ctx)
    ctx.add_message(role="assistant", content=answer)
    return answer


def turns(model: CascadeLLM) -> list[dict]:
    lines = record(model).events.path.read_text().splitlines()
    return [e["detail"] for e in map(json.loads, lines) if e["kind"] == "turn"]


def calls(model: CascadeLLM) -> list[dict]:
    lines = record(model).events.path.read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] in ("model_call", "model_error")]


def said(text: str, confidence: float | None = None, **kw: float) -> ScriptedReply:
    header = f"[[confidence: {confidence}]] " if confidence is not None else ""
    return ScriptedReply(text=header + text, **kw)  # type: ignore[arg-type]


LITE, FLASH, CLAUDE = (t.model for t in TIERS)


async def test_low_confidence_escalates_within_the_turn_and_nothing_of_it_is_sent(
    make: Make,
) -> None:
    model, replies = await make({
        LITE: [said("I think it is maybe the cache, not sure at all.", 0.3)],
        FLASH: [said("The error is a missing import of asyncio on line 3.", 0.9)],
        CLAUDE: [said("unused", 0.99)],
    })
    answer = await ask(model, llm.ChatContext.empty(), "Why does this error show up?")
    assert answer == "The error is a missing import of asyncio on line 3."
    assert "cache" not in answer and "[[" not in answer
    assert replies.asked == [LITE, FLASH]
    (turn,) = turns(model)
    assert turn["start_tier"] == 0 and turn["reason"] == "first_turn"
    assert [(t["model"], t["confidence"], t["outcome"]) for t in turn["tried"]] == [
        (LITE, 0.3, "low_confidence"), (FLASH, 0.9, "answered"),
    ]
    assert turn["answered_tier"] == 1 and turn["answered_model"] == FLASH
    assert [c["model"] for c in calls(model)] == [LITE, FLASH]
    assert all(c["output_tokens"] > 0 for c in calls(model))
    assert MADE[model] == [LITE, FLASH]  # Claude's client: never asked, never made


async def test_the_tiers_above_the_first_are_made_when_the_cascade_first_asks_them(
    make: Make,
) -> None:
    """A session starts with its first tier's client alone (each SDK client costs a burst of
    sessions 0.1-0.6 ms of GIL); one made on an escalation serves the later turns too."""
    model, replies = await make({
        LITE: [said("A stack trace in the terminal.", 0.9), said("not sure", 0.2)],
        FLASH: [said("Line 3 imports nothing.", 0.9)],
        CLAUDE: [said("unused", 0.99)],
    })
    assert MADE[model] == [LITE]
    ctx = llm.ChatContext.empty()
    assert await ask(model, ctx, "What is on my screen?") == "A stack trace in the terminal."
    assert MADE[model] == [LITE]
    assert await ask(model, ctx, "Why does it fail?") == "Line 3 imports nothing."
    assert await ask(model, ctx, "And now?") == "Line 3 imports nothing."
    assert replies.asked[:3] == [LITE, LITE, FLASH]
    assert MADE[model] == [LITE, FLASH]


@pytest.mark.parametrize(
    "opening",
    ["The answer is 42.", "[[confidence: high]] The answer is 42.", "[[conf 0.9]] 42", ""],
    ids=["missing", "not-a-number", "garbled", "empty"],
)
async def test_missing_or_malformed_confidence_counts_as_low(make: Make, opening: str) -> None:
    model, replies = await make({
        LITE: [ScriptedReply(text=opening)],
        FLASH: [said("Line 12 raises KeyError: 'user'.", 0.8)],
        CLAUDE: [said("unused", 0.99)],
    })
    answer = await ask(model, llm.ChatContext.empty(), "What does line 12 raise?")
    assert answer == "Line 12 raises KeyError: 'user'."
    assert replies.asked == [LITE, FLASH]
    assert turns(model)[0]["tried"][0]["outcome"] == "low_confidence"


async def test_the_last_tier_always_answers_even_unsure_or_without_header(make: Make) -> None:
    model, replies = await make({
        LITE: [said("no idea", 0.1)],
        FLASH: [said("hmm", 0.2)],
        CLAUDE: [ScriptedReply(text="It is the version mismatch shown in the footer.")],
    })
    answer = await ask(model, llm.ChatContext.empty(), "What is wrong?")
    assert answer == "It is the version mismatch shown in the footer."
    assert replies.asked == [LITE, FLASH, CLAUDE]
    assert turns(model)[0]["answered_tier"] == 2


async def test_a_rephrased_question_starts_one_tier_higher_and_resets_on_success(
    make: Make,
) -> None:
    model, replies = await make({
        LITE: [said("Restart the server.", 0.9)],
        FLASH: [said("Set PYTHONPATH to the repo root.", 0.9)],
        CLAUDE: [said("Install the package in editable mode.", 0.9)],
    })
    ctx = llm.ChatContext.empty()
    await ask(model, ctx, "Why does the import of sightline fail in my terminal?")
    await ask(model, ctx, "why does the sightline import fail in the terminal")
    await ask(model, ctx, "That didn't help, it still fails.")
    await ask(model, ctx, "That worked, thanks!")
    await ask(model, ctx, "What does the clock in the corner say?")
    started = [(t["start_tier"], t["reason"]) for t in turns(model)]
    assert started == [
        (0, "first_turn"), (1, "question_repeated"), (2, "answer_did_not_help"),
        (0, "user_confirmed"), (0, "new_topic"),
    ]
    assert replies.asked == [LITE, FLASH, CLAUDE, LITE, LITE]


@pytest.mark.parametrize("status", [500, 429, 503])
async def test_a_failing_tier_falls_through_to_the_next(make: Make, status: int) -> None:
    model, replies = await make({
        LITE: [ScriptedReply(status=status, text="boom")],
        FLASH: [said("The test on line 40 fails on a missing fixture.", 0.9)],
        CLAUDE: [said("unused", 0.99)],
    })
    answer = await ask(model, llm.ChatContext.empty(), "Which test fails?")
    assert answer == "The test on line 40 fails on a missing fixture."
    tried = turns(model)[0]["tried"]
    assert tried[0]["outcome"] == "failed" and f"HTTP {status}" in tried[0]["error"]
    assert [c["kind"] for c in calls(model)] == ["model_error", "model_call"]
    assert replies.asked == [LITE, FLASH]


async def test_an_answer_that_is_not_the_apis_is_a_failure_in_one_line(make: Make) -> None:
    """A proxy's HTML page where the API's JSON should be (the SDKs raised parse errors the
    providers did not catch: the turn died in a traceback): each tier fails in one line,
    the next is tried, and the user hears one sentence when none answered."""
    page = "<html><body><h1>502 Bad Gateway</h1>\n<p>corporate proxy</p></body></html>"
    model, replies = await make({
        LITE: [ScriptedReply(proxy_page=page)],
        FLASH: [said("From the next tier.", 0.9)],
        CLAUDE: [said("unused", 0.99)],
    })
    assert await ask(model, llm.ChatContext.empty(), "What is on screen?") == \
        "From the next tier."
    assert replies.asked == [LITE, FLASH]
    error = turns(model)[0]["tried"][0]["error"]
    assert error.startswith("gemini gemini-2.5-flash-lite: bad_response: ") and "\n" not in error
    assert "502 Bad Gateway" in error
    model2, _ = await make({
        LITE: [ScriptedReply(proxy_page=page)], FLASH: [ScriptedReply(proxy_page=page)],
        CLAUDE: [ScriptedReply(proxy_page=page)],
    })
    answer = await ask(model2, llm.ChatContext.empty(), "Anything?")
    assert answer == ("Sorry, the model (claude-sonnet-4-6) sent back something that is not an "
                      "answer, so I have no answer. Please ask again.")
    assert [t["error"].split(": ")[1] for t in turns(model2)[0]["tried"]] == ["bad_response"] * 3


async def test_a_slow_tier_times_out_and_the_next_answers(make: Make) -> None:
    model, _ = await make({
        LITE: [said("too late", 0.9, delay_s=5.0)],
        FLASH: [said("On time.", 0.9)],
        CLAUDE: [said("unused", 0.99)],
    })
    answer = await ask(model, llm.ChatContext.empty(), "Quick question?")
    assert answer == "On time."
    assert turns(model)[0]["tried"][0]["error"].endswith("no answer in time")


async def test_every_tier_failing_gives_one_sentence_and_the_next_turn_works(make: Make) -> None:
    model, _ = await make({
        LITE: [ScriptedReply(status=500), said("Back again.", 0.9)],
        FLASH: [ScriptedReply(status=500)],
        CLAUDE: [ScriptedReply(status=529)],
    })
    ctx = llm.ChatContext.empty()
    answer = await ask(model, ctx, "Anything?")
    assert answer == ("Sorry, the model (claude-sonnet-4-6) is overloaded right now, so I have no "
                      "answer. Please ask again.")
    assert turns(model)[0]["answered_tier"] is None
    assert len(calls(model)) == 3 and all(c["kind"] == "model_error" for c in calls(model))
    assert await ask(model, ctx, "Now what is on screen?") == "Back again."


@pytest.mark.parametrize("answering", [LITE, CLAUDE])
async def test_an_answer_whose_connection_broke_off_ends_in_a_sentence_that_says_so(
    make: Make, answering: str,
) -> None:
    """The connection dropped while the model was answering, its first words already spoken:
    what was said stands, and one sentence ends it that says the connection broke off and the
    answer is incomplete (it said the model "could not be reached", though it had been
    answering, then that it had "no answer", though part of one was spoken)."""
    spoken = asyncio.Event()  # set once the listener heard the answer's first words

    class BreaksOffMidAnswer(ScriptedModelServer):
        """Streams the first half of each answer's events, waits until they were spoken,
        then closes the connection: the answer breaks off mid-sentence."""

        async def _sse(self, request: web.Request, events: list[bytes],
                       delay: float) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for event in events[:len(events) // 2]:
                await response.write(event)
            await spoken.wait()
            assert request.transport is not None
            request.transport.close()
            return response

    text = "The build failed with exit code 2 in the linker step of the release job."
    script = {model: [ScriptedReply(status=500)] for model in (LITE, FLASH, CLAUDE)}
    script[answering] = [said(text, 0.9, words_per_chunk=2)]
    model, replies = await make(script, serve=BreaksOffMidAnswer)
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="Why did the build fail?")
    heard: list[str] = []
    async with model.chat(chat_ctx=ctx) as stream:
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                heard.append(chunk.delta.content)
                spoken.set()
    said_first, ending = "".join(heard).split(" … ")
    assert said_first and text.startswith(said_first) and said_first != text
    assert ending == (f"Sorry, that answer is incomplete: the connection to the model "
                      f"({answering}) broke off. Please ask again.")
    assert replies.asked[-1] == answering and replies.asked.count(answering) == 1
    (turn,) = turns(model)
    broken = turn["tried"][-1]
    assert broken["outcome"] == "answered" and ": connection: " in broken["error"]


@pytest.mark.parametrize(("error", "kind", "told"), [
    ("overloaded_error", "overloaded", "is overloaded right now"),
    ("api_error", "server_error", "had an internal error"),
    ("rate_limit_error", "rate_limited", "is rate-limiting us right now"),
])
async def test_an_error_event_in_claudes_answer_is_told_by_its_type(
    make: Make, error: str, kind: str, told: str,
) -> None:
    """Anthropic reports a failure mid-answer (an overload) as an `error` event in a stream
    that began 200 OK: told by the error's type, with no HTTP status. It was "HTTP 200", and
    the user heard the model "rejected the request"."""

    class FailsMidAnswer(ScriptedModelServer):
        """Streams the first half of each answer's events, then Anthropic's `error` event."""

        async def _sse(self, request: web.Request, events: list[bytes],
                       delay: float) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for event in events[:len(events) // 2]:
                await response.write(event)
            failure = {"type": "error", "error": {"type": error, "message": "Try again later."}}
            await response.write(f"event: error\ndata: {json.dumps(failure)}\n\n".encode())
            return response

    text = "The build failed with exit code 2 in the linker step of the release job."
    model, _ = await make({LITE: [ScriptedReply(status=500)], FLASH: [ScriptedReply(status=500)],
                           CLAUDE: [said(text, 0.9, words_per_chunk=2)]}, serve=FailsMidAnswer)
    said_first, ending = (await ask(model, llm.ChatContext.empty(), "Why?")).split(" … ")
    assert said_first and text.startswith(said_first)
    assert ending == (f"Sorry, that answer is incomplete: the model ({CLAUDE}) {told}. "
                      "Please ask again.")
    failed = turns(model)[0]["tried"][-1]["error"]
    assert failed == f"anthropic {CLAUDE}: {kind}: Try again later."


async def test_a_reply_with_nothing_to_say_is_no_answer(make: Make) -> None:
    """A confident header and nothing after it is no answer: the next tier is asked. A last
    tier that says nothing (Gemini's thinking can use up max_output_tokens) ends the turn in
    one plain sentence, never in silence."""
    model, replies = await make({
        LITE: [said("", 0.9)],
        FLASH: [said("The footer shows build 4812.", 0.9)],
        CLAUDE: [said("unused", 0.99)],
    })
    assert await ask(model, llm.ChatContext.empty(), "Which build?") == \
        "The footer shows build 4812."
    assert replies.asked == [LITE, FLASH]
    assert [t["outcome"] for t in turns(model)[0]["tried"]] == ["no_answer", "answered"]
    silent, _ = await make({
        LITE: [said("no idea", 0.1)],
        FLASH: [said("", 0.9)],
        CLAUDE: [ScriptedReply(text="")],
    })
    answer = await ask(silent, llm.ChatContext.empty(), "Which build?")
    assert answer == ("Sorry, the model (claude-sonnet-4-6) sent back an empty answer, so I "
                      "have no answer. Please ask again.")
    (turn,) = turns(silent)
    assert [t["outcome"] for t in turn["tried"]] == ["low_confidence", "no_answer", "no_answer"]
    assert turn["answered_tier"] is None


@pytest.mark.parametrize("opening", ["[[confidence: 85%]] ", "[[confidence: high]] ",
                                     "[[conf 0.9]]"])
async def test_a_malformed_header_is_never_spoken(make: Make, opening: str) -> None:
    """The last tier's answer is used whatever its header says, but the header is not part
    of it."""
    model, _ = await make({
        LITE: [said("?", 0.1)], FLASH: [said("?", 0.2)],
        CLAUDE: [ScriptedReply(text=opening + "The build failed with exit 2.")],
    })
    answer = await ask(model, llm.ChatContext.empty(), "What failed?")
    assert answer == "The build failed with exit 2."


@pytest.mark.parametrize("opening", ["[[confidence: 0.", "[[confidence: high]] "])
async def test_a_header_before_a_tool_call_is_not_spoken(make: Make, opening: str) -> None:
    """What was held back as a header when a tool call comes is not part of any answer; a
    header with no number states no confidence, so the call goes ahead."""
    model, replies = await make({LITE: [call("A17", opening)], FLASH: [said("unused", 0.9)],
                                 CLAUDE: [said("unused", 0.99)]})
    assert await ask(model, llm.ChatContext.empty(), "Where is order A17?") == ""
    assert turns(model)[0]["tool_calls"] == ["order_status"] and replies.asked == [LITE]


def test_header_is_read_across_chunks() -> None:
    header = ConfidenceHeader()
    assert header.feed("  [[conf") == ""
    assert header.feed("idence: 0.") == ""
    assert header.feed("85]] The ") == "The "
    assert header.confidence == 0.85 and header.done
    assert header.feed("rest") == "rest"
    plain = ConfidenceHeader()
    assert plain.feed("Plain answer") == "Plain answer"
    assert plain.done and plain.confidence is None
    clipped = ConfidenceHeader()
    assert clipped.feed("[[confidence: 7]] x") == "x" and clipped.confidence == 1.0
    percent = ConfidenceHeader()
    assert percent.feed("[[confidence: 85%]] x") == "x" and percent.confidence == 0.85
    worded = ConfidenceHeader()
    assert worded.feed("[[confidence: high]] x") == "x" and worded.confidence is None


def test_policy_caps_at_the_top_tier() -> None:
    policy = EscalationPolicy(tiers=2)
    assert policy.start("why is the build red") == (0, "first_turn")
    policy.answered(1)
    assert policy.start("why is the build red?") == (1, "question_repeated")


async def test_prompt_cache_is_marked_read_and_priced(make: Make) -> None:
    model, _ = await make({
        LITE: [said("unsure", 0.1)],
        FLASH: [said("unsure", 0.1)],
        CLAUDE: [said("The footer shows build 4812.", 0.9)],
    })
    ctx = llm.ChatContext.empty()
    # over Flash-Lite's floor of 2,048 tokens (the shortest prefix it caches)
    ctx.add_message(role="system", content="You are Sightline. " + "Stable instructions. " * 400)
    await ask(model, ctx, "What build number is in the footer?")
    await ask(model, ctx, "And which branch is it on?")
    claude = [c for c in calls(model) if c["model"] == CLAUDE]
    assert claude[0]["cache_write_tokens"] > 0 and claude[0]["cached_input_tokens"] == 0
    assert claude[1]["cached_input_tokens"] >= claude[0]["cache_write_tokens"]
    price = record(model).meter.prices.get(CLAUDE)
    assert price is not None
    expected = (
        claude[1]["input_tokens"] * price.input_per_mtok
        + claude[1]["cached_input_tokens"] * price.cached_input_per_mtok
        + claude[1]["cache_write_tokens"] * price.cache_write_per_mtok
        + claude[1]["output_tokens"] * price.output_per_mtok
    ) / 1e6
    assert claude[1]["cost_usd"] == pytest.approx(expected)
    # Gemini's implicit cache: the long shared prefix of the second request is read cheaply
    lite = [c for c in calls(model) if c["model"] == LITE]
    assert lite[0]["cached_input_tokens"] == 0 and lite[1]["cached_input_tokens"] > 2048
    summary = record(model).summary()
    assert 0 < summary["prompt_cache"]["hit_rate"] < 1
    assert summary["prompt_cache"]["saved_usd"] > 0


async def test_claude_requests_carry_cache_breakpoints(make: Make) -> None:
    model, replies = await make({LITE: [said("x", 0.0)], FLASH: [said("x", 0.0)],
                                 CLAUDE: [said("Fine.", 0.9)]})
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="system", content="Instructions.")
    await ask(model, ctx, "First question?")
    await ask(model, ctx, "Second question?")
    second = [r for r in replies.requests if r.model == CLAUDE][1].body
    assert second["system"][-1]["cache_control"] == {"type": "ephemeral"}
    marked = [b for m in second["messages"] for b in m["content"] if b.get("cache_control")]
    assert [b["text"] for b in marked] == ["Fine."]  # the last earlier turn: the answer
    assert "cache_control" not in second["messages"][-1]["content"][-1]


@pytest.mark.parametrize("provider", ["gemini", "anthropic"])
async def test_the_sdk_retries_a_server_error_as_configured(provider: str) -> None:
    tier = next(t for t in TIERS if t.provider == provider)
    settings = Settings.from_env({"SIGHTLINE_MODEL_RETRIES": "1"})
    for replies, answered in (([ScriptedReply(status=500), said("Fixed.", 0.9)], True),
                              ([ScriptedReply(status=500)] * 2, False)):
        async with ScriptedModelServer(replies) as server:
            client = make_provider(settings.with_overrides(
                gemini_api_key="k", anthropic_api_key="k", gemini_base_url=server.base_url,
                anthropic_base_url=server.base_url), tier)
            ctx = llm.ChatContext.empty()
            ctx.add_message(role="user", content="Why?")
            try:
                text = "".join([i async for i in client.stream(ctx, max_output_tokens=50)
                                if isinstance(i, str)])
            except ProviderError as exc:
                assert not answered and exc.status == 500
            else:
                assert answered and text.endswith("Fixed.")
            finally:
                await client.aclose()
            assert len(server.requests) == 2  # SIGHTLINE_MODEL_RETRIES=1: tried twice


def test_budget_thresholds_are_reported_once_and_cap_at_100_percent() -> None:
    guard = BudgetGuard(session_budget_usd=1.0, tenant_budget_usd=10.0, max_tier_over_budget=0,
                        tenant_spent_before_usd=6.2)
    assert guard.spend(0.5) == []
    crossed = guard.spend(0.45)
    assert [(e["scope"], e["threshold"]) for e in crossed] == [
        ("session", 0.7), ("session", 0.9), ("tenant", 0.7),
    ]
    assert guard.tier_cap() is None
    assert [(e["scope"], e["threshold"]) for e in guard.spend(0.65)] == [("session", 1.0)]
    assert guard.tier_cap() == 0
    assert [(e["scope"], e["threshold"]) for e in guard.spend(2.4)] == [
        ("tenant", 0.9), ("tenant", 1.0),
    ]
    assert guard.spend(1.0) == []
    summary = guard.summary()
    assert summary["escalation_capped_at_tier"] == 0
    assert summary["tenant_spent_usd"] == pytest.approx(11.2)
    assert summary["thresholds_crossed"] == [
        "session:100%", "session:70%", "session:90%", "tenant:100%", "tenant:70%", "tenant:90%",
    ]


async def test_a_spent_budget_stops_escalation(make: Make) -> None:
    guard = BudgetGuard(session_budget_usd=0.0001, tenant_budget_usd=None,
                        max_tier_over_budget=0)
    model, replies = await make({
        LITE: [said("Maybe a typo.", 0.3)],
        FLASH: [said("The import path is wrong.", 0.9)],
        CLAUDE: [said("unused", 0.9)],
    }, budget=guard)
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="system", content="Instructions. " * 200)
    first = await ask(model, ctx, "Why does the import fail?")
    assert first == "The import path is wrong."  # the budget ran out during this turn
    second = await ask(model, ctx, "why does the import fail here")
    assert second == "Maybe a typo.", "capped at tier 0, which answers even when unsure"
    assert replies.asked == [LITE, FLASH, LITE]
    last = turns(model)[-1]
    assert last["start_tier"] == 0 and last["reason"] == "question_repeated+budget_cap"
    events = [json.loads(line) for line in record(model).events.path.read_text().splitlines()]
    crossed = [(e["detail"]["scope"], e["detail"]["threshold"]) for e in events
               if e["kind"] == "budget"]
    assert crossed == [("session", 0.7), ("session", 0.9), ("session", 1.0)]
    summary = record(model).summary()
    assert summary["budget"]["escalation_capped_at_tier"] == 0


class Orders:
    """A test tool that records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    @llm.function_tool
    async def order_status(self, order_id: str) -> str:
        """Look up an order's shipping status.

        Args:
            order_id: the order number.
        """
        self.asked.append(order_id)
        return f"order {order_id}: shipped on 2026-11-20"


def call(order_id: str, header: str = "") -> ScriptedReply:
    return ScriptedReply(text=header, tool_calls=(ScriptedToolCall("order_status",
                                                                   {"order_id": order_id}),))


async def ask_about_an_order(model: llm.LLM) -> tuple[Any, Orders, Any]:
    """One question through a real AgentSession with the order tool: the run, the tool (what
    it was asked) and the session's model usage."""
    orders = Orders()
    session: AgentSession = AgentSession(llm=model)
    await session.start(Agent(instructions="Help with orders.", tools=[orders.order_status]),
                        record=False)
    try:
        run = await session.run(user_input="Where is my order A17?")
        usage = session.usage.model_usage
    finally:
        await session.aclose()
    return run, orders, usage


def tool_results(request: CapturedRequest) -> list[str]:
    """The tool results a request carries back, in the provider's own wire form."""
    if request.provider == "gemini":
        return [p["functionResponse"]["response"]["output"]
                for c in request.body["contents"] for p in c["parts"] if "functionResponse" in p]
    return [b["content"] for m in request.body["messages"] if isinstance(m["content"], list)
            for b in m["content"] if b.get("type") == "tool_result"]


@pytest.mark.parametrize("tier", [0, 1, 2])
async def test_tool_calls_work_whichever_tier_answers(make: Make, tier: int) -> None:
    # the tiers below are unsure; one of them even tries a tool call, which must not run
    below = [call("WRONG", "[[confidence: 0.2]] "), said("Not sure.", 0.1)]
    model, replies = await make({
        t.model: ([call("A17"), said("Order A17 shipped on November 20.", 0.9)]
                  if i == tier else [below[i % 2]])
        for i, t in enumerate(TIERS)
    })
    run, orders, usage = await ask_about_an_order(model)
    reply = " ".join(e.item.text_content or "" for e in run.events
                     if e.type == "message" and e.item.role == "assistant")
    assert reply == "Order A17 shipped on November 20."
    assert orders.asked == ["A17"]
    assert replies.asked == [t.model for t in TIERS[:tier + 1]] + [TIERS[tier].model]
    answer_request = replies.requests[-1]
    assert tool_results(answer_request) == ["order A17: shipped on 2026-11-20"]
    assert [r.body.get("tools") is not None for r in replies.requests] == [True] * len(
        replies.requests)
    acted, answered = turns(model)
    assert acted["tool_calls"] == ["order_status"] and acted["answered_tier"] == tier
    assert [t["outcome"] for t in acted["tried"]] == ["low_confidence"] * tier + ["tool_call"]
    assert answered["reason"] == "tool_result" and answered["start_tier"] == tier
    assert answered["answered_tier"] == tier and answered["tool_calls"] == []
    summary = record(model).summary()
    assert summary["turns"]["tool_calls"] == {"order_status": 1}
    # LiveKit's session.usage counts each tier under its own model name, as the ledger does
    reported = {u.model: (u.input_tokens, u.output_tokens) for u in usage
                if getattr(u, "input_tokens", 0) or getattr(u, "output_tokens", 0)}
    assert reported == {
        name: (t["input_tokens"] + t["cached_input_tokens"] + t["cache_write_tokens"],
               t["output_tokens"])
        for name, t in summary["by_model"].items()
    }


class CallsFirst(ScriptedModelServer):
    """Gemini can stream a tool call and then text in the same reply; the scripted server
    writes text first, so this one puts each Gemini chunk's calls ahead of its text."""

    @staticmethod
    async def _sse(request: Any, events: list[bytes], delay: float) -> Any:
        def calls_first(event: bytes) -> bytes:
            if not event.startswith(b"data: "):
                return event
            chunk = json.loads(event[len(b"data: "):])
            for candidate in chunk["candidates"]:
                candidate["content"]["parts"].sort(key=lambda part: "functionCall" not in part)
            return f"data: {json.dumps(chunk)}\r\n\r\n".encode()

        return await ScriptedModelServer._sse(request, [calls_first(e) for e in events], delay)


async def test_a_tier_that_called_a_tool_and_says_more_keeps_the_turn(make: Make) -> None:
    """Text after a tool call (no header, as the tier was told) is not an unsure answer: the
    call already went to LiveKit, so the next tier is not asked (it would call the tool a
    second time). LiveKit speaks text beside a tool call, so the text is passed on."""
    checking = ScriptedReply(text="Let me check that order.", words_per_chunk=50,
                             tool_calls=(ScriptedToolCall("order_status", {"order_id": "A17"}),))
    model, replies = await make({
        LITE: [checking, said("Order A17 shipped on November 20.", 0.9)],
        FLASH: [call("A17"), said("unused", 0.9)],
        CLAUDE: [said("unused", 0.99)],
    }, serve=CallsFirst)
    run, orders, _ = await ask_about_an_order(model)
    assert orders.asked == ["A17"]
    assert replies.asked == [LITE, LITE]
    said_aloud = [e.item.text_content for e in run.events
                  if e.type == "message" and e.item.role == "assistant"]
    assert said_aloud == ["Let me check that order.", "Order A17 shipped on November 20."]
    acted, answered = turns(model)
    assert [t["outcome"] for t in acted["tried"]] == ["tool_call"]
    assert acted["answered_tier"] == 0 and answered["answered_tier"] == 0


async def test_images_are_sized_per_provider_and_billed_in_the_ledger(make: Make) -> None:
    model, replies = await make({LITE: [said("?", 0.1)], FLASH: [said("?", 0.2)],
                                 CLAUDE: [said("The build failed with exit 2.", 0.9)]})
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content=["What failed?", llm.ImageContent(image=Desk().frame())])
    parts: list[str] = []
    async with model.chat(chat_ctx=ctx) as stream:
        async for chunk in stream:
            parts.append(chunk.delta.content if chunk.delta and chunk.delta.content else "")
    assert "".join(parts) == "The build failed with exit 2."
    # what the wire-format server billed for the JPEG each provider received
    assert [r.image_tokens for r in replies.requests] == [516, 516, 1199]
    logged = calls(model)
    assert [c["image_tokens"] for c in logged] == [516, 516, 1199]
    assert [c["image_tokens_full_resolution"] for c in logged] == [1548, 1548, 1599]
    sonnet = PriceTable.load().get(CLAUDE)
    assert sonnet is not None
    assert logged[2]["image_cost_usd"] == pytest.approx(1199 * sonnet.input_per_mtok / 1e6)
    images = record(model).summary()["images"]
    assert (images["sent"], images["tokens"], images["tokens_at_full_resolution"]) == (
        3, 2231, 4695)
    assert images["cost_usd"] == pytest.approx(sum(c["image_cost_usd"] for c in logged))
    assert images["saved_usd"] > 0


async def test_a_carried_screenshot_is_billed_at_the_rate_of_its_place_in_the_cache(
    make: Make,
) -> None:
    """While the screen is unchanged, the screenshot stays on the question that sent it, in
    the prefix Claude caches: the first request that carries it past the cache mark writes it
    (at the cache-write rate), the next reads it (at the cached rate). Its share of each call
    is priced so, not at the fresh input rate the call's own new frame is billed at."""
    model, replies = await make({
        LITE: [said("unsure", 0.1)], FLASH: [said("unsure", 0.1)],
        CLAUDE: [said("The build failed with exit 2.", 0.9)],
    })
    screen = ScreenWatcher(FrameSampler(1.0), lambda _d: None)
    turn = TurnContext(ScreenContext(screen, "changed"))
    desk = Desk()
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="system", content="You are Sightline. " + "Stable instructions. " * 100)
    for t, question in enumerate(["What failed?", "Which step ran last?", "Where is its log?"]):
        screen.offer(float(t), desk.frame())  # the same screen: no new screenshot after the first
        ctx.add_message(role="user", content=question)
        ctx.add_message(role="assistant", content=await reply(model, await turn.build(ctx)))

    claude = [c for c in calls(model) if c["model"] == CLAUDE]
    assert [r.image_tokens for r in replies.requests if r.model == CLAUDE] == [1199] * 3
    assert [c["image_tokens_unsent"] for c in claude] == [0, 1199, 1199]
    first, carried, read = claude
    assert first["cached_input_tokens"] == 0  # the instructions written, the frame fresh
    assert carried["cache_write_tokens"] > 1199 and read["cached_input_tokens"] > (
        carried["cached_input_tokens"] + 1199)
    sonnet = PriceTable.load().get(CLAUDE)
    assert sonnet is not None
    rates = [sonnet.input_per_mtok, sonnet.cache_write_per_mtok, sonnet.cached_input_per_mtok]
    assert rates[2] < rates[0] < rates[1]
    assert [c["image_cost_usd"] for c in claude] == [
        pytest.approx(1199 * rate / 1e6) for rate in rates]
    assert [c["image_full_resolution_cost_usd"] for c in claude] == [
        pytest.approx(1599 * rate / 1e6) for rate in rates]
    assert all(c["image_cost_usd"] < c["cost_usd"] for c in claude)
    images = record(model).summary()["images"]
    assert images["cost_usd"] == pytest.approx(sum(c["image_cost_usd"] for c in calls(model)))


async def test_a_turn_records_its_latency_and_whether_the_user_cut_it_short(make: Make) -> None:
    """First words and end of the round are timed when they happen (the quality report's
    latency percentiles read them); a round the user interrupts is marked so."""
    model, _ = await make({
        LITE: [said("Short answer.", 0.9, delay_s=0.2),
               said("A long answer " * 40, 0.9, chunk_delay_s=0.05, words_per_chunk=2)],
        FLASH: [said("unused", 0.9)],
        CLAUDE: [said("unused", 0.99)],
    })
    ctx = llm.ChatContext.empty()
    await ask(model, ctx, "What is on line 3?")
    ctx.add_message(role="user", content="And what about the footer?")
    async with model.chat(chat_ctx=ctx) as stream:
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                break  # the user speaks over the agent: LiveKit closes the stream
    first, cut = turns(model)
    assert first["top_tier"] == 2 and first["interrupted"] is False
    assert 200 <= first["first_token_ms"] <= first["latency_ms"]
    assert cut["interrupted"] is True and cut["first_token_ms"] is not None
    assert cut["tried"][0]["outcome"] == "cancelled"


async def test_a_preemptive_round_dropped_unplayed_is_no_turn_and_no_earlier_question(
    make: Make,
) -> None:
    """livekit-agents answers a transcript before the turn ends (preemptive generation) and
    drops that reply unplayed when the user goes on. The round stays billed, is marked
    discarded, and the whole question is a first question, not a repeat of its first half."""
    from livekit.agents.voice.agent_activity import _SpeechHandleContextVar
    from livekit.agents.voice.speech_handle import SpeechHandle

    model, replies = await make({LITE: [said("(scripted) It marks the failing line.", 0.9)]})
    first_half = SpeechHandle.create()  # a preemptive reply: never scheduled
    token = _SpeechHandleContextVar.set(first_half)
    try:
        await ask(model, llm.ChatContext.empty(), "What does the red line at the")
    finally:
        _SpeechHandleContextVar.reset(token)
    first_half._cancel()  # what livekit-agents does when the transcript grows
    await ask(model, llm.ChatContext.empty(), "What does the red line at the bottom mean?")

    rounds = turns(model)
    assert [(t["start_tier"], t["reason"]) for t in rounds] == [
        (0, "first_turn"), (0, "first_turn")]
    events = [json.loads(line) for line in record(model).events.path.read_text().splitlines()]
    assert [e["detail"]["request_id"] for e in events if e["kind"] == "round_discarded"] == [
        rounds[0]["request_id"]]
    assert replies.asked == [LITE, LITE]
    summary = await record(model).close("completed")
    assert summary["turns"]["user_turns"] == 1 and summary["turns"]["discarded_rounds"] == 1
    assert summary["turns"]["model_rounds"] == 2


class _Tools:
    @llm.function_tool
    async def find(self, query: str) -> str:
        """Find something."""
        return query

    @llm.function_tool
    async def forget(self, key: str) -> str:
        """Forget something."""
        return key


def test_tool_schemas_are_built_once_per_set_of_tools() -> None:
    """A session asks with the same tools every turn, and every session of a process with the
    same tools: their schemas are built once (livekit-agents builds them from signatures, ~5 ms
    a request), again only for other tools, and what a caller does to them does not reach the
    next request."""
    built: list[list[str]] = []

    def build(tools: llm.ToolContext) -> list[dict[str, Any]]:
        built.append(sorted(tools.function_tools))
        return tools.parse_function_tools("google")

    schemas = ToolSchemas(build, keep=2)
    holder, other_session = _Tools(), _Tools()
    tools = [holder.find, holder.forget]
    first = schemas(llm.ToolContext(tools))
    first[0]["name"] = "changed by an SDK"
    again = schemas(llm.ToolContext(list(tools)))
    assert sorted(s["name"] for s in again) == ["find", "forget"]
    assert schemas(llm.ToolContext([other_session.find, other_session.forget])) == again
    assert built == [["find", "forget"]]
    assert sorted(s["name"] for s in schemas(llm.ToolContext(tools[:1]))) == ["find"]
    assert built == [["find", "forget"], ["find"]]
    schemas(llm.ToolContext(tools[1:]))  # a third set: the least recently used one goes
    schemas(llm.ToolContext(tools[:1]))
    schemas(llm.ToolContext(tools))
    assert built == [["find", "forget"], ["find"], ["forget"], ["find", "forget"]]
    assert schemas(None) == []


def test_tool_schemas_are_built_once_for_a_burst_of_sessions() -> None:
    """Sessions start on threads of their own: a burst's first turns, asking at once, wait for
    one build rather than each building."""
    built: list[int] = []

    def build(tools: llm.ToolContext) -> list[dict[str, Any]]:
        built.append(1)
        time.sleep(0.05)  # long enough for the other threads to ask meanwhile
        return tools.parse_function_tools("google")

    schemas = ToolSchemas(build)
    sessions = [_Tools() for _ in range(6)]
    with ThreadPoolExecutor(len(sessions)) as pool:
        answers = list(pool.map(
            lambda s: schemas(llm.ToolContext([s.find, s.forget])), sessions))
    assert built == [1]
    assert all(a == answers[0] for a in answers)


async def test_gemini_sends_the_tools_every_turn_but_builds_them_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """google-genai validates every field of its tool objects when they are built: a process
    builds them once per set of tools, whichever session asks, and each request still carries
    them whole."""
    calls: list[int] = []

    def counted(tools: llm.ToolContext) -> list[Any]:
        calls.append(1)
        return providers._gemini_tools(tools)

    monkeypatch.setattr(providers, "GEMINI_TOOLS", ToolSchemas(counted, fresh=list))
    async with ScriptedModelServer([said(f"Answer {i}.") for i in range(4)]) as server:
        for _ in range(2):  # two sessions, each with its own agent's tools and provider
            holder = _Tools()
            functions = [holder.find, holder.forget]  # as an agent holds them, turn after turn
            provider = GeminiProvider(api_key="k", model=LITE, base_url=server.base_url,
                                      timeout_s=2.0, retries=0)
            try:
                for question in ("First?", "Second?"):
                    ctx = llm.ChatContext.empty()
                    ctx.add_message(role="user", content=question)
                    tools = llm.ToolContext(functions)
                    assert [i async for i in provider.stream(ctx, max_output_tokens=50,
                                                             tools=tools) if isinstance(i, str)]
            finally:
                await provider.aclose()
    sent = [sorted(d["name"] for t in r.body["tools"] for d in t["functionDeclarations"])
            for r in server.requests]
    assert sent == [["find", "forget"]] * 4
    assert all(r.body["tools"] == server.requests[0].body["tools"] for r in server.requests)
    assert len(calls) == 1


async def test_gemini_requests_are_the_same_with_the_quick_membership_test(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """google-genai asks `name in model` of its pydantic models for every field while building
    a request; the providers answer that test directly instead of through pydantic's field
    iteration. The body a request sends (instructions, history, a screenshot, tools) is the
    same either way, and so is every answer to the test."""
    assert genai_common.BaseModel.__contains__ is providers._model_contains

    def membership_answers() -> tuple[bool, ...]:
        part = genai_types.Part(text="on screen")
        return ("text" in part, ("text", "on screen") in part, ("text", "other") in part,
                mock.ANY in part)

    answers = membership_answers()
    assert answers == (False, True, False, True)

    async def sent_body() -> dict[str, Any]:
        holder = _Tools()
        ctx = llm.ChatContext.empty()
        ctx.add_message(role="system", content="You are Sightline.")
        ctx.add_message(role="user", content="Earlier?")
        ctx.add_message(role="assistant", content="Earlier answer.")
        screenshot = llm.ImageContent(image=Desk().frame())
        ctx.add_message(role="user", content=["What failed?", screenshot])
        async with ScriptedModelServer([said("It failed.")]) as server:
            provider = GeminiProvider(api_key="k", model=LITE, base_url=server.base_url,
                                      timeout_s=2.0, retries=0)
            try:
                assert [i async for i in provider.stream(
                    ctx, max_output_tokens=50, tools=llm.ToolContext([holder.find, holder.forget]))
                    if isinstance(i, str)] == ["It failed."]
            finally:
                await provider.aclose()
        (request,) = server.requests
        return request.body

    quick = await sent_body()
    screenshot = quick["contents"][-1]["parts"][1]["inlineData"]
    assert screenshot["mime_type"] == "image/jpeg" and screenshot["data"]
    monkeypatch.delattr(genai_common.BaseModel, "__contains__")
    assert membership_answers() == answers
    assert await sent_body() == quick
