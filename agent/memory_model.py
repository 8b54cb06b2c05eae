"""The cheapest cascade tier as the model that keeps user memory (`memory.keeper.MemoryModel`).

Memory updates run in the background, outside any LiveKit turn: this adapter sends the keeper's
prompt through tier 0's provider (the cascade's own client, which closes it; each request marked
`purpose: memory`), gives the reply's text to the keeper,
and records the call in the session's ledger with what the keeper did with it. A provider
failure, a timeout or an unusable reply is the call's error: logged, recorded, never raised. A
call cancelled (the session closing before the keeper is done) is recorded too, billed like a
cascade tier's: what the provider reported, else an estimate (`metering.settled_usage`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from livekit.agents import llm
from livekit.agents.telemetry import tracer

from memory.keeper import ReadReply

from .config import Tier
from .metering import CostMeter, settled_usage
from .pricing import Usage
from .providers import ChatProvider, ProviderError

log = logging.getLogger("sightline.memory")

PURPOSE = "memory"


class TierMemoryModel:
    def __init__(
        self, provider: ChatProvider, tier: Tier, meter: CostMeter, timeout_s: float,
    ) -> None:
        self._provider, self._tier, self._meter = provider, tier, meter
        self._timeout_s = timeout_s

    async def ask(
        self, prompt: llm.ChatContext, *, max_output_tokens: int, read: ReadReply,
    ) -> None:
        started = time.perf_counter()
        reported: Usage | None = None
        text, error, prompt_billed, ended = "", None, True, False
        done: dict[str, int] = {}
        try:
            async with asyncio.timeout(self._timeout_s):
                with tracer.start_as_current_span("sightline.memory_update"):
                    async for item in self._provider.stream(
                        prompt, max_output_tokens=max_output_tokens, purpose=PURPOSE,
                    ):
                        if isinstance(item, Usage):
                            reported = item
                        elif isinstance(item, str):
                            text += item
        except ProviderError as exc:
            error, prompt_billed = str(exc), exc.prompt_billed
        except TimeoutError:
            error = f"{self._tier.provider} {self._tier.model}: no memory update in time"
        except asyncio.CancelledError:
            error = "cancelled"  # the keeper closed with the session: the call is still billed
            raise
        else:
            ended = True
            try:
                done = read(text)
            except ValueError as exc:
                error = f"unusable memory reply: {exc}"
        finally:
            if error is not None:
                log.warning("memory update skipped for this exchange: %s", error)
            usage, source = settled_usage(reported, prompt=prompt, received=text,
                                          partial=not ended, prompt_billed=prompt_billed)
            self._meter.model_call(
                provider=self._tier.provider, model=self._tier.model, usage=usage, images=0,
                latency_ms=(time.perf_counter() - started) * 1000, error=error,
                detail={"purpose": PURPOSE, "usage": source, **done},
            )
