"""The agent's replies' transcript on `lk.transcription`, in as few sends as each reply allows.

livekit-agents' room output (1.8.9) sends a reply as a text stream of one send per step, each
waited for: the stream's header, every chunk the model streamed, the close. A send is a round
trip through the rtc SDK's native side and back into the session's event loop, which on a busy
worker waits its turn for the interpreter. At 30 sessions on 2 cores (`bench/load.py`), a
scripted reply of three chunks took 47 ms at the median and 166 ms at p95 from the end of its
turn to its stream's close: nearly all of the answer's way back to the user.

So the worker sends them with this output instead: a reply complete within `HOLD_S` of its
first words goes out in one send (`send_text`: the whole stream in one request); a longer one
opens a stream, and each write carries all the text that arrived while the last one was in
flight. The protocol is livekit-agents' (the topic, `lk.segment_id`, `lk.transcription_final` on
the close, and `lk.transcribed_track_id` naming the agent's speech track when it speaks), so a
client reads either kind the same way. A spoken reply's text comes through livekit-agents'
`TranscriptSynchronizer`, word by word as its audio plays (agent/worker.py), as the room output
it replaces paced it.

Replies go to the participant the session serves alone (`to`): they are built from that user's
screen and memory, and anyone else in the room must not read them (livekit-agents' own output
sends its transcript to the whole room).

`capture_text` returns at once and one sender task sends the replies in order, so the reply's
pipeline never waits on the room. A reply that cannot be sent (the room gone, a send refused) is
logged in one line; it is in the session's chat history and conversation log all the same.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from livekit import rtc
from livekit.agents import utils
from livekit.agents.types import (
    ATTRIBUTE_TRANSCRIPTION_FINAL,
    ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID,
    ATTRIBUTE_TRANSCRIPTION_TRACK_ID,
    TOPIC_TRANSCRIPTION,
)
from livekit.agents.voice import io
from livekit.agents.voice.transcription import find_micro_track_id

log = logging.getLogger("sightline.replies")

# how long a reply's first words wait for the rest before a stream opens: a scripted or cached
# answer, or a short one from a fast model, is whole by then; nobody reads text 0.1 s sooner
HOLD_S = 0.1
CLOSE_WAIT_S = 2.0  # what closing the session gives the replies still being sent


@dataclass
class _Reply:
    """One reply's text as it arrives; `changed` is set by new text and by its end."""

    segment_id: str
    pending: list[str] = field(default_factory=list)
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, text: str) -> None:
        self.pending.append(text)
        self.changed.set()

    def end(self) -> None:
        self.complete.set()
        self.changed.set()

    def take(self) -> str:
        text = "".join(self.pending)
        self.pending.clear()
        self.changed.clear()
        return text


class ReplyTranscript(io.TextOutput):
    """The session's transcription output: the text-only session's own, a spoken session's
    behind the synchronizer that paces it."""

    def __init__(self, room: rtc.Room, *, to: str, hold_s: float = HOLD_S) -> None:
        super().__init__(label="SightlineReplies", next_in_chain=None)
        self._room = room
        self._to = [to]
        self._hold_s = hold_s
        self._current: _Reply | None = None
        self._replies: asyncio.Queue[_Reply] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None

    async def capture_text(self, text: str) -> None:
        if not text:
            return
        if self._current is None:
            self._current = _Reply(utils.shortuuid("SG_"))
            self._replies.put_nowait(self._current)
            if self._sender is None:
                self._sender = asyncio.create_task(self._send_replies(), name="reply-transcript")
        self._current.add(text)

    def flush(self) -> None:
        if self._current is not None:
            self._current.end()
            self._current = None

    async def aclose(self) -> None:
        """Sends what the session has replied, for at most `CLOSE_WAIT_S`, then stops."""
        self.flush()
        if self._sender is None:
            return
        try:
            async with asyncio.timeout(CLOSE_WAIT_S):
                await self._replies.join()
        except TimeoutError:
            log.warning("%d replies not sent to the room within %.0f s of the session's end",
                        self._replies.qsize() + 1, CLOSE_WAIT_S)
        self._sender.cancel()
        await asyncio.gather(self._sender, return_exceptions=True)

    async def _send_replies(self) -> None:
        while True:
            reply = await self._replies.get()
            try:
                await self._send(reply)
            except Exception as exc:  # the room gone or a send refused: the session goes on
                log.warning("a reply could not be sent to the room (%r); it is in the "
                            "conversation's history", exc)
            finally:
                self._replies.task_done()

    async def _send(self, reply: _Reply) -> None:
        try:
            await asyncio.wait_for(reply.complete.wait(), self._hold_s)
        except TimeoutError:
            pass
        final = {ATTRIBUTE_TRANSCRIPTION_FINAL: "true",
                 ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID: reply.segment_id, **self._speech_track()}
        participant = self._room.local_participant
        if reply.complete.is_set():
            await participant.send_text(reply.take(), topic=TOPIC_TRANSCRIPTION,
                                        attributes=final, destination_identities=self._to)
            return
        writer = await participant.stream_text(
            topic=TOPIC_TRANSCRIPTION, destination_identities=self._to,
            attributes={**final, ATTRIBUTE_TRANSCRIPTION_FINAL: "false"})
        while True:
            if text := reply.take():
                await writer.write(text)
            elif reply.complete.is_set():
                break
            else:
                await reply.changed.wait()
        await writer.aclose(attributes=final)

    def _speech_track(self) -> dict[str, str]:
        """The agent's speech track, as livekit-agents stamps its transcript: clients pair the
        two by it (LiveKit's components show an agent's transcript by its audio track)."""
        try:
            track_id = find_micro_track_id(self._room, self._room.local_participant.identity)
        except ValueError:  # text only: nothing spoken to pair with
            return {}
        return {ATTRIBUTE_TRANSCRIPTION_TRACK_ID: track_id}
