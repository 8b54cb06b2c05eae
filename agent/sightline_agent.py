"""The LiveKit `Agent`: default behaviour, except that each turn's context carries the screen.

`llm_node` is the one hook that runs for voice turns, typed `lk.chat` turns and `session.run()`
alike, which is why the screen is injected there and not in `on_user_turn_completed`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable

from livekit.agents import Agent, ModelSettings, llm

from .turn_context import INSTRUCTIONS, TurnContext


class SightlineAgent(Agent):
    def __init__(
        self, turn_context: TurnContext, history: llm.ChatContext, tools: list[llm.Tool]
    ) -> None:
        super().__init__(instructions=INSTRUCTIONS, chat_ctx=history, tools=tools)
        self._turn_context = turn_context

    async def llm_node(
        self,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        model_settings: ModelSettings,
    ) -> AsyncIterable[llm.ChatChunk | str]:
        turn_ctx = await self._turn_context.build(chat_ctx)
        async for chunk in Agent.default.llm_node(self, turn_ctx, tools, model_settings):
            yield chunk
