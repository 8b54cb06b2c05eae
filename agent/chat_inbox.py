"""What a user types before their session is ready is answered, not lost.

The agent joins the room, and the user sees it, before its session is ready: the user's
conversation and memory are loaded from Postgres first, which under a burst of new sessions
takes seconds. The rtc SDK drops a text stream whose topic has no handler, so a question typed
in that window was lost (two of nine users in a burst, tests/test_fleet.py). The inbox holds the
chat topic from the moment the agent joins; once the session is up, the held messages of its
user go to it in order, and later ones as they come, through livekit-agents' own text-input
callback (RoomIO's text input is turned off: the topic has one reader).

A message whose sender gives it an id (the text stream's attribute `sightline.message`, as the
console page does) is confirmed to that sender alone on `sightline.chat.received`
(`{"message": id}`) once its text is read, and handed on once however often it arrives. LiveKit
keeps nothing for a participant whose connection is not up yet: after a LiveKit restart, a
question the page sent as the agent rejoined was lost though the page's `sendText` had resolved
(tests/test_console_browser.py). The page sends again what is not confirmed, under the same id
(web/src/console.js).

A confirmed message is not an answered one: a worker that dies between reading a question and
answering it has confirmed it. So once the reply to a named message is done (finished, or cut
off: the user moved on, or the session ended) the sender is told that too (`{"message": id,
"answered": true}`), and told again if a copy comes later. The page sends a question read but
not answered to the agent that joins in place of one that left (a replacement for a worker that
died).

That agent's session loaded the conversation the dead one stored, which may hold the question
already (stored under a key made of its id: memory/conversation.py `named_message_key`), and its
answer too when the worker died after answering but before its receipt went out. So a named
message the loaded conversation holds answered is confirmed answered and not answered again; one
it holds unanswered is taken out of it, to be asked again at the conversation's end (its copy is
stored once: the key is the same).

Each message handed on is recorded (`chat`: the sender's timestamp and when the stream reached
this process), so a session's log says how long the user's words took to reach it: under load
that transport, not the turn, is where seconds go (bench/load.py reads it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession, llm
from livekit.agents.types import TOPIC_CHAT
from livekit.agents.voice import SpeechHandle

from memory.spill_files import ROW_KEY

from .room_publisher import RoomPublisher

log = logging.getLogger("sightline.chat")

MESSAGE_ID = "sightline.message"  # a chat stream's attribute: its sender's id for the message
# agent -> user: {"message": id}: its text is here; {"message": id, "answered": true}: its
# reply is done
RECEIVED_TOPIC = "sightline.chat.received"


def stored_before(ctx: llm.ChatContext, key: str) -> tuple[llm.ChatMessage | None, bool]:
    """The user's message stored under `key` in the conversation `ctx` (as an earlier session
    of the room left it), and whether the next message after it is an answer."""
    said = [item for item in ctx.items
            if isinstance(item, llm.ChatMessage) and item.role in ("user", "assistant")]
    for n, item in enumerate(said):
        if item.role == "user" and item.extra.get(ROW_KEY) == key:
            return item, any(after.role == "assistant" for after in said[n + 1:n + 2])
    return None, False


def _ignored(read: asyncio.Task[str]) -> None:
    """Takes a skipped message's failure (its sender left mid-message), so asyncio logs none."""
    if not read.cancelled():
        read.exception()


@dataclass
class _Held:
    identity: str
    read: asyncio.Task[str]
    info: rtc.TextStreamInfo
    received_at: float  # epoch seconds: when the stream reached this process


@dataclass
class ChatMessage:
    """One message of the chat, handed on once."""

    text: str
    info: rtc.TextStreamInfo
    received_at: float  # epoch seconds: when the stream reached this process
    id: str | None  # its sender's id for it (`MESSAGE_ID`), if the sender named it


