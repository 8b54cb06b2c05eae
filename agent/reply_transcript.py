"""The session's transcripts on `lk.transcription`, to its user alone: the agent's replies', in
as few sends as each reply allows, and what the agent heard the user say.

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

What the agent heard the user say goes to them alone too (`UserTranscript`): livekit-agents'
RoomIO would send its transcript of their speech to the whole room, as it does the replies'
(its output takes no destination, and RoomIO makes none at all once the session has a
transcription output before it starts, as the worker gives it). It is sent as RoomIO sends it:
each transcript (interim, then final) a stream of its segment's whole text so far, sent as the
user and stamped with their microphone track, the segment's last with `lk.transcription_final`
true. (RoomIO sends a final transcript twice, first as an interim one; here it goes once, as
final: a stream fewer per utterance. Neither output sends the deprecated `rtc.Transcription`
packet RoomIO adds for old clients: it cannot be addressed to one participant.)

Both return at once and one sender task each sends in order, so the session's pipeline never
waits on the room. What cannot be sent (the room gone, a send refused) is logged in one line; it
is in the session's chat history and conversation log all the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from livekit import rtc
from livekit.agents import utils
from livekit.agents.types import (
    ATTRIBUTE_TRANSCRIPTION_FINAL,
    ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID,
    ATTRIBUTE_TRANSCRIPTION_TRACK_ID,
    TOPIC_TRANSCRIPTION,
)
from livekit.agents.voice import UserInputTranscribedEvent, io
from livekit.agents.voice.transcription import find_micro_track_id

log = logging.getLogger("sightline.replies")

# how long a reply's first words wait for the rest before a stream opens: a scripted or cached
# answer, or a short one from a fast model, is whole by then; nobody reads text 0.1 s sooner
HOLD_S = 0.1
CLOSE_WAIT_S = 2.0  # what closing the session gives the transcripts still being sent
RECENT_REPLIES = 8  # the latest replies whose text `said_since` can tell

T = TypeVar("T")


@dataclass
class _Reply:
    """One reply's text as it arrives; `changed` is set by new text and by its end."""

    segment_id: str
    said: list[str] = field(default_factory=list)  # all its text so far, sent or not
    taken: int = 0  # how many pieces of `said` were taken to be sent
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, text: str) -> None:
        self.said.append(text)
        self.changed.set()

    def end(self) -> None:
        self.complete.set()
        self.changed.set()

    def take(self) -> str:
        """The text added since the last take."""
        text = "".join(self.said[self.taken:])
        self.taken = len(self.said)
        self.changed.clear()
        return text


def _microphone(room: rtc.Room, identity: str) -> dict[str, str]:
    """The track whose speech a transcript is (`identity`'s microphone), as livekit-agents stamps
    it: clients pair the two by it (LiveKit's components show an agent's transcript by its audio
    track, a user's by their microphone). Empty when `identity` publishes none."""
    try:
        return {ATTRIBUTE_TRANSCRIPTION_TRACK_ID: find_micro_track_id(room, identity)}
    except ValueError:
        return {}


