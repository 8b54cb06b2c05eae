"""The LiveKit `Agent`: default behaviour, except that each turn's context carries the screen.

`llm_node` is the one hook that runs for voice turns, typed `lk.chat` turns and `session.run()`
alike, which is why the screen is injected there and not in `on_user_turn_completed`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable

from livekit.agents import Agent, ModelSettings, llm

from .assist import LiveAssist
from .turn_context import INSTRUCTIONS, TurnContext

log = logging.getLogger("sightline.assist")

ASSIST_WAIT_S = 1.0  # the answer waits at most this long for the assist message to go out


class SightlineAgent(Agent):
    def __init__(
        self, turn_context: TurnContext, history: llm.ChatContext, tools: list[llm.Tool],
        assist: LiveAssist | None = None,
    ) -> None:
        super().__init__(instructions=INSTRUCTIONS, chat_ctx=history, tools=tools)
        self._turn_context = turn_context
        self._assist = assist

    async def llm_node(
        self,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        model_settings: ModelSettings,
    ) -> AsyncIterable[llm.ChatChunk | str]:
        # live assist for a new question runs beside the turn's own lookup and goes out before
        # the answer's first word (waiting at most ASSIST_WAIT_S)
        last = chat_ctx.items[-1] if chat_ctx.items else None
        assisting = None
        if (self._assist is not None and isinstance(last, llm.ChatMessage)
                and last.role == "user"):
            assisting = asyncio.create_task(self._assist(last.text_content or ""))
        turn_ctx = await self._turn_context.build(chat_ctx)
        if assisting is not None:
            done, _ = await asyncio.wait([assisting], timeout=ASSIST_WAIT_S)
            if not done:
                log.warning("live assist took over %.1f s; the answer goes first", ASSIST_WAIT_S)
        async for chunk in Agent.default.llm_node(self, turn_ctx, tools, model_settings):
            yield chunk
