"""A `ChatProvider` as a LiveKit `llm.LLM`, so AgentSession's streaming, interruptions and usage
reporting work unchanged, and every call lands in the cost ledger.

A failed call is answered with one plain sentence instead of an exception: LiveKit closes a
session after a few unrecoverable LLM errors, and Sightline must keep the session going. The
failure is still recorded, as a `model_error` event.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from livekit.agents import llm
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions

from .ledger import CostLedger
from .pricing import Usage
from .providers import ChatProvider, ProviderError

log = logging.getLogger("sightline.model")


def failure_sentence(err: ProviderError) -> str:
    """What the user hears when the model failed: short, plain, and true."""
    what = {
        "timeout": "took too long to answer",
        "rate_limited": "is rate-limiting us right now",
        "server_error": "had an internal error",
        "connection": "could not be reached",
    }.get(err.kind, "rejected the request")
    return f"Sorry, the model ({err.model}) {what}, so I have no answer. Please ask again."


def count_images(chat_ctx: llm.ChatContext) -> int:
    return sum(
        isinstance(c, llm.ImageContent)
        for item in chat_ctx.items
        if item.type == "message"
        for c in item.content
    )


class ProviderLLM(llm.LLM):
    def __init__(self, provider: ChatProvider, ledger: CostLedger, max_output_tokens: int) -> None:
        super().__init__()
        self._provider_impl = provider
        self._ledger = ledger
        self._max_output_tokens = max_output_tokens

    @property
    def model(self) -> str:
        return self._provider_impl.model

    @property
    def provider(self) -> str:
        return self._provider_impl.name

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        **_: Any,
    ) -> ProviderStream:
        return ProviderStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)

    async def aclose(self) -> None:
        await self._provider_impl.aclose()
        await super().aclose()


class ProviderStream(llm.LLMStream):
    _llm: ProviderLLM

    async def _run(self) -> None:
        owner = self._llm
        request_id = f"req_{uuid.uuid4().hex[:12]}"
        images = count_images(self._chat_ctx)
        started = time.perf_counter()
        first_token_ms: float | None = None
        usage = Usage()
        text_chars = 0
        error: ProviderError | None = None
        outcome = "cancelled"
        try:
            async for item in owner._provider_impl.stream(
                self._chat_ctx, max_output_tokens=owner._max_output_tokens
            ):
                if isinstance(item, Usage):
                    usage = item
                    continue
                if first_token_ms is None:
                    first_token_ms = (time.perf_counter() - started) * 1000
                text_chars += len(item)
                self._send(request_id, content=item)
            outcome = "ok"
        except ProviderError as exc:
            error, outcome = exc, "error"
            log.error("model call failed: %s", exc)
            sep = " … " if text_chars else ""
            self._send(request_id, content=sep + failure_sentence(exc))
        finally:
            owner._ledger.model_call(
                provider=owner.provider,
                model=owner.model,
                usage=usage,
                images=images,
                latency_ms=(time.perf_counter() - started) * 1000,
                error=str(error) if error else ("cancelled" if outcome == "cancelled" else None),
                detail={
                    "request_id": request_id,
                    "outcome": outcome,
                    "first_token_ms": round(first_token_ms, 1) if first_token_ms else None,
                    "output_chars": text_chars,
                },
            )
        self._event_ch.send_nowait(
            llm.ChatChunk(
                id=request_id,
                usage=llm.CompletionUsage(
                    completion_tokens=usage.output_tokens,
                    prompt_tokens=usage.input_tokens + usage.cached_input_tokens,
                    prompt_cached_tokens=usage.cached_input_tokens,
                    cache_creation_tokens=usage.cache_write_tokens,
                    cache_read_tokens=usage.cached_input_tokens,
                    total_tokens=usage.input_tokens + usage.cached_input_tokens
                    + usage.output_tokens,
                ),
            )
        )

    def _send(self, request_id: str, *, content: str) -> None:
        self._event_ch.send_nowait(
            llm.ChatChunk(id=request_id, delta=llm.ChoiceDelta(role="assistant", content=content))
        )
