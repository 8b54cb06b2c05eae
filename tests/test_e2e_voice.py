"""Spoken turns end to end on a real LiveKit server, with the `local` speech pair.

A `sightline start` worker (SIGHTLINE_STT=local, SIGHTLINE_TTS=local) serves a user who joins
with the rtc SDK, shares the demo screen recording and talks: a microphone track plays a
recorded question (fixtures/voice, made with espeak-ng). The worker hears it (local VAD, local
end-of-turn model, Moonshine), the cascade answers (SCRIPTED, the wire-format server) and the
agent speaks (espeak-ng). The test records the agent's audio track and transcribes it back with
the same local recogniser: it must be speech of the scripted reply. The second test speaks over
the agent. The third runs a worker on an OpenAI-compatible speech endpoint (SIGHTLINE_STT /
SIGHTLINE_TTS = openai:..., base URLs on the wire-format server, whose transcript and speech are
SCRIPTED): what it transcribes reaches the cascade, the fake's speech reaches the user, and both
are priced in the ledger. Another has a second participant in the room: the agent's speech and
its transcript reach the user alone.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
from conftest import fresh_database
from livekit import rtc
from test_e2e_livekit import Replies, session_events, sure, turn_requests
from test_speech import QUESTIONS, VOICE, wer
from test_worker_room_scope import Bystander

from agent.local_speech import LocalTTS, transcribe
from agent.speech_outage import NOTICES, PROBE_TEXT, STT, TTS
from agent.wire_format_server import SPEECH_SECONDS_PER_CHAR, ScriptedModelServer
from bench.livekit_harness import (
    API_KEY,
    API_SECRET,
    LiveKitServer,
    VoiceUser,
    Worker,
    free_port,
    start_worker,
)

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.e2e, pytest.mark.realtime]

AGENT_NAME = "sightline-voice-e2e"
OPENAI_AGENT_NAME = "sightline-voice-openai-e2e"
# what the wire-format server's OpenAI transcription endpoint says it heard (SCRIPTED)
SCRIPTED_TRANSCRIPT = "(scripted transcript) Why does this error show up?"
# replies the local recogniser hears well in espeak-ng's voice (fewer than 1 word in 4 wrong
# when synthesised and transcribed offline), so a transcript of the room's audio can be judged
ANSWER = "The test failed because the expected value changed."
LONG_ANSWER = (
    "Let me walk you through it slowly. The file config dot json has a trailing comma after "
    "the last entry. Python's json module is strict, so it refuses the comma. Open the file, "
    "find the line the traceback names, delete the comma, save the file and run the script "
    "again. If it still fails, read the next error from the top and we will look at it.")
SECOND_ANSWER = "The build failed because the test file is missing."


# the LiveKit server: the text end-to-end tests' module-scoped fixture


@pytest.fixture(scope="module")
async def model_server() -> AsyncIterator[tuple[ScriptedModelServer, Replies]]:
    """The scripted models, which also serve OpenAI's speech API (for the openai worker)."""
    replies = Replies()
    async with ScriptedModelServer(replies=replies,
                                   transcripts=lambda _seconds: SCRIPTED_TRANSCRIPT) as server:
        yield server, replies


@pytest.fixture(scope="module")
async def voice_database_url(postgres_admin_url: str) -> str:
    return await fresh_database(postgres_admin_url, "e2e_voice")


def voice_worker_env(livekit: LiveKitServer, server: ScriptedModelServer, database_url: str,
                     workdir: Path, agent_name: str) -> dict[str, str]:
    """A voice worker's settings, speech backends aside."""
    return {
        "LIVEKIT_URL": livekit.ws_url, "LIVEKIT_API_KEY": API_KEY,
        "LIVEKIT_API_SECRET": API_SECRET, "SIGHTLINE_AGENT_NAME": agent_name,
        "GOOGLE_API_KEY": "e2e-fake-key", "ANTHROPIC_API_KEY": "e2e-fake-key",
        "SIGHTLINE_GEMINI_BASE_URL": server.base_url,
        "SIGHTLINE_ANTHROPIC_BASE_URL": server.base_url,
        "SIGHTLINE_MODEL_RETRIES": "0", "DATABASE_URL": database_url,
        "SIGHTLINE_DATA_DIR": str(workdir / "data"),
        "SIGHTLINE_HEALTH_PORT": str(free_port()), "SIGHTLINE_WEBHOOK_PORT": "0",
        "SIGHTLINE_MAX_SESSIONS": "4", "SIGHTLINE_MEMORY_UPDATES": "off",
    }


