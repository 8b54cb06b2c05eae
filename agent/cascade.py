"""The model cascade as one LiveKit `llm.LLM`: the cheapest tier that is confident answers.

Each tier is told to open its reply with `[[confidence: 0.NN]]`. The stream is held back until that
header is read (a few tokens); below the tier's threshold the answer is dropped unseen and the next
tier is asked within the same turn. The header, or anything shaped like one (`[[ … ]]`), never
reaches the user. A missing or malformed header counts as low confidence. The last tier's answer
is always used, unless it says nothing: a reply with no words and no tool call is no answer, so the
next tier is asked, and after the last the user hears one plain sentence. A tier that called a tool
never hands the turn on: LiveKit already has the call.

Across turns, `EscalationPolicy` starts one tier higher when the user repeats or rephrases the
question or says the answer did not help, and back at tier 0 when the topic changes or the user
says it worked. Every turn is recorded in the session's event log (through the `CostMeter`, which
prices it): tiers tried, confidences, the tier that answered and why it started where it did.
Provider failures (429, 5xx, timeouts, a broken stream) fall through to the next tier after the
SDK's bounded retries; if every tier fails the user hears one plain sentence and the session goes
on.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any

from livekit.agents import llm
from livekit.agents.metrics import LLMMetrics
from livekit.agents.metrics.base import Metadata
from livekit.agents.telemetry import tracer
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions
from livekit.agents.voice.agent_activity import _SpeechHandleContextVar
from livekit.agents.voice.speech_handle import SpeechHandle
from opentelemetry.trace import Span

from memory.http_failures import RequestWatch

from .budget import BudgetGuard
from .config import Tier
from .images import ImageBill, ImageEncoder
from .metering import CostMeter, images_in_prompt, settled_usage
from .pricing import Usage
from .providers import ChatProvider, ProviderError

log = logging.getLogger("sightline.cascade")

CONFIDENCE_PROTOCOL = (
    "Begin every reply with your confidence that it is correct and complete, written exactly as "
    "[[confidence: 0.NN]] with a number from 0 to 1, then the reply itself. Be honest: a low "
    "number hands the question to a stronger model. When you need a tool, call it without the "
    "header; state your confidence in the reply that follows the tool's result."
)
BUDGET_SENTENCE = (
    "Sorry, I am not sure enough to answer that, and this session's budget does not allow "
    "asking a stronger model."
)
_HEADER = re.compile(r"^\s*\[\[([^\[\]]*)\]\]\s*")  # anything header-shaped: never spoken
_CONFIDENCE = re.compile(r"^\s*confidence\s*[:=]\s*([0-9]*\.?[0-9]+)\s*(%?)\s*$", re.I)
_HEADER_MAX_CHARS = 40  # more than this without a complete header: malformed


def failure_sentence(err: ProviderError, *, partial: bool = False) -> str:
    """What the user hears when the model failed: short, plain, and true. A request that never
    reached the model (`ProviderError.reached`: no attempt went out, its connection refused or
    still being made when its time ran out) "could not be reached"; one whose connection failed
    after it went out, before or during the answer, "broke off"; one the model refused with an
    error status, by that status's kind, though a retry then failed otherwise
    (`ProviderError.unanswered`). `partial`: part of the answer was already spoken, so the
    sentence ends that answer rather than saying there is none."""
    model = f"the model ({err.model})"
    if err.kind in ("connection", "timeout") and not err.reached:
        what = f"{model} could not be reached"
    elif err.kind == "connection":
        what = f"the connection to {model} broke off"
    else:
        what = model + " " + {
            "timeout": "took too long to answer",
            "rate_limited": "is rate-limiting us right now",
            "overloaded": "is overloaded right now",
            "unavailable": "is unavailable right now",
            "server_error": "had an internal error",
            "bad_response": "sent back something that is not an answer",
            "unknown_tool": "kept asking for a tool it does not have",
            "no_answer": "sent back an empty answer",
        }.get(err.kind, "rejected the request")
    if partial:
        return f"Sorry, that answer is incomplete: {what}. Please ask again."
    return f"Sorry, {what}, so I have no answer. Please ask again."


@dataclass
class ConfidenceHeader:
    """Reads the header off the first streamed text; `feed` returns text that may be spoken.
    Only what may still become a header (`[[` up to its `]]`) is held back."""

    buffer: str = ""
    done: bool = False
    confidence: float | None = None

    def feed(self, text: str) -> str:
        if self.done:
            return text
        self.buffer += text
        match = _HEADER.match(self.buffer)
        if match:
            self.done = True
            # models write the number their own way at times ("85%"); other words: no number
            number = _CONFIDENCE.match(match.group(1))
            if number:
                value = float(number.group(1)) / (100 if number.group(2) else 1)
                self.confidence = min(1.0, max(0.0, value))
            return self.buffer[match.end():]
        compact = re.sub(r"\s+", "", self.buffer)
        waiting = "[[".startswith(compact) or (compact.startswith("[[") and "]]" not in compact)
        if waiting and len(self.buffer) <= _HEADER_MAX_CHARS:
            return ""
        self.done = True  # malformed or missing: low confidence; the text is the answer as is
        return self.buffer


_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("the a an is are was to of in on it this that what why how do does i my me "
                  "you your and or for with can".split())
_NOT_HELPED = re.compile(
    r"\b(did ?n[o']?t help|does ?n[o']?t work|not working|still (?:get|see|broken|fail)|"
    r"same (?:error|problem)|that'?s wrong|that is wrong|try again|no,? that)", re.I)
_WORKED = re.compile(r"\b(that worked|it worked|works now|fixed it|thanks|thank you|perfect)\b",
                     re.I)


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1}


@dataclass
class EscalationPolicy:
    """Where the next turn starts: one tier above the last answer when the user asks again."""

    tiers: int
    similar: float = 0.5  # word overlap (Jaccard) that makes a question a rephrase
    _last_question: str | None = None
    _last_tier: int = 0

    def start(self, question: str) -> tuple[int, str]:
        previous, self._last_question = self._last_question, question
        if previous is None:
            return 0, "first_turn"
        if _WORKED.search(question):
            return 0, "user_confirmed"
        escalate = min(self._last_tier + 1, self.tiers - 1)
        if _NOT_HELPED.search(question):
            return escalate, "answer_did_not_help"
        a, b = _words(question), _words(previous)
        if a and b and len(a & b) / len(a | b) >= self.similar:
            return escalate, "question_repeated"
        return 0, "new_topic"

    def answered(self, tier: int) -> None:
        self._last_tier = tier

    def after_tool_result(self) -> tuple[int, str]:
        """The model's answer to a tool's result is the same user turn: the tier that called
        the tool goes on (a new question would have reset it)."""
        return self._last_tier, "tool_result"


@dataclass
class _Attempt:
    """One tier's try at a turn, as it streams."""

    bar: float  # the confidence it needs to answer alone (0 for the tier that must answer)
    header: ConfidenceHeader = field(default_factory=ConfidenceHeader)
    prompt: llm.ChatContext | None = None  # the request, once handed to the SDK
    watch: RequestWatch = field(default_factory=RequestWatch)  # whether it went out, may be billed
    reported: Usage | None = None  # the provider's latest usage report
    usage: Usage = field(default_factory=Usage)  # what it is billed, settled when it ends
    spoken: int = 0
    received: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    first_token_ms: float | None = None
    outcome: str = "failed"
    tool_calls: list[str] = field(default_factory=list)
    images: ImageBill = field(default_factory=ImageBill)

    def unsure(self) -> bool:
        """Below its bar before a word was sent or a tool called: the answer goes to the next
        tier instead. Once a call went out it is LiveKit's to run, so the tier that made it
        stays with the turn whatever it says next (else the next tier calls the tool again)."""
        return (not self.spoken and not self.tool_calls
                and (self.header.confidence or 0.0) < self.bar)

    def declines_tool_call(self) -> bool:
        """A tool call is an action, not an answer, so it needs no header; but a tier that
        said it is unsure hands the whole turn, tool call included, to the next tier."""
        confidence = self.header.confidence
        return (not self.spoken and not self.tool_calls
                and confidence is not None and confidence < self.bar)


