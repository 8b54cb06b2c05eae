"""Speech backends: the settings, the `local` pair (Moonshine in, espeak-ng out) and metering."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import wave
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jiwer
import numpy as np
import pytest
from livekit import rtc

import agent.local_speech as local_speech
from agent.config import ConfigError, Settings, SpeechBackend
from agent.event_log import EventLog
from agent.local_speech import LocalSTT, LocalTTS
from agent.metering import CostMeter
from agent.pricing import PriceTable
from agent.speech import build_speech

VOICE = Path(__file__).parent.parent / "fixtures" / "voice"
QUESTIONS = (VOICE / "questions.txt").read_text().splitlines()


def read_wav(path: Path) -> rtc.AudioFrame:
    with wave.open(str(path)) as wav:
        pcm = wav.readframes(wav.getnframes())
        return rtc.AudioFrame(pcm, wav.getframerate(), wav.getnchannels(),
                              wav.getnframes())


def wer(reference: str, hypothesis: str) -> float:
    clean = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(),
                           jiwer.RemoveMultipleSpaces(), jiwer.Strip(),
                           jiwer.ReduceToListOfListOfWords()])
    return jiwer.wer(reference, hypothesis, reference_transform=clean,
                     hypothesis_transform=clean)


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"SIGHTLINE_DATA_DIR": str(tmp_path), **env})


@pytest.mark.parametrize(("env", "raw", "expected"), [
    ("SIGHTLINE_STT", "local", SpeechBackend("local")),
    ("SIGHTLINE_STT", "deepgram/nova-3", SpeechBackend("inference", "deepgram/nova-3")),
    ("SIGHTLINE_STT", "openai:whisper-1", SpeechBackend("openai", "whisper-1")),
    ("SIGHTLINE_STT", "Deepgram:nova-3", SpeechBackend("deepgram", "nova-3")),
    ("SIGHTLINE_TTS", "cartesia/sonic-3:a167e0f3", SpeechBackend("inference",
                                                                 "cartesia/sonic-3:a167e0f3")),
    ("SIGHTLINE_TTS", "openai:kokoro:af_sky", SpeechBackend("openai", "kokoro", "af_sky")),
    ("SIGHTLINE_TTS", "cartesia:sonic-3", SpeechBackend("cartesia", "sonic-3")),
])
def test_speech_settings_parse(tmp_path: Path, env: str, raw: str,
                               expected: SpeechBackend) -> None:
    parsed = settings(tmp_path, **{env: raw})
    assert getattr(parsed, env.removeprefix("SIGHTLINE_").lower()) == expected
    assert str(expected) in {raw, raw.lower()}


@pytest.mark.parametrize(("env", "raw", "says"), [
    ("SIGHTLINE_STT", "whisper", "must be local | openai:MODEL"),
    ("SIGHTLINE_STT", "cartesia:sonic-3", "must be local | openai:MODEL | deepgram:MODEL"),
    ("SIGHTLINE_TTS", "deepgram:aura", "must be local | openai:MODEL[:VOICE]"),
    ("SIGHTLINE_TTS", "openai:", "names no model"),
    ("SIGHTLINE_STT", "openai:whisper-1:alloy", "has no voice"),
])
def test_bad_speech_setting_is_one_line(tmp_path: Path, env: str, raw: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(tmp_path, **{env: raw})
    assert str(caught.value).startswith(f"{env}={raw!r} is invalid") and says in str(caught.value)
    assert "\n" not in str(caught.value)


def test_speech_backend_needs_its_key_unless_self_hosted(tmp_path: Path) -> None:
    base = {"LIVEKIT_URL": "ws://127.0.0.1:7880", "LIVEKIT_API_KEY": "k",
            "LIVEKIT_API_SECRET": "s", "GOOGLE_API_KEY": "g", "ANTHROPIC_API_KEY": "a"}
    with pytest.raises(ConfigError, match="DEEPGRAM_API_KEY is required by SIGHTLINE_STT"):
        settings(tmp_path, **base, SIGHTLINE_STT="deepgram:nova-3").require_worker()
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is required by SIGHTLINE_TTS"):
        settings(tmp_path, **base, SIGHTLINE_TTS="openai:tts-1").require_worker()
    settings(tmp_path, **base, SIGHTLINE_TTS="openai:kokoro",
             SIGHTLINE_TTS_BASE_URL="http://127.0.0.1:8880/v1").require_worker()
    settings(tmp_path, **base, SIGHTLINE_STT="local", SIGHTLINE_TTS="local").require_worker()


def test_text_only_session_loads_no_speech_code(tmp_path: Path) -> None:
    """No speech setting: nothing is built, and no plugin or local model is even imported."""
    code = (
        "import sys; from agent.config import Settings; from agent.speech import build_speech;"
        f"s = build_speech(Settings.from_env({{'SIGHTLINE_DATA_DIR': {str(tmp_path)!r}}}));"
        "assert s.session_options() == {}, s;"
        "loaded = [m for m in sys.modules if m.startswith(('moonshine_voice', 'livekit.plugins',"
        " 'agent.local_speech'))]; assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_voice_session_gets_local_vad_and_turn_detector(tmp_path: Path) -> None:
    speech = build_speech(settings(tmp_path, SIGHTLINE_STT="local", SIGHTLINE_TTS="local"))
    options = speech.session_options()
    assert isinstance(options["stt"], LocalSTT) and isinstance(options["tts"], LocalTTS)
    assert type(options["vad"]).__module__ == "livekit.agents.inference.vad"
    assert options["turn_handling"]["turn_detection"]._model == "turn-detector-v1-mini"
    silence_only = build_speech(settings(tmp_path, SIGHTLINE_STT="local",
                                         SIGHTLINE_TURN_DETECTION="vad"))
    assert silence_only.session_options()["turn_handling"] == {"turn_detection": "vad"}


async def test_local_stt_transcribes_the_recorded_questions() -> None:
    """Moonshine tiny-en on four of the recorded questions: close to the words spoken."""
    stt = LocalSTT()
    errors = []
    for index in (0, 2, 6, 9):
        event = await stt.recognize([read_wav(VOICE / f"q{index + 1:02d}.wav")])
        errors.append(wer(QUESTIONS[index], event.alternatives[0].text))
    assert sum(errors) / len(errors) < 0.3, errors


async def test_local_stt_prewarm_leaves_the_model_load_to_the_recognition_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """livekit-agents calls `prewarm` on the session's event loop: it returns with the load
    still going, on another thread, and the first recognition waits for it there."""
    loaded = threading.Event()
    loaded_on: list[threading.Thread] = []
    model = SimpleNamespace(transcribe_without_streaming=lambda _samples, _rate: SimpleNamespace(
        lines=[SimpleNamespace(text=" heard ")]))

    def slow_load() -> Any:
        loaded_on.append(threading.current_thread())
        loaded.wait(timeout=5)  # only a prewarm that loads on its caller waits this out
        return model

    monkeypatch.setattr(local_speech, "_moonshine", slow_load)
    stt = LocalSTT()
    try:
        stt.prewarm()
        recognizing = asyncio.create_task(stt.recognize([rtc.AudioFrame.create(16000, 1, 160)]))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not recognizing.done()  # behind the load, and the loop runs meanwhile
    finally:
        loaded.set()
    assert (await recognizing).alternatives[0].text == "heard"
    assert loaded_on and threading.current_thread() not in loaded_on


async def test_local_tts_speaks_what_local_stt_hears_back() -> None:
    """espeak-ng's audio of a reply, transcribed back by Moonshine: the same words."""
    text = "The build failed because the test file is missing."
    frames = [event.frame async for event in LocalTTS().synthesize(text)]
    audio = rtc.combine_audio_frames(frames)
    assert audio.sample_rate == 22050 and 1.5 < audio.duration < 6
    assert np.abs(np.frombuffer(audio.data, np.int16)).mean() > 300  # speech, not silence
    heard = await LocalSTT().recognize([audio])
    assert wer(text, heard.alternatives[0].text) < 0.35, heard.alternatives[0].text