@pytest.fixture(scope="module")
async def worker(livekit: LiveKitServer, model_server: tuple[ScriptedModelServer, Replies],
                 voice_database_url: str, tmp_path_factory: pytest.TempPathFactory,
                 ) -> AsyncIterator[Worker]:
    workdir = tmp_path_factory.mktemp("voice-worker")
    env = voice_worker_env(livekit, model_server[0], voice_database_url, workdir, AGENT_NAME)
    proc = start_worker(workdir, {**env, "SIGHTLINE_STT": "local", "SIGHTLINE_TTS": "local"})
    yield proc
    await proc.astop()


@pytest.fixture(scope="module")
async def openai_worker(livekit: LiveKitServer,
                        model_server: tuple[ScriptedModelServer, Replies],
                        voice_database_url: str,
                        tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Worker]:
    """A self-hosted worker on an OpenAI-compatible speech endpoint: the wire-format server."""
    server = model_server[0]
    workdir = tmp_path_factory.mktemp("openai-voice-worker")
    env = voice_worker_env(livekit, server, voice_database_url, workdir, OPENAI_AGENT_NAME)
    proc = start_worker(workdir, {
        **env, "SIGHTLINE_STT": "openai:whisper-1", "SIGHTLINE_TTS": "openai:tts-1",
        "SIGHTLINE_STT_BASE_URL": f"{server.base_url}/v1",
        "SIGHTLINE_TTS_BASE_URL": f"{server.base_url}/v1", "OPENAI_API_KEY": "e2e-fake-key",
        "SIGHTLINE_SYNTHESIS_PROBE_S": "2", "SIGHTLINE_SPEECH_RETRIES": "1"})
    yield proc
    await proc.astop()


class AttributedUser(VoiceUser):
    """A voice user who also keeps who sent each `lk.transcription` stream, and its header's
    attributes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transcripts: list[tuple[str, dict[str, str]]] = []

    def _on_transcription(self, reader: rtc.TextStreamReader, identity: str) -> None:
        self.transcripts.append((identity, dict(reader.info.attributes or {})))
        super()._on_transcription(reader, identity)


async def voice_user(livekit: LiveKitServer, room: str, identity: str,
                     agent_name: str = AGENT_NAME,
                     kind: type[VoiceUser] = VoiceUser) -> VoiceUser:
    user = kind(livekit, room, agent_name=agent_name, metadata={"tenant": "e2e-voice"},
                video=REPO / "fixtures" / "demo" / "screen.webm")
    await user.join(identity)
    await user.wait_for_agent()
    await user.publish_video(rtc.TrackSource.SOURCE_SCREENSHARE, fps=5)
    await user.publish_microphone()
    await asyncio.sleep(2)  # the agent's audio input starts reading the subscribed track
    return user


async def wait_for_speech_end(user: VoiceUser, since: float, quiet_s: float = 1.5,
                              timeout_s: float = 60) -> tuple[float, float]:
    """The first span of the agent's speech after `since`, once `quiet_s` of silence ended it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        spans = user.heard.speech_spans(since=since)
        if spans and time.monotonic() - spans[0][1] > quiet_s:
            return spans[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"the agent did not speak (spans: {user.heard.speech_spans(since=since)})")


async def assert_spoke(user: VoiceUser, span: tuple[float, float], text: str) -> None:
    """The agent's audio in `span` is speech of `text`: transcribed back by the local
    recogniser, most of the words it reads in espeak-ng's speech of `text` made here (its own
    misreadings, "expected mail" for "expected value", are not the room's: with them counted, a
    run whose audio came through whole failed at 4 words in 8); and as long as espeak-ng
    takes to say it here."""
    alone = rtc.combine_audio_frames([e.frame async for e in LocalTTS().synthesize(text)])
    read_alone = transcribe(alone)
    assert wer(text, read_alone) < 0.25, read_alone  # the replies are chosen so
    spoken = transcribe(user.heard.between(span[0] - 0.2, span[1] + 0.2))
    assert wer(read_alone, spoken) < 0.5, (
        f"the agent's audio said {spoken!r} (espeak-ng's speech of it, here: {read_alone!r}); "
        f"as received: {user.heard.altered_between(span[0] - 0.2, span[1] + 0.2)}")
    loud = span[1] - span[0]  # from the first to the last loud 10 ms frame
    assert abs(loud - alone.duration) < 0.3 * alone.duration, (loud, alone.duration)