@dataclass
class TurnRecord:
    start_tier: int
    reason: str
    tried: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[str] = field(default_factory=list)
    answered_tier: int | None = None
    budget_capped: bool = False
    cost_usd: float = 0.0
    answer_usage: Usage | None = None
    started: float = field(default_factory=time.perf_counter)
    first_sent_ms: float | None = None  # when the user got the round's first words

    def timing(self, cancelled: bool) -> dict[str, Any]:
        """The round's latency as the user lived it, recorded when it happens: from the
        round's start to its first words sent (None: nothing was sent) and to its end, and
        whether the user cut it short (interrupted, or left)."""
        return {
            "first_token_ms": (round(self.first_sent_ms, 1)
                               if self.first_sent_ms is not None else None),
            "latency_ms": round((time.perf_counter() - self.started) * 1000, 1),
            "interrupted": cancelled,
        }


class CascadeLLM(llm.LLM):
    def __init__(
        self,
        tiers: list[Tier],
        providers: list[ChatProvider],
        meter: CostMeter,
        turn_deadline_s: float,
        images: ImageEncoder,
        budget: BudgetGuard | None = None,
    ) -> None:
        super().__init__()
        if not tiers or len(tiers) != len(providers):
            raise ValueError("a cascade needs one provider per tier")
        self.tiers = tiers
        self._providers = providers
        self._meter = meter
        self._budget = budget
        self._deadline_s = turn_deadline_s
        self._images = images
        self.policy = EscalationPolicy(len(tiers))
        # rounds of preemptive generations not yet played, with the policy before each
        self.unplayed: dict[str, tuple[SpeechHandle, EscalationPolicy]] = {}

    def settle_unplayed(self) -> None:
        """Rounds of preemptive generations (started on a transcript before the user's turn
        ended) that livekit-agents dropped unplayed: the transcript changed (a pause mid-sentence
        splits it) and it asked again. Their calls stay billed, but they answered no user turn:
        the ledger marks them, and the policy forgets them (else the whole question would look
        like a repeat of its first half, and climb a tier). Runs before each round and when a
        preemptive reply ends, whichever comes first."""
        for request_id, (speech, before) in reversed(list(self.unplayed.items())):
            if speech.scheduled:
                del self.unplayed[request_id]
            elif speech.interrupted or speech.done():
                del self.unplayed[request_id]
                self.policy = before
                self._meter.round_discarded(request_id)

    def tier_cap(self) -> int | None:
        """The highest tier the budgets allow now (None: no limit)."""
        return self._budget.tier_cap() if self._budget is not None else None

    @property
    def model(self) -> str:
        return "cascade:" + ">".join(t.model for t in self.tiers)

    @property
    def provider(self) -> str:
        return "sightline-cascade"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        **_: Any,
    ) -> CascadeStream:
        return CascadeStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)

    async def aclose(self) -> None:
        for provider in self._providers:
            await provider.aclose()
        await super().aclose()


