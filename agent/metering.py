"""Prices what the session's models did and records it in the event log.

A model call becomes one event that carries its dollars: the call's cost, the share of it its
images took (each at the rate the provider's cache report gives its place in the prompt: fresh,
written to the cache, or read from it), what those images would have cost at full resolution,
what not sending an unchanged screen again saved (priced by the place of the screenshot held
instead) and what the prompt cache saved. A cascade turn carries its cost and what the top
tier alone would have charged for the same tokens. A streamed call that ended before the
provider reported its usage is billed an estimate, marked so (`settled_usage`). Everything
downstream (totals, budgets, reports) adds these figures up; nothing prices twice. A model
missing from the price table is recorded with `cost_usd: null` and logged once, never guessed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from memory.embeddings import EmbeddingCall
from memory.rerank import RerankCall

from .event_log import Event, Recorder
from .pricing import PriceTable, Usage, estimate_text_tokens, estimate_tokens

if TYPE_CHECKING:  # livekit-agents takes ~1 s to import: `kb ingest|search` meter without it
    from livekit.agents import llm

log = logging.getLogger("sightline.costs")

MODEL_KINDS = ("model_call", "model_error")  # the events that carry a model's cost


def _rounded(value: float | None) -> float | None:
    return round(value, 8) if value is not None else None


def _parts(item: llm.ChatItem) -> Sequence[object]:
    """What one item of a request sends, in order: a message's parts (text, images), a tool
    call's name and arguments, a tool result's text."""
    if item.type == "message":
        return item.content
    if item.type == "function_call":
        return [item.name + item.arguments]
    if item.type == "function_call_output":
        return [item.output]
    return []


def estimate_prompt_tokens(prompt: llm.ChatContext) -> int:
    """A request's text in tokens, by the wire-format server's rule (~4 characters a token):
    its messages (instructions included), tool calls and tool results. Its images are left to
    the caller, which knows their tokens exactly (`agent/images.py`); the tool definitions are
    not counted, so the estimate errs low."""
    return estimate_text_tokens("\n".join(
        part for item in prompt.items for part in _parts(item) if isinstance(part, str)))


@dataclass(frozen=True)
class PromptImage:
    """One image of a request as the meter prices it: its billed tokens, the same frame's at
    full resolution, the estimated tokens of the prompt after it, which place it in the
    provider's cache report (`ModelPrice.input_rate`), and whether an earlier question carried
    it (else the newest question sends it)."""

    tokens: int
    full_resolution_tokens: int
    after: int
    carried: bool

    @property
    def middle(self) -> float:
        """Its middle's tokens before the prompt's end: where its run of the report is found.
        A cache boundary never cuts an image, so the estimate of its place may be off by half
        an image either way and still find its run."""
        return self.after + self.tokens / 2


def images_in_prompt(
    prompt: llm.ChatContext, bill: Callable[[object], tuple[int, int] | None],
) -> list[PromptImage]:
    """The request's images in order, each with the tokens that follow it to the prompt's end.
    `bill`: a message part's tokens and full-resolution tokens when it is an image the request
    is billed for, else None. Counted from the end: what follows an image is the conversation
    after it, text the estimate reads; what precedes it holds the tool definitions, which it
    does not. (Only the first system message moves to the front in the providers' formats; a
    later one, such as the cascade's confidence protocol, is sent where it stands.)"""
    placed: list[PromptImage] = []
    after = 0
    carried = False  # until past the newest question
    for item in reversed(prompt.items):
        for part in reversed(_parts(item)):
            if isinstance(part, str):
                after += estimate_text_tokens(part)
            elif (billed := bill(part)) is not None:
                placed.append(PromptImage(*billed, after, carried))
                after += billed[0]
        carried = carried or (item.type == "message" and item.role == "user")
    placed.reverse()
    return placed


def settled_usage(
    reported: Usage | None, *, prompt: llm.ChatContext | None, received: str, partial: bool,
    prompt_billed: bool = True, image_tokens: int = 0,
) -> tuple[Usage, str]:
    """What a streamed model call is billed once it ended, however it ended, and where the
    figures come from: `reported` (the provider's latest report, if any arrived), `estimated`
    or `unbilled`. A provider bills a prompt once it is sent, so a call cancelled or timed out
    before the first report (Gemini's first chunk, Claude's `message_start`) is billed its
    prompt's estimate (`image_tokens` for its images) and what it received. `prompt`: the
    request as it went out, None when it never did; `prompt_billed`: False when no attempt of
    it went out unrefused (the call's `RequestWatch.billed`: each attempt cancelled or timed out
    while still connecting, or refused); `partial`: the stream was left before its end, so its
    output is at least the text `received`."""
    if reported is None:
        if prompt is None or not prompt_billed:
            return Usage(), "unbilled"
        usage = Usage(input_tokens=estimate_prompt_tokens(prompt) + image_tokens)
    else:
        usage = reported
    if partial or reported is None:
        usage = replace(usage,
                        output_tokens=max(usage.output_tokens, estimate_text_tokens(received)))
    return usage, "reported" if reported is not None else "estimated"


class CostMeter:
    """Prices calls into `events`: a session's event log, or a command's ledger for spend no
    session made (agent/command_ledger.py)."""

    def __init__(self, events: Recorder, prices: PriceTable) -> None:
        self._events = events
        self.prices = prices
        self._unpriced_logged: set[str] = set()

    def _price(self, model: str, usage: Usage) -> float | None:
        cost = self.prices.cost(model, usage)
        if cost is None and model not in self._unpriced_logged:
            self._unpriced_logged.add(model)
            log.warning("no price for model %s in %s: its cost is not counted", model,
                        self.prices.path)
        return cost

    def model_call(
        self,
        *,
        provider: str,
        model: str,
        usage: Usage,
        images: int,
        latency_ms: float,
        prompt_images: Sequence[PromptImage] = (),
        image_tokens_unsent: int = 0,
        error: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> Event:
        """One request to a model, answered or failed (a failed one is billed what arrived).
        `images`: how many it sent; `prompt_images`: those whose tokens and place are known.
        Each is billed as input tokens at the rate of the part of the prompt it lies in: a
        screenshot carried on an earlier message is in the cached prefix, written to the cache
        by the first request that carries it past the cache mark and read by the next ones.
        `image_tokens_unsent`: the current frame's tokens, had it been sent again although the
        screen had not changed (`_unsent_saving`)."""
        image_cost, full_resolution_cost = self._image_costs(model, usage, prompt_images)
        return self._events.record(
            MODEL_KINDS[1] if error else MODEL_KINDS[0],
            cost_usd=self._price(model, usage),
            provider=provider,
            model=model,
            input_tokens=usage.input_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            output_tokens=usage.output_tokens,
            search_units=usage.search_units,
            images=images,
            image_tokens=sum(image.tokens for image in prompt_images),
            image_tokens_full_resolution=sum(image.full_resolution_tokens
                                             for image in prompt_images),
            image_cost_usd=_rounded(image_cost),
            image_full_resolution_cost_usd=_rounded(full_resolution_cost),
            image_tokens_unsent=image_tokens_unsent,
            image_unsent_saved_usd=_rounded(
                self._unsent_saving(model, usage, prompt_images, image_tokens_unsent)),
            cache_saved_usd=_rounded(self.prices.cache_savings(model, usage.cached_input_tokens)),
            latency_ms=round(latency_ms, 1),
            detail={**(detail or {}), **({"error": error} if error else {})},
        )

    def _image_costs(
        self, model: str, usage: Usage, images: Sequence[PromptImage],
    ) -> tuple[float | None, float | None]:
        """The images' share of the call's cost, and the same frames' at full resolution: each
        at the rate of the run of the provider's report its middle falls in."""
        price = self.prices.get(model)
        if price is None:
            return None, None
        billed = full = 0.0
        for image in images:
            rate = price.input_rate(usage, image.middle)
            billed += image.tokens * rate
            full += image.full_resolution_tokens * rate
        return billed, full

    def _unsent_saving(
        self, model: str, usage: Usage, images: Sequence[PromptImage], unsent_tokens: int,
    ) -> float | None:
        """What leaving out the unchanged screen's new frame saved: the request holds the
        screenshot an earlier question carried instead (only the newest one stays attached),
        so the saving is the frame's tokens at the rate a new frame is billed at (fresh input,
        where the newest question ends the prompt) less the rate of the carried one's place in
        the provider's report, as its own share is priced. Read from the cache, that is a
        saving; written to it, as the first request that carries it past the cache mark does,
        it is not (Claude bills a write at 1.25x fresh input: the reads after it make that up).
        A call billed nothing, or whose request never went out, saved nothing."""
        price = self.prices.get(model)
        if price is None:
            return None
        carried = next((image for image in reversed(images) if image.carried), None)
        if carried is None:
            return 0.0
        return unsent_tokens * (price.input_rate(usage, 0)
                                - price.input_rate(usage, carried.middle))

    def rerank_call(self, call: RerankCall) -> None:
        """A reranker's call, billed per search unit."""
        self.model_call(
            provider=call.provider, model=call.model, usage=Usage(search_units=call.search_units),
            images=0, latency_ms=call.latency_ms, error=call.error,
            detail={"purpose": "rerank", "documents": call.documents},
        )

    def embedding_call(self, call: EmbeddingCall) -> None:
        """An embedding request (Gemini's): billed its texts' input tokens, which the provider
        does not report, so they are estimated from the characters sent (`usage: estimated`).
        A failed request is billed so too when it may have reached the provider, as a chat
        model's prompt is (`EmbeddingCall.billed`: an attempt of it went out, as its HTTP
        client saw, and no HTTP error or proxy's page answered); one refused or never sent is
        recorded unbilled. Both keep the error."""
        self.model_call(
            provider=call.provider, model=call.model,
            usage=Usage(input_tokens=estimate_tokens(call.characters) if call.billed else 0),
            images=0, latency_ms=call.latency_ms, error=call.error,
            detail={"purpose": "embedding", "texts": call.texts,
                    "usage": "estimated" if call.billed else "unbilled"},
        )

    def speech(self, metrics: Any, provider: str = "") -> None:
        """A speech engine's usage (livekit-agents' STTMetrics / TTSMetrics): audio heard is
        billed by the second, speech by the character, at the engine's model price. `provider`
        is the configured one (agent/speech.py); the engine's own report is kept as `served_by`
        when it differs (an OpenAI-compatible endpoint's host)."""
        heard = getattr(metrics, "type", "") == "stt_metrics"
        model = metrics.metadata.model_name if metrics.metadata else None
        reported = metrics.metadata.model_provider if metrics.metadata else None
        served_by = {"served_by": reported} if provider and reported not in (None, provider) else {}
        provider = provider or reported
        usage = (Usage(audio_seconds=metrics.audio_duration) if heard
                 else Usage(characters=metrics.characters_count))
        model = model or "unknown"
        self._events.record(
            "speech",
            cost_usd=self._price(model, usage),
            provider=provider or "unknown",
            model=model,
            detail={
                "direction": "stt" if heard else "tts",
                "audio_s": round(metrics.audio_duration, 3),
                "characters": 0 if heard else metrics.characters_count,
                "latency_ms": round(1000 * (metrics.duration if heard else metrics.ttfb), 1),
                **({} if heard else {"cancelled": metrics.cancelled}),
                **served_by,
            },
        )

    def round_discarded(self, request_id: str) -> None:
        """The cascade round `request_id` answered a reply that was never played (a superseded
        preemptive generation): its calls stay billed, but it is no user turn."""
        self._events.record("round_discarded", detail={"request_id": request_id})

    def turn(
        self, detail: dict[str, Any], *, cost_usd: float, answer_usage: Usage | None,
        top_model: str,
    ) -> None:
        """One round of the cascade: where it started and why, each tier tried with its
        confidence and outcome, and the tier that answered. `top_model`'s price for the answer's
        tokens is what the round would have cost on the top tier alone."""
        top_cost = self.prices.cost(top_model, answer_usage) if answer_usage else None
        self._events.record("turn", detail={
            **detail, "cost_usd": round(cost_usd, 8), "top_tier_cost_usd": _rounded(top_cost)})