def sightline(env: dict[str, str], *args: str) -> str:
    cli = str(Path(sys.executable).with_name("sightline"))
    return subprocess.run([cli, *args], env=env, text=True, capture_output=True,
                          check=True).stdout


async def test_spoken_then_typed_questions_get_spoken_answers(
    livekit: LiveKitServer, worker: Worker, model_server: tuple[ScriptedModelServer, Replies],
    voice_database_url: str,
) -> None:
    server, replies = model_server
    replies.next = sure(ANSWER)
    seen = len(server.requests)
    user = await voice_user(livekit, "voice-question", "speaker-1")
    try:
        user.speak(VOICE / "q01.wav")  # "Why does this error show up?"
        heard = await asyncio.wait_for(user.user_transcripts.get(), 30)
        span = await wait_for_speech_end(user, since=user.spoke_until)
        reply = await user.wait_for_reply(timeout_s=10)
        # then a typed question in the same session: answered aloud too
        replies.next = sure(SECOND_ANSWER)
        typed_at = time.monotonic()
        await user.say("And why did the build fail?")
        typed_reply = await user.wait_for_reply(timeout_s=30)
        typed_span = await wait_for_speech_end(user, since=typed_at)
    finally:
        await user.leave()

    events = await session_events(worker, user)
    heard_events = [e["detail"] for e in events if e["kind"] == "heard"]
    assert len(heard_events) == 1  # the typed one was not heard
    # how the microphone reached the agent: the question (1.8 s) and the silence before it,
    # from WebRTC's counts at the edges of the user's speech
    reception = heard_events[0]["reception"]
    assert reception["received_s"] > 1.8, reception
    assert reception["altered_s"] == pytest.approx(
        reception["concealed_s"] + reception["accelerated_s"] + reception["decelerated_s"],
        abs=0.002)
    # what the agent heard, shown to the user (Moonshine through Opus: a word or two may be off)
    assert wer(QUESTIONS[0], heard) <= 0.5, (heard, reception)
    asked = turn_requests(server, seen)
    assert asked and heard in asked[0].text and asked[0].image_count == 1  # with the screen
    assert reply == ANSWER
    await assert_spoke(user, span, ANSWER)
    assert typed_reply == SECOND_ANSWER
    await assert_spoke(user, typed_span, SECOND_ANSWER)
    assert "And why did the build fail?" in turn_requests(server, seen)[-1].text

    speech = [e for e in events if e["kind"] == "speech"]
    assert {(e["detail"]["direction"], e["model"]) for e in speech} == {
        ("stt", "moonshine-tiny-en"), ("tts", "espeak-ng")}
    stt_seconds = sum(e["detail"]["audio_s"] for e in speech if e["detail"]["direction"] == "stt")
    assert 1.0 < stt_seconds < 6, stt_seconds  # the question (1.8 s) with the VAD's padding
    tts = [e for e in speech if e["detail"]["direction"] == "tts"]
    assert sum(e["detail"]["characters"] for e in tts) == len(ANSWER) + len(SECOND_ANSWER)
    voice = events[-1]["detail"]["voice"]
    assert voice["replies"] == 2 and voice["interrupted_replies"] == 0
    assert voice["heard_altered"]["seconds"] == pytest.approx(reception["altered_s"])
    assert voice["spoken_characters"] == len(ANSWER) + len(SECOND_ANSWER)
    assert voice["cost_usd"] == 0.0

    # `sightline costs`: the tenant's voice minutes, and the session's voice line
    env = {**os.environ, "DATABASE_URL": voice_database_url,
           "SIGHTLINE_DATA_DIR": worker.env["SIGHTLINE_DATA_DIR"]}
    listed = await asyncio.to_thread(sightline, env, "costs", "--tenant", "e2e-voice")
    minutes = float(listed.splitlines()[-1].split(": ")[1].split()[0])
    assert minutes == pytest.approx((stt_seconds + voice["spoken_s"]) / 60, abs=0.01)
    shown = await asyncio.to_thread(sightline, env, "costs", events[0]["session_id"])
    assert "  voice: " in shown and "0 of 2 replies interrupted" in shown


