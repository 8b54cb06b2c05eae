"""The agent's text replies on `lk.transcription` (agent/reply_transcript.py), on a real LiveKit
server: a reply whole within the hold goes out as one send, a slower one streams as it comes
with its text coalesced, replies keep their order, and a room that is gone costs one log line
per reply and never an exception in the session. What the agent heard the user say goes to
them alone, segment by segment as livekit-agents sends it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from livekit import api, rtc
from livekit.agents.voice import UserInputTranscribedEvent

from agent.reply_transcript import ReplyTranscript, UserTranscript
from bench.livekit_harness import API_KEY, API_SECRET, LiveKitServer


@dataclass
class Received:
    """One stream as the user's client read it: its chunks, its attributes after the close."""

    chunks: list[str] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)
    chunk_at: list[float] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.chunks)


async def _join(livekit: LiveKitServer, room: str, identity: str) -> rtc.Room:
    token = (api.AccessToken(API_KEY, API_SECRET).with_identity(identity)
             .with_grants(api.VideoGrants(room_join=True, room=room)).to_jwt())
    joined = rtc.Room()
    await joined.connect(livekit.ws_url, token)
    return joined


@pytest.fixture
async def rooms(livekit: LiveKitServer, request: pytest.FixtureRequest
                ) -> AsyncIterator[tuple[rtc.Room, asyncio.Queue[Received]]]:
    """The agent's room and the user's streams as they end, in a room of the test's own."""
    name = request.node.name.replace("_", "-")[:40]
    agent = await _join(livekit, name, "agent")
    user_here = asyncio.Event()
    agent.on("participant_connected", lambda _participant: user_here.set())
    user = await _join(livekit, name, "user")
    ended: asyncio.Queue[Received] = asyncio.Queue()
    reading: set[asyncio.Task[None]] = set()

    def on_stream(reader: rtc.TextStreamReader, identity: str) -> None:
        async def read() -> None:
            received = Received()
            async for chunk in reader:
                received.chunks.append(chunk)
                received.chunk_at.append(asyncio.get_running_loop().time())
            received.attributes = dict(reader.info.attributes or {})
            ended.put_nowait(received)
        task = asyncio.get_running_loop().create_task(read())
        reading.add(task)
        task.add_done_callback(reading.discard)

    user.register_text_stream_handler("lk.transcription", on_stream)
    if "user" not in agent.remote_participants:
        await asyncio.wait_for(user_here.wait(), 10)
    try:
        yield agent, ended
    finally:
        await user.disconnect()
        await agent.disconnect()


async def _next(ended: asyncio.Queue[Received]) -> Received:
    return await asyncio.wait_for(ended.get(), 10)


async def test_a_reply_whole_within_the_hold_goes_out_as_one_send(
    rooms: tuple[rtc.Room, asyncio.Queue[Received]],
) -> None:
    agent, ended = rooms
    replies = ReplyTranscript(agent, to="user")
    for chunk in ("The editor ", "shows the parser; ", "no error is visible."):
        await replies.capture_text(chunk)
    replies.flush()
    received = await _next(ended)
    assert received.chunks == ["The editor shows the parser; no error is visible."]
    assert received.attributes["lk.transcription_final"] == "true"
    assert received.attributes["lk.segment_id"].startswith("SG_")
    await replies.aclose()


async def test_a_slow_reply_streams_as_it_comes_and_coalesces(
    rooms: tuple[rtc.Room, asyncio.Queue[Received]],
) -> None:
    agent, ended = rooms
    replies = ReplyTranscript(agent, to="user", hold_s=0.05)
    await replies.capture_text("First words, ")
    await asyncio.sleep(1.0)  # past the hold: the stream opens with what there is
    for chunk in ("then ", "three ", "more."):  # while no write is in flight: one write
        await replies.capture_text(chunk)
    await asyncio.sleep(0.5)
    replies.flush()
    received = await _next(ended)
    assert received.text == "First words, then three more."
    assert received.chunks[0] == "First words, "
    assert received.chunks[1:] == ["then three more."]
    # the first words were read long before the reply ended
    assert received.chunk_at[1] - received.chunk_at[0] > 0.5
    assert received.attributes["lk.transcription_final"] == "true"
    await replies.aclose()


async def test_replies_keep_their_order(
    rooms: tuple[rtc.Room, asyncio.Queue[Received]],
) -> None:
    agent, ended = rooms
    replies = ReplyTranscript(agent, to="user", hold_s=0.05)
    await replies.capture_text("one slow reply, ")
    await asyncio.sleep(0.3)
    await replies.capture_text("ended.")
    replies.flush()
    await replies.capture_text("A second, whole at once.")
    replies.flush()
    first, second = await _next(ended), await _next(ended)
    assert (first.text, second.text) == ("one slow reply, ended.", "A second, whole at once.")
    assert first.attributes["lk.segment_id"] != second.attributes["lk.segment_id"]
    # what was sent, as SpeechOutages asks before sending an answer it could not speak
    assert replies.begun == 2
    assert replies.said_since(0) == [first.text, second.text]
    assert replies.said_since(1) == [second.text] and replies.said_since(2) == []
    await replies.aclose()


