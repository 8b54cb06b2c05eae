"""One metered request to a cascade tier outside any LiveKit turn: the memory keeper's (tier 0
keeps user memory, `memory.keeper.MemoryModel`) and `gaps refresh`'s naming of a gap.

The prompt goes through the tier's provider (for the keeper, the cascade's own client, which
closes it; each request marked with its `purpose`), the reply's text to `read`, and the call
into the meter's ledger (a session's, or a command's: agent/command_ledger.py) with what `read`
did with it. A provider failure, a timeout or an unusable reply is the call's error: logged,
recorded, never raised. A call cancelled (a session closing before the keeper is done) is
recorded too, billed like a cascade tier's: what the provider reported, else an estimate
(`metering.settled_usage`), and nothing when no attempt of it had gone out (its `RequestWatch`:
timed out or cancelled while still connecting) or every one that had was refused.
"""

from __future__ import annotations

import asyncio
import logging
import time

from livekit.agents import llm
from livekit.agents.telemetry import tracer

from memory.http_failures import RequestWatch
from memory.keeper import ReadReply

from .config import Tier
from .metering import CostMeter, settled_usage
from .pricing import Usage
from .providers import ChatProvider, ProviderError

log = logging.getLogger("sightline.memory")

MEMORY_PURPOSE = "memory"


class MeteredTierCall:
    """A `memory.keeper.MemoryModel`, and any other tier call made off the reply path: `task`
    names what a failure skipped, in its warning line; `span`, the call's trace span."""

    def __init__(
        self, provider: ChatProvider, tier: Tier, meter: CostMeter, timeout_s: float, *,
        purpose: str = MEMORY_PURPOSE, task: str = "memory update for this exchange",
        span: str = "sightline.memory_update",
    ) -> None:
        self._provider, self._tier, self._meter = provider, tier, meter
        self._timeout_s = timeout_s
        self._purpose, self._task, self._span = purpose, task, span

    async def ask(
        self, prompt: llm.ChatContext, *, max_output_tokens: int, read: ReadReply,
    ) -> None:
        started = time.perf_counter()
        reported: Usage | None = None
        text, error, ended = "", None, False
        watch = RequestWatch()
        done: dict[str, int] = {}
        try:
            async with asyncio.timeout(self._timeout_s):
                with tracer.start_as_current_span(self._span):
                    async for item in self._provider.stream(
                        prompt, max_output_tokens=max_output_tokens, purpose=self._purpose,
                        watch=watch,
                    ):
                        if isinstance(item, Usage):
                            reported = item
                        elif isinstance(item, str):
                            text += item
        except ProviderError as exc:
            error = str(exc)
        except TimeoutError:
            error = f"{self._tier.provider} {self._tier.model}: no reply in time"
        except asyncio.CancelledError:
            error = "cancelled"  # e.g. the keeper closed with the session: still billed
            raise
        else:
            ended = True
            try:
                done = read(text)
            except ValueError as exc:
                error = f"unusable {self._purpose} reply: {exc}"
        finally:
            if error is not None:
                log.warning("%s skipped: %s", self._task, error)
            usage, source = settled_usage(reported, prompt=prompt, received=text,
                                          partial=not ended, prompt_billed=watch.billed)
            self._meter.model_call(
                provider=self._tier.provider, model=self._tier.model, usage=usage, images=0,
                latency_ms=(time.perf_counter() - started) * 1000, error=error,
                detail={"purpose": self._purpose, "usage": source, **done},
            )
