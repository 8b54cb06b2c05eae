"""The OpenAI-compatible speech backends through the real livekit-plugins-openai clients,
against the local server speaking OpenAI's speech wire format (transcripts and audio SCRIPTED)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from livekit import rtc

from agent.config import Settings
from agent.event_log import EventLog
from agent.metering import CostMeter
from agent.pricing import PriceTable
from agent.speech import build_speech
from agent.wire_format_server import SPEECH_SECONDS_PER_CHAR, ScriptedModelServer
from tests.test_speech import VOICE, read_wav


def speech_settings(tmp_path: Path, server: ScriptedModelServer, stt: str, tts: str) -> Settings:
    return Settings.from_env({
        "SIGHTLINE_DATA_DIR": str(tmp_path), "SIGHTLINE_STT": stt, "SIGHTLINE_TTS": tts,
        "SIGHTLINE_STT_BASE_URL": f"{server.base_url}/v1",
        "SIGHTLINE_TTS_BASE_URL": f"{server.base_url}/v1", "OPENAI_API_KEY": "sk-test-123456",
    })


async def test_openai_stt_and_tts_through_the_plugin(tmp_path: Path) -> None:
    async with ScriptedModelServer(transcripts=["Why does this error show up?"]) as server:
        speech = build_speech(speech_settings(tmp_path, server, "openai:whisper-1",
                                              "openai:tts-1:alloy"))
        events = EventLog(session_id="s1", tenant="t", costs_dir=tmp_path, store=None)
        recorded: list[dict] = []
        events.subscribe(recorded.append)
        speech.on_metrics(CostMeter(events, PriceTable.load()).speech)
        assert speech.stt is not None and speech.tts is not None

        question = read_wav(VOICE / "q01.wav")
        heard = await speech.stt.recognize([question])
        assert heard.alternatives[0].text == "Why does this error show up?"
        upload = server.requests[0]
        assert upload.model == "whisper-1" and upload.headers["authorization"] == "***"
        assert upload.body["audio_seconds"] == pytest.approx(question.duration, abs=0.01)

        reply = "It is a missing comma in config.json."
        frames = [e.frame async for e in speech.tts.synthesize(reply)]
        audio = rtc.combine_audio_frames(frames)
        assert server.requests[1].body["response_format"] == "pcm"
        assert server.requests[1].body["voice"] == "alloy"
        assert audio.duration == pytest.approx(len(reply) * SPEECH_SECONDS_PER_CHAR, abs=0.05)
        assert np.abs(np.frombuffer(audio.data, np.int16)).max() > 4000

    speech_events = [e for e in recorded if e["kind"] == "speech"]
    assert [(e["provider"], e["model"], e["detail"]["direction"]) for e in speech_events] == [
        ("openai", "whisper-1", "stt"), ("openai", "tts-1", "tts")]
    # priced: whisper-1 per audio minute, tts-1 per character (agent/prices.json)
    assert speech_events[0]["cost_usd"] == pytest.approx(question.duration / 60 * 0.006, rel=0.02)
    assert speech_events[1]["cost_usd"] == pytest.approx(len(reply) * 15.0 / 1e6)


async def test_openai_tts_streams_sse_for_newer_models(tmp_path: Path) -> None:
    """gpt-4o-mini-tts streams SSE `speech.audio.delta` events; the plugin decodes them."""
    async with ScriptedModelServer() as server:
        speech = build_speech(speech_settings(tmp_path, server, "local", "openai:gpt-4o-mini-tts"))
        assert speech.tts is not None
        frames = [e.frame async for e in speech.tts.synthesize("Hello from Sightline.")]
        assert server.requests[0].stream and server.requests[0].body["stream_format"] == "sse"
        assert rtc.combine_audio_frames(frames).duration == pytest.approx(
            len("Hello from Sightline.") * SPEECH_SECONDS_PER_CHAR, abs=0.05)


async def test_speech_server_refuses_what_it_cannot_serve() -> None:
    """A format the server has no encoder for, or an upload that is not WAV: a 400 the plugin
    reports as an API error, as a real server would."""
    from livekit.agents import APIStatusError
    from livekit.plugins import openai

    async with ScriptedModelServer() as server:
        tts = openai.TTS(model="tts-1", base_url=f"{server.base_url}/v1", api_key="k",
                         response_format="mp3")
        with pytest.raises(APIStatusError, match="not served here"):
            [_ async for _ in tts.synthesize("hi")]
        stt = openai.STT(model="whisper-1", base_url=f"{server.base_url}/v1", api_key="k",
                         use_realtime=False)
        event = await stt.recognize([read_wav(VOICE / "q02.wav")])
        assert event.alternatives[0].text == "(scripted) 2.1 seconds of speech"