async def test_a_room_that_is_gone_costs_a_log_line_per_reply(
    livekit: LiveKitServer, caplog: pytest.LogCaptureFixture,
) -> None:
    agent = await _join(livekit, "gone-room", "agent")
    await agent.disconnect()
    replies = ReplyTranscript(agent, to="user")
    caplog.set_level(logging.WARNING, logger="sightline.replies")
    await replies.capture_text("Nobody hears this.")
    replies.flush()
    await replies.aclose()
    lines = [r.getMessage() for r in caplog.records if r.name == "sightline.replies"]
    assert len(lines) == 1 and "could not be sent to the room" in lines[0]
    assert all(r.exc_info is None for r in caplog.records)


async def test_replies_reach_the_user_alone(
    livekit: LiveKitServer, rooms: tuple[rtc.Room, asyncio.Queue[Received]],
) -> None:
    """A second participant in the user's room reads none of the replies, sent whole or
    streamed (they are built from the user's screen and memory); the user reads both."""
    agent, ended = rooms
    bystander = await _join(livekit, agent.name, "bystander")
    overheard: list[str] = []
    bystander.register_text_stream_handler(
        "lk.transcription", lambda reader, _identity: overheard.append(reader.info.topic))
    marker = asyncio.Event()
    bystander.on("data_received",
                 lambda packet: marker.set() if packet.topic == "marker" else None)
    try:
        replies = ReplyTranscript(agent, to="user", hold_s=0.05)
        await replies.capture_text("Whole at once.")
        replies.flush()
        assert (await _next(ended)).text == "Whole at once."
        await replies.capture_text("Slow, ")
        await asyncio.sleep(0.3)  # past the hold: this one streams
        await replies.capture_text("streamed.")
        replies.flush()
        assert (await _next(ended)).text == "Slow, streamed."
        await replies.aclose()
        # the agent's next packet, to everyone: the bystander has had all that came before it
        await agent.local_participant.publish_data(b"end", topic="marker")
        await asyncio.wait_for(marker.wait(), 10)
        assert overheard == []
    finally:
        await bystander.disconnect()


async def test_the_users_transcript_reaches_them_alone(livekit: LiveKitServer) -> None:
    """What the agent heard the user say, as livekit-agents' RoomIO sends it, to the user alone:
    each transcript a stream of its segment's words so far (an empty interim one sends
    nothing), stamped with their microphone; the segment's last says it is
    final (an empty final one ends the segment on its words so far), the next segment has an id
    of its own. A second participant in the room reads none of it."""
    agent = await _join(livekit, "users-transcript", "agent")
    user = await _join(livekit, "users-transcript", "user")
    bystander = await _join(livekit, "users-transcript", "bystander")
    streams: asyncio.Queue[tuple[dict[str, str], asyncio.Task[str]]] = asyncio.Queue()
    user.register_text_stream_handler("lk.transcription", lambda reader, _identity: (
        streams.put_nowait((dict(reader.info.attributes or {}),
                            asyncio.get_running_loop().create_task(reader.read_all())))))
    overheard: list[str] = []
    bystander.register_text_stream_handler(
        "lk.transcription", lambda reader, _identity: overheard.append(reader.info.topic))
    marked = [asyncio.Event(), asyncio.Event()]
    for room, event in zip((user, bystander), marked, strict=True):
        room.on("data_received", lambda packet, event=event: (
            event.set() if packet.topic == "marker" else None))
    seen = asyncio.Event()
    agent.on("track_published", lambda publication, _participant: (
        seen.set() if publication.source == rtc.TrackSource.SOURCE_MICROPHONE else None))
    try:
        microphone = await user.local_participant.publish_track(
            rtc.LocalAudioTrack.create_audio_track("microphone", rtc.AudioSource(48000, 1)),
            rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        await asyncio.wait_for(seen.wait(), 10)
        heard = UserTranscript(agent, to="user")
        for text, final in [("Why does", False), ("", False), ("Why does the build", False),
                            ("Why does the build fail?", True), ("It says", False), ("", True),
                            ("", True)]:
            heard.transcribed(UserInputTranscribedEvent(transcript=text, is_final=final))
        await heard.aclose()
        # the agent's next packet, to everyone: each has had all that was sent before it
        await agent.local_participant.publish_data(b"end", topic="marker")
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in marked)), 10)
        received = [streams.get_nowait() for _ in range(streams.qsize())]
        texts = await asyncio.wait_for(asyncio.gather(*(t for _a, t in received)), 10)
    finally:
        await bystander.disconnect()
        await user.disconnect()
        await agent.disconnect()
    assert texts == ["Why does", "Why does the build", "Why does the build fail?", "It says",
                     "It says"]
    assert [a["lk.transcription_final"] for a, _t in received] == [
        "false", "false", "true", "false", "true"]
    segments = [a["lk.segment_id"] for a, _t in received]
    assert segments[0] == segments[1] == segments[2] != segments[3] == segments[4]
    assert {a["lk.transcribed_track_id"] for a, _t in received} == {microphone.sid}
    assert overheard == []