async def test_user_speaks_over_the_agent(
    livekit: LiveKitServer, worker: Worker, model_server: tuple[ScriptedModelServer, Replies],
) -> None:
    """Barge-in: the agent is reading a long answer; the user asks another question over it.
    The agent's speech stops, the cut reply is marked in the ledger, the new question is
    answered."""
    server, replies = model_server
    replies.next = sure(LONG_ANSWER)
    seen = len(server.requests)
    user = await voice_user(livekit, "voice-barge-in", "speaker-2")
    try:
        user.speak(VOICE / "q01.wav")
        earlier = [await asyncio.wait_for(user.user_transcripts.get(), 30)]
        # the long answer starts; interruptions count after livekit's 3 s echo-cancel warm-up
        started = time.monotonic()
        while not user.heard.speech_spans(since=user.spoke_until):
            assert time.monotonic() - started < 30, "the agent never started speaking"
            await asyncio.sleep(0.1)
        replies.next = sure(SECOND_ANSWER)  # the long answer was asked for: the next one
        await asyncio.sleep(5)
        while not user.user_transcripts.empty():
            earlier.append(user.user_transcripts.get_nowait())
        barge_at = time.monotonic()
        user.speak(VOICE / "q06.wav")  # "What file is open in the editor right now?"
        heard_second = await asyncio.wait_for(user.user_transcripts.get(), 30)
        heard_at = time.monotonic()  # the agent's answer to it comes after this
        second = await wait_for_speech_end(user, since=heard_at)
    finally:
        await user.leave()

    # the first answer is ~25 s of speech: it stopped within ~2 s of the user speaking, and
    # nothing more of it was said before the second answer (a busy machine's playback may
    # break it into spans: the last one counts)
    before = [s for s in user.heard.speech_spans(since=barge_at - 5) if s[0] < heard_at]
    assert before and before[-1][1] - barge_at < 2.5, (before, barge_at)
    # the second question reached the cascade as heard (its word error rate through the room
    # varies with where the barge-in cut in: measured by bench.voice, not bounded here)
    assert heard_second.strip() and any(
        heard_second in r.text for r in turn_requests(server, seen)[1:]), (earlier, heard_second)
    await assert_spoke(user, second, SECOND_ANSWER)

    events = await session_events(worker, user)
    reply_events = [e["detail"] for e in events if e["kind"] == "reply"]
    assert [r["interrupted"] for r in reply_events] == [True, False], reply_events
    assert reply_events[0]["characters"] < len(LONG_ANSWER)  # cut where its speech stopped
    voice = events[-1]["detail"]["voice"]
    assert voice["replies"] == 2 and voice["interrupted_replies"] == 1
    # two user turns, each heard once (a question the VAD splits starts a preemptive round that
    # is discarded: marked, and no turn; test_a_pause_mid_question_is_one_turn)
    turns = events[-1]["detail"]["turns"]
    assert turns["user_turns"] == 2, turns
    assert turns["model_rounds"] == 2 + turns["discarded_rounds"], turns
    assert len([e for e in events if e["kind"] == "heard"]) == 2


async def test_the_agents_speech_and_transcript_reach_its_user_alone(
    livekit: LiveKitServer, worker: Worker, model_server: tuple[ScriptedModelServer, Replies],
) -> None:
    """A second participant is in the room of a spoken session, subscribing to every track as
    a client does by default. The user hears the answer and reads its transcript, paced by the
    speech and stamped with the agent's speech track as livekit-agents stamps its own; the
    other participant sees the agent's speech track but may not subscribe to it, and gets no
    transcript (livekit-agents' room output sent both to the whole room)."""
    model_server[1].next = sure(ANSWER)
    user = await voice_user(livekit, "voice-bystander", "speaker-6", kind=AttributedUser)
    assert isinstance(user, AttributedUser)
    bystander = Bystander()
    try:
        await bystander.join(livekit, user.room_name)
        asked_at = time.monotonic()
        await user.say("Why did the test fail?")
        reply = await user.wait_for_reply(timeout_s=30)
        span = await wait_for_speech_end(user, since=asked_at)
        # sent after the reply reached the user: the bystander has had it once it has this
        await user.room.local_participant.publish_data(b"end", topic="marker")
        await asyncio.wait_for(bystander.marked.wait(), 10)
        agent = await user.wait_for_agent()
        [speech_track] = agent.track_publications  # the agent's speech, as the user sees it
        seen = [p for p in bystander.room.remote_participants.values()
                if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT]
    finally:
        await user.leave()
        await bystander.room.disconnect()
    assert reply == ANSWER
    await assert_spoke(user, span, ANSWER)
    [(sender, attributes)] = user.transcripts
    assert sender == agent.identity
    assert attributes["lk.transcribed_track_id"] == speech_track
    assert [list(p.track_publications) for p in seen] == [[speech_track]]
    # the user's tracks (their screen and microphone), none of the agent's
    assert sorted(who for who, _ in bystander.subscribed) == ["speaker-6", "speaker-6"]
    assert bystander.heard == []


