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
from livekit.agents.voice.agent_activity import _SpeechHandleContextVar
from livekit.agents.voice.speech_handle import SpeechHandle

from .assist import LiveAssist, Published
from .turn_context import INSTRUCTIONS, TurnContext

log = logging.getLogger("sightline.assist")

ASSIST_WAIT_S = 1.0  # the answer waits at most this long for the assist message to go out


def _assisted(task: asyncio.Task[object]) -> None:
    """Log what a lookup raised: it outlives the turn that started it, and nobody else
    retrieves its exception."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("live assist failed for this utterance: %r", exc)


class HeldAssist:
    """A question's assist message, held until the reply it belongs to is used.

    livekit-agents starts a reply before the user's turn has ended (preemptive generation) and
    reads it to its end before it knows whether it will be used; when the user goes on, the
    reply is dropped unplayed, and its words answered no question: their message must not go
    out, even when its lookup finished long before. So the message goes out once its lookup is
    done and its reply is used: scheduled, livekit-agents' word for a reply it will speak (a
    typed question's at once, an early reply's when the turn ends on the same words). A reply
    that ends unused, or ends early (cancelled or failed before its end), drops it."""

    def __init__(self, assist: LiveAssist, looking: asyncio.Task[Published | None],
                 speech: SpeechHandle | None) -> None:
        self._assist = assist
        self._looking = looking
        self._speech = speech  # None outside a session's reply (tests): used from the start
        self._settled = False  # published or dropped: nothing more to do
        looking.add_done_callback(self.release)
        if speech is not None and not speech.scheduled:
            # a private future (no public hook in livekit-agents 1.8.9): its callbacks run as
            # the reply is scheduled, before livekit-agents' reply task resumes to speak it,
            # so the message still goes out before the answer's first word
            speech._scheduled_fut.add_done_callback(self.release)
            speech.add_done_callback(self._ended)

    @property
    def used(self) -> bool:
        """Whether the reply is one livekit-agents speaks (not an early one, yet unused)."""
        return self._speech is None or self._speech.scheduled

    async def wait(self, timeout_s: float) -> bool:
        """Wait at most `timeout_s` for the lookup (not for the reply's use); whether it is
        done."""
        done, _ = await asyncio.wait([self._looking], timeout=timeout_s)
        return bool(done)

    def release(self, _done: object = None) -> None:
        """Publish the message if its lookup is done and its reply used; else leave it to
        whichever comes last (each calls this). Publishes at most once."""
        looking = self._looking
        if (self._settled or not self.used or not looking.done() or looking.cancelled()
                or looking.exception() is not None):  # a lookup's failure: `_assisted` logs it
            return
        self._settled = True
        message = looking.result()
        if message is None:
            return
        try:
            self._assist.publish(message)
        except Exception as exc:  # a listener's failure never stops the turn
            log.warning("live assist failed for this utterance: %r", exc)

    def drop(self) -> None:
        """The reply answered no question: its message never goes out."""
        self._settled = True
        self._looking.cancel()

    def _ended(self, speech: SpeechHandle) -> None:
        if not speech.scheduled:  # dropped unplayed: the user went on
            self.drop()


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
        # live assist for a new question is looked up beside the turn's own lookup and goes out
        # before the answer's first word (waiting at most `assist_wait_s`: ASSIST_WAIT_S live),
        # once this reply is used: an early reply (preemptive generation) may never be
        last = chat_ctx.items[-1] if chat_ctx.items else None
        held: HeldAssist | None = None
        if (self._assist is not None and isinstance(last, llm.ChatMessage)
                and last.role == "user"):
            looking = asyncio.create_task(self._assist.look_up(last.text_content or ""),
                                          name="assist-lookup")
            looking.add_done_callback(_assisted)
            # the reply this node generates for (a private name, no public accessor in
            # livekit-agents 1.8.9, as in agent/cascade.py); None outside a session
            held = HeldAssist(self._assist, looking, _SpeechHandleContextVar.get(None))
        answered = False
        try:
            turn_ctx = await self._turn_context.build(chat_ctx)
            if held is not None:
                if not await held.wait(self._assist_wait_s):
                    log.warning("live assist took over %.1f s; the answer goes first",
                                self._assist_wait_s)
                held.release()  # out now if this reply is used; else once it is
            async for chunk in Agent.default.llm_node(self, turn_ctx, tools, model_settings):
                yield chunk
            answered = True
        finally:
            # a reply cancelled or failed before its end (mostly an early reply on words the
            # user went on from) answered no question: its assist must not go out
            if held is not None and not answered:
                held.drop()

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
