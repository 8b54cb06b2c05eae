"""The worker's chat inbox (agent/chat_inbox.py) on a real LiveKit server, with the rtc SDK's
own text streams: a message its sender names (the console page's `sightline.message`
attribute) is confirmed to that sender alone once read, and handed on once however often it
arrives; an unnamed message (another client's) is handed on each time it comes, unconfirmed.
Once its reply is done, a named message is confirmed answered, and so is each copy that comes
after. The worker's own replies mark it (tests/test_e2e_livekit.py, which also sends a
question again to the room's next session). A named question the loaded conversation holds
unanswered is taken out of it, to be asked again at its end.
The page's side, sending again what is not confirmed, is in tests/test_console_browser.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace

import pytest
from livekit import api, rtc
from livekit.agents import Agent, llm
from waits import eventually

from agent.chat_inbox import MESSAGE_ID, RECEIVED_TOPIC, ChatInbox
from bench.livekit_harness import API_KEY, API_SECRET, LiveKitServer
from memory.spill_files import ROW_KEY


async def joined(livekit: LiveKitServer, identity: str, room: rtc.Room | None = None,
                 *, name: str = "chat-inbox") -> rtc.Room:
    room = room or rtc.Room()
    token = (api.AccessToken(API_KEY, API_SECRET).with_identity(identity)
             .with_grants(api.VideoGrants(room_join=True, room=name)).to_jwt())
    await room.connect(livekit.ws_url, token)
    return room


def receipts_of(room: rtc.Room) -> list[dict[str, object]]:
    """The confirmations sent to `room`'s participant, as they arrive."""
    receipts: list[dict[str, object]] = []
    room.on("data_received", lambda packet: packet.topic == RECEIVED_TOPIC and receipts.append(
        json.loads(packet.data)))
    return receipts


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
        await eventually(lambda: len(handed_on) >= 4 and len(to_user) >= 3 and bool(to_other),
                         (handed_on, to_user, to_other))
        # whatever was still on its way would have come with the last message handed on
        await asyncio.sleep(0.5)
    finally:
        reading.cancel()
        await inbox.aclose()
        for room in (agent, user, other):
            await room.disconnect()
    assert handed_on == ["Why does the build fail?", "An unnamed message", "An unnamed message",
                         "And the tests?"]
    assert to_user == [{"message": "page-1"}, {"message": "page-1"}, {"message": "page-2"}]
    assert to_other == [{"message": "page-1"}]


async def test_an_answered_message_is_confirmed_answered_and_so_is_each_later_copy(
    livekit: LiveKitServer,
) -> None:
    agent = rtc.Room()
    inbox = ChatInbox(agent)
    await joined(livekit, "agent", agent, name="chat-answered")
    user = await joined(livekit, "user", name="chat-answered")
    to_user = receipts_of(user)
    handed_on: list[str | None] = []

    async def read() -> None:
        async for message in inbox.messages("user"):
            handed_on.append(message.id)
    reading = asyncio.create_task(read())

    async def ask(message_id: str) -> None:
        await user.local_participant.send_text("Why does the build fail?", topic="lk.chat",
                                               attributes={MESSAGE_ID: message_id})
    try:
        await ask("page-1")
        await eventually(lambda: handed_on == ["page-1"] and len(to_user) == 1, to_user)
        inbox.answered("user", "page-1")
        await eventually(lambda: len(to_user) == 2, to_user)
        await ask("page-1")  # a copy, sent after the page missed the answered receipt
        await eventually(lambda: len(to_user) == 3, to_user)
        await ask("page-2")  # after the copy's receipt: receipts of two messages keep no order
        await eventually(lambda: len(to_user) == 4 and len(handed_on) == 2, (to_user, handed_on))
    finally:
        reading.cancel()
        await inbox.aclose()
        for room in (agent, user):
            await room.disconnect()
    assert to_user == [{"message": "page-1"}, {"message": "page-1", "answered": True},
                       {"message": "page-1", "answered": True}, {"message": "page-2"}]
    assert handed_on == ["page-1", "page-2"]


class Refusing(Agent):
    """An agent whose conversation cannot be edited (as a realtime model's session may
    refuse it)."""

    async def update_chat_ctx(self, chat_ctx: llm.ChatContext, *,
                              exclude_invalid_function_calls: bool = True) -> None:
        raise TimeoutError("the realtime session did not confirm the edit")


@pytest.mark.parametrize("agent_kind", [Agent, Refusing])
async def test_a_question_an_earlier_session_stored_unanswered_is_taken_out_to_ask_it_again(
    agent_kind: type[Agent], caplog: pytest.LogCaptureFixture,
) -> None:
    """The loaded conversation ends with a named question an earlier session of the room
    stored and did not answer (its worker died): the inbox takes it out, to be asked again at
    the conversation's end. An agent that refuses the edit keeps both copies, said in one line,
    and the question is asked all the same."""
    loaded = llm.ChatContext.empty()
    loaded.add_message(role="user", content="Hello", extra={ROW_KEY: "key-0"})
    loaded.add_message(role="assistant", content="Hi.", extra={ROW_KEY: "key-1"})
    loaded.add_message(role="user", content="Why does the VPN fail?",
                       extra={ROW_KEY: "key-page-1"})
    agent = agent_kind(instructions="Help.", chat_ctx=loaded)
    inbox = ChatInbox(rtc.Room())
    inbox._session = SimpleNamespace(current_agent=agent)  # type: ignore[assignment]
    inbox._key = lambda message_id: f"key-{message_id}"
    answered_before = await inbox._answered_before("page-1")
    assert answered_before is False, "not answered: asked again"
    said = [item.text_content for item in agent.chat_ctx.items
            if isinstance(item, llm.ChatMessage)]
    if agent_kind is Refusing:
        assert said == ["Hello", "Hi.", "Why does the VPN fail?"]
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
            "chat message page-1 stays in the conversation twice: the earlier copy could not be "
            "taken out (TimeoutError('the realtime session did not confirm the edit'))"]
    else:
        assert said == ["Hello", "Hi."]