async def test_openai_compatible_speech_endpoint_hears_and_speaks(
    livekit: LiveKitServer, openai_worker: Worker,
    model_server: tuple[ScriptedModelServer, Replies], voice_database_url: str,
) -> None:
    """A self-hosted worker with SIGHTLINE_STT=openai:whisper-1 and SIGHTLINE_TTS=openai:tts-1
    on a base URL: livekit-plugins-openai uploads the question the VAD cut out, the SCRIPTED
    transcript is the turn the cascade answers, and the SCRIPTED speech (a 220 Hz tone,
    SPEECH_SECONDS_PER_CHAR per character) is what the user hears; both are priced."""
    server, replies = model_server
    replies.next = sure(ANSWER)
    seen = len(server.requests)
    user = await voice_user(livekit, "voice-openai", "speaker-3", OPENAI_AGENT_NAME)
    try:
        asked_for = user.speak(VOICE / "q01.wav")  # "Why does this error show up?"
        heard = await asyncio.wait_for(user.user_transcripts.get(), 30)
        span = await wait_for_speech_end(user, since=user.spoke_until)
        reply = await user.wait_for_reply(timeout_s=10)
    finally:
        await user.leave()

    # the question went to the speech endpoint as WAV, once; its transcript is the turn
    uploads = [r for r in server.requests[seen:] if r.model == "whisper-1"]
    assert len(uploads) == 1 and uploads[0].headers["authorization"] == "***"
    uploaded_s = uploads[0].body["audio_seconds"]
    assert asked_for < uploaded_s < asked_for + 2, (asked_for, uploaded_s)  # with VAD padding
    assert heard == SCRIPTED_TRANSCRIPT
    asked = turn_requests(server, seen)
    assert len(asked) == 1 and SCRIPTED_TRANSCRIPT in asked[0].text
    assert asked[0].image_count == 1  # with the screen
    assert reply == ANSWER

    # the reply was spoken through the endpoint, and the user heard the fake's tone: as long
    # as the text says, about as loud as it was sent, at its pitch
    spoken = [r for r in server.requests[seen:] if r.model == "tts-1"]
    assert [r.body["input"] for r in spoken] == [ANSWER]
    assert spoken[0].body["response_format"] == "pcm"
    expected_s = len(ANSWER) * SPEECH_SECONDS_PER_CHAR
    # the tone's own length: in one CI run its frames arrived over 3.54 s for 3.06 s of sound
    loud_s = user.heard.loud_seconds(*span)
    assert abs(loud_s - expected_s) < 0.15 * expected_s, (span, loud_s, expected_s)
    audio = user.heard.between(*span)
    samples = np.frombuffer(audio.data, np.int16).astype(np.float64)
    rms = float(np.sqrt(np.mean(samples ** 2)))
    assert 0.7 * 8000 / np.sqrt(2) < rms < 1.3 * 8000 / np.sqrt(2), rms
    spectrum = np.abs(np.fft.rfft(samples))
    pitch = np.argmax(spectrum) * audio.sample_rate / len(samples)
    assert abs(pitch - 220) < 5, pitch

    # the ledger: one priced speech event each way, provider openai, in the cost log and in
    # cost_events
    events = await session_events(openai_worker, user)
    speech = [e for e in events if e["kind"] == "speech"]
    assert sorted((e["detail"]["direction"], e["provider"], e["model"]) for e in speech) == [
        ("stt", "openai", "whisper-1"), ("tts", "openai", "tts-1")], speech
    stt = next(e for e in speech if e["detail"]["direction"] == "stt")
    tts = next(e for e in speech if e["detail"]["direction"] == "tts")
    endpoint = server.base_url.removeprefix("http://")
    assert stt["detail"]["served_by"] == tts["detail"]["served_by"] == endpoint
    assert stt["detail"]["audio_s"] == pytest.approx(uploaded_s, abs=0.05)
    assert stt["cost_usd"] == pytest.approx(uploaded_s / 60 * 0.006, rel=0.02)  # whisper-1
    assert tts["detail"]["characters"] == len(ANSWER)
    assert tts["cost_usd"] == pytest.approx(len(ANSWER) * 15.0 / 1e6)  # tts-1
    conn = await asyncpg.connect(voice_database_url)
    try:
        rows = await conn.fetch(
            "SELECT provider, model, cost_usd::float AS cost_usd FROM cost_events "
            "WHERE session_id = $1 AND kind = 'speech' ORDER BY model", events[0]["session_id"])
    finally:
        await conn.close()
    assert [(r["provider"], r["model"]) for r in rows] == [("openai", "tts-1"),
                                                           ("openai", "whisper-1")]
    assert [r["cost_usd"] for r in rows] == pytest.approx([tts["cost_usd"], stt["cost_usd"]])
    voice = events[-1]["detail"]["voice"]
    assert voice["replies"] == 1 and voice["spoken_characters"] == len(ANSWER)
    assert voice["cost_usd"] == pytest.approx(stt["cost_usd"] + tts["cost_usd"])


