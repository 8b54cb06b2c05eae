"""What a live worker's job does in its room, on a real LiveKit server with a `sightline start`
worker (hearing with the local recogniser, answering in text): what the session sends (replies,
costs, live assist, its transcript of what it heard the user say) reaches the user it serves and
no one else in the room, a job whose metadata names its user serves them and not someone who
was there first, and a job whose user never joins ends after SIGHTLINE_PARTICIPANT_WAIT_S
instead of holding its session slot until the room empties.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from conftest import DEMO_FIXTURE, fresh_database
from livekit import api, rtc
from test_e2e_livekit import sample, scrape, session_events
from test_speech import QUESTIONS, VOICE, wer
from worker_fixture import running_worker, worker_env

from agent.assist import ASSIST_TOPIC
from agent.wire_format_server import CapturedRequest, ScriptedModelServer, ScriptedReply
from agent.worker import COST_TOPIC
from bench.livekit_harness import API_KEY, API_SECRET, LiveKitServer, User, VoiceUser, Worker

pytestmark = pytest.mark.e2e

AGENT_NAME = "sightline-room-scope"
ANSWER = "(scripted) The build fails on a missing import."
PARTICIPANT_WAIT_S = 8


def _reply(request: CapturedRequest) -> ScriptedReply:
    if request.purpose == "memory":
        return ScriptedReply(text='{"facts": [], "summary": "(scripted) A build question."}')
    return ScriptedReply(text=f"[[confidence: 0.95]] {ANSWER}")


@pytest.fixture(scope="module")
async def database_url(postgres_admin_url: str) -> str:
    return await fresh_database(postgres_admin_url, "room_scope")


@pytest.fixture(scope="module")
async def worker(livekit: LiveKitServer, database_url: str,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Worker]:
    workdir = tmp_path_factory.mktemp("worker")
    async with ScriptedModelServer(replies=_reply) as model, running_worker(workdir, worker_env(
            livekit, model, agent_name=AGENT_NAME, database_url=database_url,
            data_dir=workdir / "data", SIGHTLINE_MAX_SESSIONS="4", SIGHTLINE_SCREEN_TEXT="off",
            SIGHTLINE_EMBEDDINGS="wordllama",
            SIGHTLINE_PARTICIPANT_WAIT_S=str(PARTICIPANT_WAIT_S), SIGHTLINE_STT="local",
            SIGHTLINE_TURN_DETECTION="vad"), name="worker-room-scope") as worker:
        yield worker


class Bystander:
    """A second participant in the user's room: what reaches them (subscribing to every track,
    as a client does by default), and a marker to know that whatever was sent before it has."""

    def __init__(self) -> None:
        self.room = rtc.Room()
        self.heard: list[str] = []  # topics of the data messages and text streams received
        # (publisher, track sid) of each track they could subscribe to
        self.subscribed: list[tuple[str, str]] = []
        self.marked = asyncio.Event()
        self.room.on("data_received", self._on_data)
        self.room.on("track_subscribed", lambda _track, publication, publisher: (
            self.subscribed.append((publisher.identity, publication.sid))))
        self.room.register_text_stream_handler(
            "lk.transcription", lambda reader, _identity: self.heard.append(reader.info.topic))

    def _on_data(self, packet: rtc.DataPacket) -> None:
        if packet.topic == "marker":
            self.marked.set()
        else:
            self.heard.append(packet.topic or "")

    async def join(self, livekit: LiveKitServer, room: str) -> None:
        token = (api.AccessToken(API_KEY, API_SECRET).with_identity("bystander")
                 .with_grants(api.VideoGrants(room_join=True, room=room)).to_jwt())
        await self.room.connect(livekit.ws_url, token)


async def test_what_a_session_sends_reaches_its_user_alone(
    livekit: LiveKitServer, worker: Worker,
) -> None:
    """A second participant joins the user's room: the user gets the reply, the cost messages
    and the live-assist message; the second participant gets none of them (they are built
    from the user's screen and memory)."""
    user = User(livekit, "scope-two-people", agent_name=AGENT_NAME,
                metadata={"tenant": "scope"}, video=DEMO_FIXTURE / "screen.webm")
    bystander = Bystander()
    await user.join("user-scope")
    try:
        await user.wait_for_agent()
        await bystander.join(livekit, user.room_name)
        await user.say("Why does the build fail?")
        assert await user.wait_for_reply() == ANSWER
        await user.wait_for_data(COST_TOPIC)
        await user.wait_for_data(ASSIST_TOPIC)
        # sent after all the above reached the user: the bystander has had them once it has it
        await user.room.local_participant.publish_data(b"end", topic="marker")
        await asyncio.wait_for(bystander.marked.wait(), 10)
    finally:
        await user.leave()
        await bystander.room.disconnect()
    assert bystander.heard == []
    assert (await session_events(worker, user))[-1]["kind"] == "summary"


async def test_what_the_agent_heard_the_user_say_reaches_them_alone(
    livekit: LiveKitServer, worker: Worker,
) -> None:
    """A second participant is in the room while the user asks aloud: the user reads the
    transcript of what the agent heard them say, stamped with their microphone (as
    livekit-agents stamps it), and gets the answer; the other participant reads neither
    (livekit-agents' RoomIO sent the transcript to the whole room)."""
    user = VoiceUser(livekit, "scope-spoken", agent_name=AGENT_NAME,
                     metadata={"tenant": "scope"}, video=DEMO_FIXTURE / "screen.webm")
    bystander = Bystander()
    await user.join("speaker-scope")
    try:
        await user.wait_for_agent()
        await bystander.join(livekit, user.room_name)
        await user.publish_microphone()
        await asyncio.sleep(1)  # the agent's audio input starts reading the subscribed track
        user.speak(VOICE / "q01.wav")  # "Why does this error show up?"
        heard = await asyncio.wait_for(user.user_transcripts.get(), 30)
        assert await user.wait_for_reply() == ANSWER
        # sent after all the above reached the user: the bystander has had them once it has it
        await user.room.local_participant.publish_data(b"end", topic="marker")
        await asyncio.wait_for(bystander.marked.wait(), 10)
    finally:
        await user.leave()
        await bystander.room.disconnect()
    assert wer(QUESTIONS[0], heard) <= 0.5, heard  # Moonshine through Opus: a word may be off
    assert bystander.heard == []


async def test_a_job_that_names_its_user_serves_them_not_who_was_there_first(
    livekit: LiveKitServer, worker: Worker, database_url: str,
) -> None:
    """A job's metadata names its user (`"user"`, as the fleet's re-dispatch names the room's
    user): someone else already in the room when the agent joins is not served; the named
    user, joining after the agent, is."""
    room = "scope-named-user"
    user = User(livekit, room, agent_name=AGENT_NAME,
                metadata={"tenant": "scope", "user": "named-user"},
                video=DEMO_FIXTURE / "screen.webm")
    bystander = Bystander()
    await bystander.join(livekit, room)
    try:
        await user.dispatch()
        deadline = time.monotonic() + 60
        async with livekit.client() as lk:
            while not await _agents_in(lk, room):
                assert time.monotonic() < deadline, "the agent never joined the room"
                await asyncio.sleep(0.2)
        await user.connect("named-user")
        await user.say("Why does the build fail?")
        assert await user.wait_for_reply() == ANSWER
    finally:
        await user.leave()
        await bystander.room.disconnect()
    conn = await asyncpg.connect(database_url)
    try:
        assert [r["user_id"] for r in await conn.fetch(
            "SELECT user_id FROM sessions WHERE room = $1", room)] == ["named-user"]
    finally:
        await conn.close()


async def _agents_in(lk: api.LiveKitAPI, room: str) -> int:
    listed = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
    return sum(p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT for p in listed.participants)


async def test_a_job_whose_user_never_joins_ends_and_frees_its_slot(
    livekit: LiveKitServer, worker: Worker, database_url: str,
) -> None:
    """A room is dispatched and nobody joins it (a console page that never connected): the
    agent joins, waits SIGHTLINE_PARTICIPANT_WAIT_S, and its job ends: the agent leaves the
    room, the worker runs no job, one log line says why, no traceback, no session row."""
    room = "scope-nobody-comes"
    log_start = len(worker.log_text())
    await User(livekit, room, agent_name=AGENT_NAME, metadata={"tenant": "scope"},
               video=DEMO_FIXTURE / "screen.webm").dispatch()
    deadline = time.monotonic() + 60
    async with livekit.client() as lk:
        while not await _agents_in(lk, room):
            assert time.monotonic() < deadline, "the agent never joined the room"
            await asyncio.sleep(0.2)
        while await _agents_in(lk, room):
            assert time.monotonic() < deadline, (
                f"the agent was still in the room {PARTICIPANT_WAIT_S} s after nobody joined:\n"
                f"{worker.log_text()[log_start:][-3000:]}")
            await asyncio.sleep(0.2)
    while sample(await scrape(worker), "lk_agents_active_job_count"):
        assert time.monotonic() < deadline, "the job still counts as running"
        await asyncio.sleep(0.2)
    log = worker.log_text()[log_start:]
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    [said] = [r["message"] for r in records if "no user joined" in r["message"]]
    assert said.startswith(f"no user joined room {room} within {PARTICIPANT_WAIT_S} s")
    assert "Traceback" not in log
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM sessions WHERE room = $1", room) == 0
    finally:
        await conn.close()