class ChatInbox:
    def __init__(self, room: rtc.Room) -> None:
        self._room = room
        self._held: list[_Held] = []
        self._receipts: dict[str, RoomPublisher] = {}  # sender's identity -> its confirmations
        self._answered: set[tuple[str, str]] = set()  # (sender, message id): its reply is done
        self._session: AgentSession | None = None
        self._identity = ""
        self._record: Callable[[dict[str, Any]], None] = lambda detail: None
        self._on_text: Callable[[str], None] = lambda text: None
        self._key: Callable[[str], str] = lambda message_id: message_id
        self._forwarding: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()
        room.register_text_stream_handler(TOPIC_CHAT, self._on_stream)

    def _on_stream(self, reader: rtc.TextStreamReader, identity: str) -> None:
        self._held.append(_Held(identity, asyncio.create_task(self._read(reader, identity)),
                                reader.info, time.time()))
        self._arrived.set()

    async def _read(self, reader: rtc.TextStreamReader, identity: str) -> str:
        """The message's text, confirmed to its sender once read, when the sender named it."""
        text = await reader.read_all()
        message_id = (reader.info.attributes or {}).get(MESSAGE_ID)
        if message_id:
            self._confirm(identity, message_id)
        return text

    def _confirm(self, identity: str, message_id: str) -> None:
        """Tells `identity` that its message is here, or that it is answered once it is."""
        if identity not in self._receipts:
            self._receipts[identity] = RoomPublisher(self._room, RECEIVED_TOPIC, to=identity)
        receipt: dict[str, Any] = {"message": message_id}
        if (identity, message_id) in self._answered:
            receipt["answered"] = True
        self._receipts[identity](receipt)

    def answered(self, identity: str, message_id: str) -> None:
        """Tells `identity` that the reply to its message `message_id` is done, now and to
        every copy of it that comes later."""
        self._answered.add((identity, message_id))
        self._confirm(identity, message_id)

    async def messages(self, identity: str) -> AsyncIterator[ChatMessage]:
        """`identity`'s messages in the order they arrived, those held first; one sent again
        (the same id: its confirmation was late or lost) is handed on once."""
        handed_on: set[str] = set()  # one id per message of the conversation, as it holds each
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._held:
                held = self._held.pop(0)
                if held.identity != identity:  # read (and confirmed) all the same, not answered
                    held.read.add_done_callback(_ignored)
                    continue
                try:
                    text = await held.read
                except Exception as exc:  # the user left mid-message: nothing to answer
                    log.warning("a chat message from %s could not be read: %r",
                                held.identity, exc)
                    continue
                message_id = (held.info.attributes or {}).get(MESSAGE_ID)
                if message_id in handed_on:
                    log.info("chat message %s arrived again; it was handed on once", message_id)
                    continue
                if message_id:
                    handed_on.add(message_id)
                yield ChatMessage(text, held.info, held.received_at, message_id)

    def attach(self, session: AgentSession, identity: str,
               record: Callable[[dict[str, Any]], None],
               on_text: Callable[[str], None], key: Callable[[str], str]) -> None:
        """From now on, `identity`'s messages (those held first) go to `session`, each
        recorded with `record` and its text given to `on_text` as it is handed on; each named
        one is confirmed answered once its reply is done. `key`: the row key a named message
        is stored under (`ConversationLog.named_key`), to find it in the loaded conversation."""
        self._session, self._identity, self._record = session, identity, record
        self._on_text, self._key = on_text, key
        self._forwarding = asyncio.create_task(self._forward(), name="chat-inbox")

    async def _forward(self) -> None:
        async for message in self.messages(self._identity):
            if message.id is not None and await self._answered_before(message.id):
                continue
            self._record({"sent_at": message.info.timestamp / 1000,  # the sender's clock
                          "received_at": round(message.received_at, 4),
                          "characters": len(message.text)})
            self._on_text(message.text)
            reply = await self._reply(message)
            if message.id is not None:
                reply.add_done_callback(
                    lambda _reply, sent=message.id: self.answered(self._identity, sent))

    async def _answered_before(self, message_id: str) -> bool:
        """Whether an earlier session of the room answered this message (its sender is told
        so). One it stored unanswered is taken out of the loaded conversation, to be asked
        again at its end."""
        assert self._session is not None
        agent = self._session.current_agent
        earlier, answered = stored_before(agent.chat_ctx, self._key(message_id))
        if answered:
            log.info("chat message %s was answered by an earlier session of the room",
                     message_id)
            self.answered(self._identity, message_id)
        elif earlier is not None:
            log.info("chat message %s was asked in an earlier session of the room and not "
                     "answered; asked again", message_id)
            ctx = agent.chat_ctx.copy()
            ctx.remove(earlier)
            try:
                await agent.update_chat_ctx(ctx)
            except Exception as exc:  # a realtime model's session refused the edit
                log.warning("chat message %s stays in the conversation twice: the earlier copy "
                            "could not be taken out (%r)", message_id, exc)
        return answered

    async def _reply(self, message: ChatMessage) -> SpeechHandle:
        """What livekit-agents' own text input does with a message (room_io's
        `_default_text_input_cb`: the user's turn claimed, the agent interrupted, a reply), but
        keeping the reply's handle, which says when it is done: the default drops it. The
        message's id goes with its text (the item's `extra`), for the session to store it
        under."""
        assert self._session is not None
        said = llm.ChatMessage(role="user", content=[message.text],
                               extra={MESSAGE_ID: message.id} if message.id else {})
        # the SDK's way for a custom text input to claim the user's turn (its docstring)
        async with self._session._claim_user_turn():
            await self._session.interrupt()
            return self._session.generate_reply(user_input=said)

    async def aclose(self) -> None:
        if self._forwarding is not None:
            self._forwarding.cancel()
            await asyncio.gather(self._forwarding, return_exceptions=True)
        for message in self._held:
            message.read.cancel()
        self._room.unregister_text_stream_handler(TOPIC_CHAT)