def whisper_uploads(server: ScriptedModelServer) -> int:
    return sum(r.model == "whisper-1" for r in server.requests)


async def failed_upload(server: ScriptedModelServer, user: VoiceUser) -> None:
    """The user asks once more while recognition is down: its upload and its one retry
    (SIGHTLINE_SPEECH_RETRIES=1) fail, and its STT stream is made again 0.5 s later (speech
    before that is not heard)."""
    before = whisper_uploads(server)
    user.speak(VOICE / "q01.wav")
    for _ in range(150):
        if whisper_uploads(server) >= before + 2:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)


async def assistant_messages(database_url: str, session_id: str) -> list[str]:
    """What the session's conversation holds of the agent's, in order (the messages table)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT content FROM messages WHERE session_id = $1 AND "
                                "role = 'assistant' ORDER BY id", session_id)
    finally:
        await conn.close()
    return [row["content"] for row in rows]


async def test_a_question_typed_over_speech_as_synthesis_fails_is_answered_once(
    livekit: LiveKitServer, openai_worker: Worker,
    model_server: tuple[ScriptedModelServer, Replies], voice_database_url: str,
) -> None:
    """The agent reads a long answer aloud; synthesis goes down (a SCRIPTED outage) and the
    user types a question over the speech, which cuts it. The answer's synthesis fails while
    livekit-agents may still be cutting the first reply's transcript: the answer then reaches the
    chat by itself, before the notice (seen on a busy machine), and was sent a second time after
    it. Either way the user gets the notice and the answer once each, and the conversation has
    the answer once."""
    server, replies = model_server
    user = await voice_user(livekit, "voice-outage-over-speech", "speaker-7", OPENAI_AGENT_NAME)
    try:
        replies.next = sure(LONG_ANSWER)
        await user.say("Walk me through the error.")
        started = time.monotonic()
        while not user.heard.speech_spans(since=started):
            assert time.monotonic() - started < 30, "the agent never started speaking"
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)  # its synthesis is done; it speaks for ~25 s
        server.speech_outage = {TTS}
        replies.next = sure(ANSWER)
        await user.say("And what does the red line mean?")
        got = [await user.wait_for_reply(timeout_s=30)]  # the cut long answer's transcript
        while len(got) < 4:
            try:
                got.append(await user.wait_for_reply(timeout_s=5))
            except AssertionError:  # nothing more came
                break
        assert LONG_ANSWER.startswith(got[0]) and got[0] != LONG_ANSWER, got
        assert sorted(got[1:]) == sorted([NOTICES[TTS], ANSWER]), got
    finally:
        server.speech_outage = set()
        await user.leave()
    events = await session_events(openai_worker, user)
    said = await assistant_messages(voice_database_url, events[0]["session_id"])
    assert said[1:] == [ANSWER], said


async def test_a_speech_outage_goes_on_in_the_chat(
    livekit: LiveKitServer, openai_worker: Worker,
    model_server: tuple[ScriptedModelServer, Replies], voice_database_url: str,
) -> None:
    """The OpenAI-compatible speech endpoint fails (a SCRIPTED outage: 503s), recognition
    first, then synthesis. livekit-agents alone closed the session at the fourth failure, told
    the user nothing, and lost every answer while synthesis was down. Now the session stays, the
    user is told once per outage what failed (aloud while synthesis works), typed questions are
    answered, the answer synthesis failed to speak comes as text and is kept in the
    conversation, later answers come as text at once, and when the endpoint is back the agent
    hears and speaks again. Every failure is in the ledger."""
    server, replies = model_server
    seen = len(server.requests)
    logged_before = len(openai_worker.log_text())  # the worker's log is the module's
    user = await voice_user(livekit, "voice-outage", "speaker-5", OPENAI_AGENT_NAME)
    agent_left = asyncio.Event()
    user.room.on("participant_disconnected", lambda _participant: agent_left.set())
    try:
        server.speech_outage = {STT}
        uploads_before = whisper_uploads(server)
        user.speak(VOICE / "q01.wav")
        assert await user.wait_for_reply(timeout_s=30) == NOTICES[STT]
        await wait_for_speech_end(user, since=user.spoke_until)  # told aloud
        for _ in range(3):  # three more questions nobody can hear: no second notice, and
            await failed_upload(server, user)  # livekit-agents alone closed at the fourth
        # each question uploaded twice: SIGHTLINE_SPEECH_RETRIES=1 (livekit-agents' default 3)
        assert whisper_uploads(server) - uploads_before == 4 * 2
        replies.next = sure(ANSWER)
        await user.say("What is on my screen?")
        assert await user.wait_for_reply(timeout_s=30) == ANSWER

        server.speech_outage = set()  # heard again
        replies.next = sure(SECOND_ANSWER)
        user.speak(VOICE / "q01.wav")
        assert await asyncio.wait_for(user.user_transcripts.get(), 30) == SCRIPTED_TRANSCRIPT
        assert await user.wait_for_reply(timeout_s=30) == SECOND_ANSWER
        await wait_for_speech_end(user, since=user.spoke_until)  # typed over: the test before

        server.speech_outage = {TTS}
        replies.next = sure(ANSWER)
        await user.say("And what does the red line mean?")
        # the notice, and the answer synthesis failed to speak as text: in either order (its
        # own text may pass to the chat as the audio goes off; it is then not sent again)
        told = [await user.wait_for_reply(timeout_s=30) for _ in range(2)]
        assert sorted(told) == sorted([NOTICES[TTS], ANSWER]), told
        replies.next = sure(SECOND_ANSWER)
        asked_at = len(server.requests)
        await user.say("And why did the build fail?")
        assert await user.wait_for_reply(timeout_s=10) == SECOND_ANSWER
        # ... as text at once: nothing but the probe asked for speech
        assert {r.body["input"] for r in server.requests[asked_at:]
                if r.model == "tts-1"} <= {PROBE_TEXT}

        server.speech_outage = set()  # the probe finds synthesis back, and it speaks again
        cleared_at = len(server.requests)
        for _ in range(100):
            if any(r.model == "tts-1" for r in server.requests[cleared_at:]):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        replies.next = sure(ANSWER)
        typed_at = time.monotonic()
        await user.say("Thanks. And the first error?")
        assert await user.wait_for_reply(timeout_s=30) == ANSWER
        await wait_for_speech_end(user, since=typed_at)
        assert not agent_left.is_set()
    finally:
        server.speech_outage = set()
        await user.leave()

    events = await session_events(openai_worker, user)
    failed = [e["detail"] for e in events if e["kind"] == "speech_failed"]
    stt_failed = [f for f in failed if f["engine"] == STT]
    tts_failed = [f for f in failed if f["engine"] == TTS]
    assert len(stt_failed) == 4 and tts_failed, failed  # four questions; the answer, probes
    assert all(f["provider"] == "openai" and "503" in f["error"] for f in failed), failed
    recovered = {e["detail"]["engine"]: e["detail"] for e in events
                 if e["kind"] == "speech_recovered"}
    assert recovered[STT]["failures"] == len(stt_failed)
    assert recovered[TTS]["failures"] == len(tts_failed)
    voice = events[-1]["detail"]["voice"]
    assert voice["failed"] == {STT: len(stt_failed), TTS: len(tts_failed)}
    # five answers reached the user, the unspoken one as text; no question looked repeated,
    # so none climbed the cascade
    assert voice["replies"] == 5
    assert {r.model for r in turn_requests(server, seen)} == {"gemini-2.5-flash-lite"}
    said = await assistant_messages(voice_database_url, events[0]["session_id"])
    assert said == [ANSWER, SECOND_ANSWER, ANSWER, SECOND_ANSWER, ANSWER]
    log = openai_worker.log_text()[logged_before:]
    assert log.count("speech recognition (openai whisper-1) failed") == 1
    assert log.count("speech synthesis (openai tts-1) failed") == 1
    env = {**os.environ, "DATABASE_URL": voice_database_url,
           "SIGHTLINE_DATA_DIR": openai_worker.env["SIGHTLINE_DATA_DIR"]}
    shown = await asyncio.to_thread(sightline, env, "costs", events[0]["session_id"])
    assert f"  speech failures: 4 stt, {len(tts_failed)} tts (the session went on in the chat)" \
        in shown


def paused_question(source: Path, target: Path, at: float = 0.7, pause_s: float = 0.8) -> Path:
    """`source` with `pause_s` of silence at its quiet moment nearest `at` of its length: a
    user who stops to think mid-sentence. The VAD hears two stretches of speech (it ends one
    after 0.25 s of silence); the end-of-turn model waits on an unfinished sentence."""
    with wave.open(str(source)) as wav:
        params, samples = wav.getparams(), np.frombuffer(wav.readframes(wav.getnframes()),
                                                         np.int16)
    step = params.framerate // 100
    loudness = np.abs(samples[:len(samples) // step * step].reshape(-1, step)).mean(axis=1)
    quiet = np.flatnonzero(loudness < 300)
    cut = int(quiet[np.argmin(np.abs(quiet - len(loudness) * at))]) * step
    silence = np.zeros(int(params.framerate * pause_s), np.int16)
    with wave.open(str(target), "wb") as wav:
        wav.setparams(params)
        wav.writeframes(np.concatenate([samples[:cut], silence, samples[cut:]]).tobytes())
    return target


async def test_a_pause_mid_question_is_one_turn(
    livekit: LiveKitServer, worker: Worker, model_server: tuple[ScriptedModelServer, Replies],
    tmp_path: Path,
) -> None:
    """The user pauses mid-question ("What does the red line at the ... bottom mean?"). The
    first stretch's transcript starts a preemptive generation; when the second stretch comes,
    livekit-agents discards it unplayed and asks again with the whole question: the user hears
    one answer, and the ledger keeps the discarded round's cost but counts one user turn, which
    starts at tier 0 as a first question. (The end-of-turn model may instead end the turn at
    the pause, or the VAD hear one stretch: the ledger's counts must agree all the same.)"""
    server, replies = model_server
    replies.next = sure(ANSWER)
    seen = len(server.requests)
    user = await voice_user(livekit, "voice-pause", "speaker-4")
    try:
        await asyncio.sleep(user.speak(paused_question(VOICE / "q03.wav",
                                                       tmp_path / "q03_paused.wav")) + 0.2)
        await wait_for_speech_end(user, since=user.spoke_until)
        reply = await user.wait_for_reply(timeout_s=10)
    finally:
        await user.leave()

    assert reply == ANSWER
    events = await session_events(worker, user)
    rounds = [e["detail"] for e in events if e["kind"] == "turn"]
    discarded = [e["detail"]["request_id"] for e in events if e["kind"] == "round_discarded"]
    turns, voice = events[-1]["detail"]["turns"], events[-1]["detail"]["voice"]
    heard = [e for e in events if e["kind"] == "heard"]
    # every round was asked of the first tier: the dropped first half is no earlier question
    assert [r.model for r in turn_requests(server, seen)] == ["gemini-2.5-flash-lite"] * len(
        rounds)
    assert turns["model_rounds"] == len(rounds) == turns["user_turns"] + len(discarded)
    assert turns["discarded_rounds"] == len(discarded)
    assert turns["user_turns"] == len(heard), (turns, voice, rounds)
    # a reply is what reached the user: when the turn ended at the pause, its answer can be cut
    # before any of it played (the user went on talking; seen once on a loaded machine), and
    # that turn has no reply
    assert 1 <= voice["replies"] <= turns["user_turns"], (turns, voice, rounds)
    # a discarded round's question is asked again whole, as a first question at tier 0 (in 3
    # of 4 runs here the VAD split the question and a preemptive round was discarded; else
    # the two stretches were one, or the turn ended at the pause: the counts above still hold)
    for request_id in discarded:
        after = rounds[[r["request_id"] for r in rounds].index(request_id) + 1]
        assert (after["reason"], after["start_tier"]) == ("first_turn", 0), rounds
