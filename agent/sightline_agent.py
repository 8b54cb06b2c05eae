"""The LiveKit `Agent`: default behaviour, except that each turn's context carries the screen.

`llm_node` is the one hook that runs for voice turns, typed `lk.chat` turns and `session.run()`
alike, which is why the screen is injected there and not in `on_user_turn_completed`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Callable

from livekit import rtc
from livekit.agents import Agent, APIError, ModelSettings, llm

from .assist import LiveAssist
from .turn_context import INSTRUCTIONS, TurnContext

log = logging.getLogger("sightline.assist")

ASSIST_WAIT_S = 1.0  # the answer waits at most this long for the assist message to go out


def _assisted(task: asyncio.Task[object]) -> None:
    """Log what a listener raised: the assist task outlives the turn that started it, and
    nobody else retrieves its exception."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("live assist failed for this utterance: %r", exc)


class SightlineAgent(Agent):
    def __init__(
        self, turn_context: TurnContext, history: llm.ChatContext, tools: list[llm.Tool],
        assist: LiveAssist | None = None, assist_wait_s: float = ASSIST_WAIT_S,
    ) -> None:
        super().__init__(instructions=INSTRUCTIONS, chat_ctx=history, tools=tools)
        self._turn_context = turn_context
        self._assist = assist
        self._assist_wait_s = assist_wait_s
        # gets what synthesis failed to say, and whether any of it was heard (SpeechOutages)
        self.unspoken: Callable[[str, bool], None] | None = None

    async def llm_node(
        self,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        model_settings: ModelSettings,
    ) -> AsyncIterable[llm.ChatChunk | str]:
        # live assist for a new question runs beside the turn's own lookup and goes out before
        # the answer's first word (waiting at most `assist_wait_s`: ASSIST_WAIT_S live)
        last = chat_ctx.items[-1] if chat_ctx.items else None
        assisting = None
        if (self._assist is not None and isinstance(last, llm.ChatMessage)
                and last.role == "user"):
            assisting = asyncio.create_task(self._assist(last.text_content or ""))
            assisting.add_done_callback(_assisted)
        answered = False
        try:
            turn_ctx = await self._turn_context.build(chat_ctx)
            if assisting is not None:
                done, _ = await asyncio.wait([assisting], timeout=self._assist_wait_s)
                if not done:
                    log.warning("live assist took over %.1f s; the answer goes first",
                                self._assist_wait_s)
            async for chunk in Agent.default.llm_node(self, turn_ctx, tools, model_settings):
                yield chunk
            answered = True
        finally:
            # a reply cancelled or failed before its end (mostly an early reply on words the
            # user went on from) answered no question: its assist must not go out
            if assisting is not None and not answered:
                assisting.cancel()

    async def tts_node(
        self, text: AsyncIterable[str], model_settings: ModelSettings,
    ) -> AsyncIterable[rtc.AudioFrame]:
        """The default synthesis, except that when it fails, all it was to say goes to
        `unspoken`: livekit-agents would drop it. The text is read by a task of its own, so
        the rest of an answer still streaming from the model is kept when synthesis stops
        reading."""
        said: list[str] = []
        chunks: asyncio.Queue[str | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for chunk in text:
                    said.append(chunk)
                    chunks.put_nowait(chunk)
            finally:
                chunks.put_nowait(None)

        async def fed() -> AsyncIterable[str]:
            while (chunk := await chunks.get()) is not None:
                yield chunk

        reader = asyncio.create_task(read(), name="tts-text")
        heard = False
        try:
            async for frame in Agent.default.tts_node(self, fed(), model_settings):
                heard = True
                yield frame
        except APIError:
            if self.unspoken is not None:
                await reader
                self.unspoken("".join(said), heard)
            raise
        finally:
            reader.cancel()
