"""The worker's chat inbox (agent/chat_inbox.py) on a real LiveKit server, with the rtc SDK's
own text streams: a message its sender names (the console page's `sightline.message`
attribute) is confirmed to that sender alone once read, and handed on once however often it
arrives; an unnamed message (another client's) is handed on each time it comes, unconfirmed.
The page's side, sending again what is not confirmed, is in tests/test_console_browser.py.
"""

from __future__ import annotations

import asyncio
import json

from livekit import api, rtc

from agent.chat_inbox import MESSAGE_ID, RECEIVED_TOPIC, ChatInbox
from bench.livekit_harness import API_KEY, API_SECRET, LiveKitServer

ROOM = "chat-inbox"


async def joined(livekit: LiveKitServer, identity: str, room: rtc.Room | None = None
                 ) -> rtc.Room:
    room = room or rtc.Room()
    token = (api.AccessToken(API_KEY, API_SECRET).with_identity(identity)
             .with_grants(api.VideoGrants(room_join=True, room=ROOM)).to_jwt())
    await room.connect(livekit.ws_url, token)
    return room


def receipts_of(room: rtc.Room) -> list[str]:
    """The ids confirmed to `room`'s participant, as they arrive."""
    ids: list[str] = []
    room.on("data_received", lambda packet: packet.topic == RECEIVED_TOPIC and ids.append(
        json.loads(packet.data)["message"]))
    return ids


async def test_a_named_message_is_confirmed_to_its_sender_and_handed_on_once(
    livekit: LiveKitServer,
) -> None:
    agent = rtc.Room()
    inbox = ChatInbox(agent)  # before joining, as the worker's
    await joined(livekit, "agent", agent)
    user, other = await joined(livekit, "user"), await joined(livekit, "other")
    to_user, to_other = receipts_of(user), receipts_of(other)
    handed_on: list[str] = []

    async def read() -> None:
        async for message in inbox.messages("user"):
            handed_on.append(message.text)
    reading = asyncio.create_task(read())
    try:
        for sender, text, message_id in [
            (user, "Why does the build fail?", "page-1"),
            (user, "Why does the build fail?", "page-1"),  # a copy: its receipt came late
            (other, "Not the user's question", "page-1"),  # the same id from someone else
            (user, "An unnamed message", None),
            (user, "An unnamed message", None),
            (user, "And the tests?", "page-2"),
        ]:
            await sender.local_participant.send_text(
                text, topic="lk.chat", attributes={MESSAGE_ID: message_id} if message_id else None)
        deadline = asyncio.get_running_loop().time() + 15
        while len(handed_on) < 4 or len(to_user) < 3 or not to_other:
            assert asyncio.get_running_loop().time() < deadline, (handed_on, to_user, to_other)
            await asyncio.sleep(0.05)
        # whatever was still on its way would have come with the last message handed on
        await asyncio.sleep(0.5)
    finally:
        reading.cancel()
        await inbox.aclose()
        for room in (agent, user, other):
            await room.disconnect()
    assert handed_on == ["Why does the build fail?", "An unnamed message", "An unnamed message",
                         "And the tests?"]
    assert to_user == ["page-1", "page-1", "page-2"]
    assert to_other == ["page-1"]