async def test_speech_usage_is_priced_in_the_event_log(tmp_path: Path) -> None:
    events = EventLog(session_id="s1", tenant="t", costs_dir=tmp_path, store=None)
    recorded: list[dict] = []
    events.subscribe(recorded.append)
    meter = CostMeter(events, PriceTable.load())
    tts = LocalTTS()
    tts.on("metrics_collected", meter.speech)
    [_ async for _ in tts.synthesize("Hello there.")]
    stt = LocalSTT()
    stt.on("metrics_collected", meter.speech)
    await stt.recognize([read_wav(VOICE / "q01.wav")])
    speech = [e for e in recorded if e["kind"] == "speech"]
    assert [e["detail"]["direction"] for e in speech] == ["tts", "stt"]
    assert speech[0]["model"] == "espeak-ng" and speech[0]["detail"]["characters"] == 12
    assert speech[1]["model"] == "moonshine-tiny-en"
    assert speech[1]["detail"]["audio_s"] == pytest.approx(1.77, abs=0.05)
    assert all(e["cost_usd"] == 0.0 for e in speech)  # local engines are priced at zero


def test_plugin_and_inference_backends_are_built_with_their_settings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deepgram, Cartesia and LiveKit Inference (no wire-format fake for their websockets):
    each is the provider's own LiveKit object, with the configured model and key."""
    from livekit.agents import inference
    from livekit.plugins import cartesia, deepgram

    speech = build_speech(settings(
        tmp_path, SIGHTLINE_STT="deepgram:nova-3", SIGHTLINE_TTS="cartesia:sonic-3:voice-1",
        DEEPGRAM_API_KEY="dg-key-123456", CARTESIA_API_KEY="ca-key-123456"))
    assert isinstance(speech.stt, deepgram.STT) and speech.stt.model == "nova-3"
    assert isinstance(speech.tts, cartesia.TTS) and speech.tts.model == "sonic-3"
    assert speech.tts._opts.voice == "voice-1"
    monkeypatch.setenv("LIVEKIT_API_KEY", "k")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "s")
    cloud = build_speech(settings(tmp_path, SIGHTLINE_STT="deepgram/nova-3",
                                  SIGHTLINE_TTS="cartesia/sonic-3"))
    assert isinstance(cloud.stt, inference.STT) and isinstance(cloud.tts, inference.TTS)
    assert cloud.stt.model == "deepgram/nova-3" and cloud.tts.model == "cartesia/sonic-3"