def _answers_tool_result(chat_ctx: llm.ChatContext) -> bool:
    return bool(chat_ctx.items) and chat_ctx.items[-1].type == "function_call_output"


def _repeats_unknown_tool(
    chat_ctx: llm.ChatContext, call: llm.FunctionToolCall, tools: llm.ToolContext | None,
) -> bool:
    """A call to a tool the agent does not have, when this user turn already called one: the
    model got LiveKit's error result for the first and is not given the same error again (a
    model that keeps asking would loop until LiveKit's tool-step limit and reply nothing)."""
    known = tools.function_tools if tools is not None else {}
    if call.name in known:
        return False
    for item in reversed(chat_ctx.items):
        if item.type == "message" and item.role == "user":
            return False
        if item.type == "function_call" and item.name not in known:
            return True
    return False


def _agent_initiated(chat_ctx: llm.ChatContext) -> bool:
    """A reply nobody asked for (`generate_reply(instructions=...)` adds its instructions as
    the last message): it starts at tier 0 and leaves the user's escalation state alone."""
    last = chat_ctx.items[-1] if chat_ctx.items else None
    return last is not None and last.type == "message" and last.role in ("system", "developer")


def _tier_attributes(span: Span, tried: dict[str, Any]) -> None:
    """A tier's span: its stated confidence (when it stated one) and its outcome."""
    if tried.get("confidence") is not None:
        span.set_attribute("sightline.confidence", tried["confidence"])
    span.set_attribute("sightline.outcome", str(tried.get("outcome", "failed")))


