"""What a user types before their session is ready is answered, not lost.

The agent joins the room, and the user sees it, before its session is ready: the user's
conversation and memory are loaded from Postgres first, which under a burst of new sessions
takes seconds. The rtc SDK drops a text stream whose topic has no handler, so a question typed
in that window was lost (two of nine users in a burst, tests/test_fleet.py). The inbox holds the
chat topic from the moment the agent joins; once the session is up, the held messages of its
user go to it in order, and later ones as they come, through livekit-agents' own text-input
callback (RoomIO's text input is turned off: the topic has one reader).

Each message handed on is recorded (`chat`: the sender's timestamp and when the stream reached
this process), so a session's log says how long the user's words took to reach it: under load
that transport, not the turn, is where seconds go (bench/load.py reads it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession, room_io
from livekit.agents.types import TOPIC_CHAT

log = logging.getLogger("sightline.chat")


@dataclass
class _Message:
    identity: str
    read: asyncio.Task[str]
    info: rtc.TextStreamInfo
    received_at: float  # epoch seconds: when the stream reached this process


class ChatInbox:
    def __init__(self, room: rtc.Room) -> None:
        self._room = room
        self._held: list[_Message] = []
        self._session: AgentSession | None = None
        self._identity = ""
        self._record: Callable[[dict[str, Any]], None] = lambda detail: None
        self._on_text: Callable[[str], None] = lambda text: None
        self._forwarding: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()
        room.register_text_stream_handler(TOPIC_CHAT, self._on_stream)

    def _on_stream(self, reader: rtc.TextStreamReader, identity: str) -> None:
        self._held.append(_Message(identity, asyncio.create_task(reader.read_all()), reader.info,
                                   time.time()))
        self._arrived.set()

    def attach(self, session: AgentSession, identity: str,
               record: Callable[[dict[str, Any]], None],
               on_text: Callable[[str], None]) -> None:
        """From now on, `identity`'s messages (those held first) go to `session`, each
        recorded with `record` and its text given to `on_text` as it is handed on."""
        self._session, self._identity, self._record = session, identity, record
        self._on_text = on_text
        self._forwarding = asyncio.create_task(self._forward(), name="chat-inbox")

    async def _forward(self) -> None:
        assert self._session is not None
        answer = room_io.TextInputOptions().text_input_cb  # what RoomIO would do with it
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._held:
                message = self._held.pop(0)
                if message.identity != self._identity:
                    message.read.cancel()
                    continue
                try:
                    text = await message.read
                except Exception as exc:  # the user left mid-message: nothing to answer
                    log.warning("a chat message from %s could not be read: %r",
                                message.identity, exc)
                    continue
                self._record({"sent_at": message.info.timestamp / 1000,  # the sender's clock
                              "received_at": round(message.received_at, 4),
                              "characters": len(text)})
                self._on_text(text)
                participant = self._room.remote_participants.get(message.identity)
                result = answer(self._session, room_io.TextInputEvent(
                    text=text, info=message.info, participant=participant))
                if asyncio.iscoroutine(result):
                    await result

    async def aclose(self) -> None:
        if self._forwarding is not None:
            self._forwarding.cancel()
            await asyncio.gather(self._forwarding, return_exceptions=True)
        for message in self._held:
            message.read.cancel()
        self._room.unregister_text_stream_handler(TOPIC_CHAT)