class _InOrder(Generic[T]):
    """Sends what it is given one after the other, from a task of its own: the session hands
    it over at once and never waits on the room, and the room gets it in order."""

    def __init__(self, send: Callable[[T], Awaitable[None]], what: str, unsent: str) -> None:
        self._send = send
        self._what = what  # what it sends, as the log names it
        self._unsent = unsent  # what becomes of one that could not be sent, as the log says
        self._queue: asyncio.Queue[T] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None

    def put(self, item: T) -> None:
        self._queue.put_nowait(item)
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_all(), name=self._what)

    async def aclose(self) -> None:
        """Sends what it was given, for at most `CLOSE_WAIT_S`, then stops."""
        if self._sender is None:
            return
        try:
            async with asyncio.timeout(CLOSE_WAIT_S):
                await self._queue.join()
        except TimeoutError:
            log.warning("%d %s not sent to the room within %.0f s of the session's end",
                        self._queue.qsize() + 1, self._what, CLOSE_WAIT_S)
        self._sender.cancel()
        await asyncio.gather(self._sender, return_exceptions=True)

    async def _send_all(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._send(item)
            except Exception as exc:  # the room gone or a send refused: the session goes on
                log.warning("one of the session's %s could not be sent to the room (%r); %s",
                            self._what, exc, self._unsent)
            finally:
                self._queue.task_done()


class ReplyTranscript(io.TextOutput):
    """The session's transcription output: the text-only session's own, a spoken session's
    behind the synchronizer that paces it."""

    def __init__(self, room: rtc.Room, *, to: str, hold_s: float = HOLD_S) -> None:
        super().__init__(label="SightlineReplies", next_in_chain=None)
        self._room = room
        self._to = [to]
        self._hold_s = hold_s
        self._current: _Reply | None = None
        self._replies = _InOrder(self._send, "replies",
                                 "it is in the conversation's history")
        self.begun = 0  # replies begun so far
        self._recent: deque[tuple[int, _Reply]] = deque(maxlen=RECENT_REPLIES)

    async def capture_text(self, text: str) -> None:
        if not text:
            return
        if self._current is None:
            self._current = _Reply(utils.shortuuid("SG_"))
            self.begun += 1
            self._recent.append((self.begun, self._current))
            self._replies.put(self._current)
        self._current.add(text)

    def said_since(self, begun: int) -> list[str]:
        """The text of each reply begun after the first `begun` (of the latest few): what the
        user was sent since then, whatever way livekit-agents passed it on (SpeechOutages asks
        before sending an answer it could not speak)."""
        return ["".join(reply.said) for number, reply in self._recent if number > begun]

    def flush(self) -> None:
        if self._current is not None:
            self._current.end()
            self._current = None

    async def aclose(self) -> None:
        """Sends what the session has replied, for at most `CLOSE_WAIT_S`, then stops."""
        self.flush()
        await self._replies.aclose()

    async def _send(self, reply: _Reply) -> None:
        try:
            await asyncio.wait_for(reply.complete.wait(), self._hold_s)
        except TimeoutError:
            pass
        participant = self._room.local_participant
        final = {ATTRIBUTE_TRANSCRIPTION_FINAL: "true",
                 ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID: reply.segment_id,
                 **_microphone(self._room, participant.identity)}  # the agent's speech track
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


@dataclass(frozen=True)
class _Heard:
    """One transcript of the user's speech, as the session gave it."""

    text: str
    final: bool
    segment_id: str


class UserTranscript:
    """What the agent heard the user say, sent to them alone: the session's
    `user_input_transcribed` listener."""

    def __init__(self, room: rtc.Room, *, to: str) -> None:
        self._room = room
        self._to = to
        self._segment_id = utils.shortuuid("SG_")
        self._latest = ""  # the segment's words so far, which an empty final transcript ends on
        self._sends = _InOrder(self._send, "transcripts of the user's speech",
                               "what the agent heard is unchanged")

    def transcribed(self, event: UserInputTranscribedEvent) -> None:
        text = event.transcript or (self._latest if event.is_final else "")
        if text:
            self._sends.put(_Heard(text, event.is_final, self._segment_id))
        if event.is_final:
            self._segment_id = utils.shortuuid("SG_")
            self._latest = ""
        elif text:
            self._latest = text

    async def aclose(self) -> None:
        await self._sends.aclose()

    async def _send(self, heard: _Heard) -> None:
        attributes = {ATTRIBUTE_TRANSCRIPTION_FINAL: "true" if heard.final else "false",
                      ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID: heard.segment_id,
                      **_microphone(self._room, self._to)}
        writer = await self._room.local_participant.stream_text(
            topic=TOPIC_TRANSCRIPTION, sender_identity=self._to,
            destination_identities=[self._to], attributes=attributes)
        await writer.write(heard.text)
        await writer.aclose()