def _last_user_text(chat_ctx: llm.ChatContext) -> str:
    """The user's own words: the first text part (the turn context appends screen notes)."""
    for item in reversed(chat_ctx.items):
        if item.type == "message" and item.role == "user":
            return next((c for c in item.content if isinstance(c, str)), "")
    return ""


class CascadeStream(llm.LLMStream):
    _llm: CascadeLLM
    _record: TurnRecord

    async def _run(self) -> None:
        with tracer.start_as_current_span("sightline.turn") as span:
            await self._turn(span)

    async def _turn(self, span: Span) -> None:
        owner = self._llm
        request_id = f"turn_{uuid.uuid4().hex[:12]}"
        # the reply this round generates for: livekit-agents sets it around each generation
        # (a private name, no public accessor in 1.8.9); None outside a session (replay, tests)
        speech = _SpeechHandleContextVar.get(None)
        owner.settle_unplayed()
        if speech is not None and not speech.scheduled:  # a preemptive generation
            owner.unplayed[request_id] = (speech, replace(owner.policy))
        agent_initiated = _agent_initiated(self._chat_ctx)
        if _answers_tool_result(self._chat_ctx):
            start, reason = owner.policy.after_tool_result()
        elif agent_initiated:
            start, reason = 0, "agent_initiated"
        else:
            start, reason = owner.policy.start(_last_user_text(self._chat_ctx))
        cap = owner.tier_cap()
        if cap is not None and start > cap:
            start, reason = cap, f"{reason}+budget_cap"
        record = self._record = TurnRecord(start, reason)
        ctx = self._chat_ctx.copy()
        ctx.add_message(role="system", content=CONFIDENCE_PROTOCOL)
        deadline = time.monotonic() + owner._deadline_s
        last_error: ProviderError | None = None
        cancelled = False
        try:
            for index in range(start, len(owner.tiers)):
                # a budget used up mid-turn stops the climb: the tier at the cap answers as is
                cap = owner.tier_cap()
                if cap is not None and index > cap:
                    record.budget_capped = True
                    break
                final = index == len(owner.tiers) - 1 or index == cap
                with tracer.start_as_current_span("sightline.tier", attributes={
                        "sightline.tier": index, "gen_ai.request.model": owner.tiers[index].model,
                }) as tier_span:
                    try:
                        outcome, usage, error = await self._try_tier(
                            index, ctx, request_id, final, deadline, record
                        )
                    finally:
                        _tier_attributes(tier_span, record.tried[-1] if record.tried else {})
                if error is not None:
                    last_error = error
                elif outcome == "no_answer":
                    tier = owner.tiers[index]
                    last_error = ProviderError(tier.provider, tier.model, "no_answer", None,
                                               "no text and no tool call")
                if outcome in ("answered", "tool_call"):
                    record.answered_tier, record.answer_usage = index, usage
                    if not agent_initiated:
                        owner.policy.answered(index)
                    break
            if record.answered_tier is None and record.budget_capped:
                self._send(request_id, BUDGET_SENTENCE)
            elif record.answered_tier is None:
                # every tier failed, or the last one broke before saying anything
                failed = last_error or ProviderError("cascade", owner.tiers[-1].model,
                                                     "timeout", None, "no tier answered")
                self._send(request_id, failure_sentence(failed))
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            timing = record.timing(cancelled)
            span.set_attributes({
                "sightline.start_tier": record.start_tier, "sightline.reason": record.reason,
                "sightline.answered_tier": -1 if record.answered_tier is None
                else record.answered_tier,
                "sightline.interrupted": cancelled, "sightline.latency_ms": timing["latency_ms"],
                **({"sightline.first_token_ms": timing["first_token_ms"]}
                   if timing["first_token_ms"] is not None else {}),
            })
            for name in record.tool_calls:
                span.add_event("sightline.tool_call", {"sightline.tool": name})
            owner._meter.turn(
                {
                    "start_tier": record.start_tier, "reason": record.reason,
                    "tried": record.tried, "answered_tier": record.answered_tier,
                    "tool_calls": record.tool_calls,
                    "budget_capped": record.budget_capped,
                    "answered_model": (owner.tiers[record.answered_tier].model
                                       if record.answered_tier is not None else None),
                    "top_tier": len(owner.tiers) - 1,
                    "request_id": request_id,
                    **timing,
                },
                cost_usd=record.cost_usd, answer_usage=record.answer_usage,
                top_model=owner.tiers[-1].model,
            )
            if speech is not None and not speech.scheduled:
                speech.add_done_callback(lambda _handle: owner.settle_unplayed())

    async def _try_tier(
        self, index: int, ctx: llm.ChatContext, request_id: str, final: bool, deadline: float,
        record: TurnRecord,
    ) -> tuple[str, Usage, ProviderError | None]:
        """Ask one tier. Returns the outcome ("answered", "tool_call", "low_confidence",
        "no_answer" or "failed"), its usage and its error."""
        owner = self._llm
        tier = owner.tiers[index]
        attempt = _Attempt(bar=0.0 if final else tier.threshold)
        error: ProviderError | None = None
        try:
            await self._stream(attempt, owner._providers[index], tier, ctx, request_id, deadline)
        except ProviderError as exc:
            error = exc
        except TimeoutError:
            error = ProviderError.unanswered(tier.provider, tier.model, "timeout",
                                             "turn deadline", attempt.watch)
        except asyncio.CancelledError:
            attempt.outcome = "cancelled"  # the user interrupted or left: billed if sent
            raise
        finally:
            if error is not None:
                log.warning("tier %d (%s) failed: %s", index, tier.model, error)
                if attempt.tool_calls:  # the calls already went out: their results go on
                    attempt.outcome = "tool_call"
                elif attempt.spoken:  # part of this answer was already sent: end it plainly
                    self._send(request_id, " … " + failure_sentence(error, partial=True))
                    attempt.outcome = "answered"
            self._log_attempt(index, attempt, error, request_id, record)
        return attempt.outcome, attempt.usage, error

    async def _stream(
        self, attempt: _Attempt, provider: ChatProvider, tier: Tier, ctx: llm.ChatContext,
        request_id: str, deadline: float,
    ) -> None:
        """Read one tier's stream: hold text back until the header is read, then either drop
        the answer unseen (unsure) or pass it on as it arrives."""
        tools = llm.ToolContext(self._tools) if self._tools else None
        tier_ctx, attempt.images = await self._llm._images.prepare(ctx, tier.provider)
        # the request as the SDK sends it: billed once an attempt sent it and was not refused
        # (`attempt.watch`), however the call ends (this deadline, a cancel while it connects)
        attempt.prompt = tier_ctx
        reply = provider.stream(tier_ctx, max_output_tokens=tier.max_output_tokens, tools=tools,
                                watch=attempt.watch)
        async with (
            asyncio.timeout(max(0.1, deadline - time.monotonic())),
            aclosing(reply) as stream,
        ):
            async for item in stream:
                if isinstance(item, Usage):
                    attempt.reported = item
                    continue
                if isinstance(item, llm.FunctionToolCall):
                    if _repeats_unknown_tool(self._chat_ctx, item, tools):
                        raise ProviderError(
                            tier.provider, tier.model, "unknown_tool", None,
                            f"asked again for tool {item.name!r}, which does not exist")
                    if attempt.declines_tool_call():
                        attempt.outcome = "low_confidence"
                        return
                    self._call_tool(attempt, request_id, item)
                    continue
                if attempt.first_token_ms is None:
                    attempt.first_token_ms = (time.perf_counter() - attempt.started) * 1000
                attempt.received.append(item)
                text = attempt.header.feed(item)
                # the header still being read, or nothing after it yet: wait, as a tool call
                # may come next, which needs no header
                if not text:
                    continue
                if attempt.unsure():
                    attempt.outcome = "low_confidence"
                    return  # the rest is dropped unseen: nothing of this answer is sent
                self._speak(attempt, request_id, text)
        # text still held back here is part of a header at most: never spoken
        if attempt.tool_calls:
            attempt.outcome = "tool_call"
        elif attempt.unsure():
            attempt.outcome = "low_confidence"
        elif not attempt.spoken:
            # the stream ended with nothing to say (only a header, or a thinking model that
            # spent its whole output budget): not an answer, whatever confidence it stated
            attempt.outcome = "no_answer"
        else:
            attempt.outcome = "answered"

    def _call_tool(self, attempt: _Attempt, request_id: str, call: llm.FunctionToolCall) -> None:
        """Hand the call to LiveKit, which runs the tool and asks the cascade again with its
        result (see `after_tool_result`)."""
        attempt.tool_calls.append(call.name)
        self._event_ch.send_nowait(
            llm.ChatChunk(
                id=request_id,
                delta=llm.ChoiceDelta(role="assistant", tool_calls=[call]),
            )
        )

    def _speak(self, attempt: _Attempt, request_id: str, text: str) -> None:
        if text:
            attempt.spoken += len(text)
            self._send(request_id, text)

    def _log_attempt(
        self, index: int, attempt: _Attempt, error: ProviderError | None, request_id: str,
        record: TurnRecord,
    ) -> None:
        owner = self._llm
        tier = owner.tiers[index]
        # the frames priced as the request was prepared, placed in it now, off the path to
        # the first word; none when no request was made
        images = (images_in_prompt(attempt.prompt, attempt.images.billed)
                  if attempt.prompt is not None else [])
        partial = attempt.outcome not in ("answered", "tool_call") or error is not None
        attempt.usage, usage_source = settled_usage(
            attempt.reported, prompt=attempt.prompt, received="".join(attempt.received),
            partial=partial,
            prompt_billed=attempt.watch.billed,
            image_tokens=attempt.images.tokens,
        )
        record.tried.append({
            "tier": index, "model": tier.model, "confidence": attempt.header.confidence,
            "threshold": tier.threshold, "outcome": attempt.outcome,
            **({"error": str(error)} if error else {}),
        })
        record.tool_calls += attempt.tool_calls
        cancelled = attempt.outcome == "cancelled"
        event = owner._meter.model_call(
            provider=tier.provider, model=tier.model, usage=attempt.usage,
            images=attempt.images.images, prompt_images=images,
            image_tokens_unsent=attempt.images.unsent_tokens,
            latency_ms=(time.perf_counter() - attempt.started) * 1000,
            error=str(error) if error else ("cancelled" if cancelled else None),
            detail={
                "request_id": request_id, "tier": index, "outcome": attempt.outcome,
                "confidence": attempt.header.confidence,
                "first_token_ms": (round(attempt.first_token_ms, 1)
                                   if attempt.first_token_ms else None),
                "output_chars": attempt.spoken,
                **({"tool_calls": attempt.tool_calls} if attempt.tool_calls else {}),
                "usage_partial": partial, "usage": usage_source,
            },
        )
        record.cost_usd += event["cost_usd"] or 0.0
        self._report_usage(index, attempt, request_id)

    def _report_usage(self, index: int, attempt: _Attempt, request_id: str) -> None:
        """LiveKit's `session.usage` under the tier's own model name. (The cascade's own stream
        reports no usage, so nothing is counted twice.)"""
        tier = self._llm.tiers[index]
        usage = attempt.usage
        prompt = usage.input_tokens + usage.cached_input_tokens + usage.cache_write_tokens
        duration = time.perf_counter() - attempt.started
        self._llm.emit("metrics_collected", LLMMetrics(
            label=f"{self._llm.label}/tier{index}",
            request_id=request_id, timestamp=time.time(), duration=duration,
            ttft=attempt.first_token_ms / 1000 if attempt.first_token_ms else -1.0,
            cancelled=attempt.outcome == "cancelled",
            completion_tokens=usage.output_tokens, prompt_tokens=prompt,
            prompt_cached_tokens=usage.cached_input_tokens,
            cache_creation_tokens=usage.cache_write_tokens,
            total_tokens=prompt + usage.output_tokens,
            tokens_per_second=usage.output_tokens / duration if duration > 0 else 0.0,
            metadata=Metadata(model_name=tier.model, model_provider=tier.provider),
        ))

    def _send(self, request_id: str, content: str) -> None:
        record = self._record
        if content and record.first_sent_ms is None:
            record.first_sent_ms = (time.perf_counter() - record.started) * 1000
        self._event_ch.send_nowait(
            llm.ChatChunk(id=request_id, delta=llm.ChoiceDelta(role="assistant", content=content))
        )
