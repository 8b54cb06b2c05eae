"""Spoken turns on a real LiveKit server: from the end of the user's speech to the agent's first
audio, with the `local` speech pair and models that answer at once; and the local recogniser's
word error rate on the recorded questions.

    .venv/bin/python -m bench.voice                # 20 spoken questions
    .venv/bin/python -m bench.voice --questions 40 # the 20 recordings, twice

Real `livekit-server` on loopback, a real `sightline start` worker (SIGHTLINE_STT=local,
SIGHTLINE_TTS=local), an embedded Postgres, the models as the wire-format server answering at
once (SCRIPTED, one short sentence), and one user who shares the demo screen and asks the
recorded questions (fixtures/voice) one after the other on a microphone track, each once the
previous answer has been spoken.

Per question, measured by the user: end of the question's speech (the file's last sample sent,
less its trailing silence) → first loud 10 ms frame of the agent's audio (`e2e`). From the
session's event log (livekit-agents' own timings): the end-of-turn
decision after the speech ended (silence detection, the end-of-turn model and the endpointing
wait, which includes the transcript), the transcript's delay, the recall, the model's first
token, the first TTS audio, and the worker's own end of speech → first audio frame out.
`sightline` = that − end of turn − first token − first TTS audio: what is neither a speech
engine, the endpointing wait nor the model (recall, the turn context, the framework);
`webrtc_both_ways` = e2e − the worker's figure (the question to the worker and the answer back
through the SFU, the user's jitter buffer). Word error rate: the local recogniser on the
recordings directly, and on what the agent heard through the room. Last line: JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
from livekit import rtc

from agent.local_speech import transcribe
from agent.wire_format_server import ScriptedModelServer, ScriptedReply
from memory.db import start_embedded

from .livekit_harness import (
    API_KEY,
    API_SECRET,
    MIC_RATE,
    VoiceUser,
    free_port,
    read_wav_mono,
    run_livekit_server,
    start_worker,
)

REPO = Path(__file__).resolve().parent.parent
VOICE = REPO / "fixtures" / "voice"
AGENT_NAME = "sightline-bench-voice"
ANSWER = "[[confidence: 0.95]] The test failed because the expected value changed."
LOUD = 300.0  # mean absolute sample of a 10 ms frame that is speech, not silence


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    clean = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(),
                           jiwer.RemoveMultipleSpaces(), jiwer.Strip(),
                           jiwer.ReduceToListOfListOfWords()])
    return jiwer.wer(references, hypotheses, reference_transform=clean,
                     hypothesis_transform=clean)


def offline_wer(questions: list[str]) -> tuple[float, float]:
    """The local recogniser on the recordings themselves (no room): WER and seconds per
    second of audio."""
    heard, audio_s, started = [], 0.0, time.perf_counter()
    for index in range(len(questions)):
        samples = read_wav_mono(VOICE / f"q{index + 1:02d}.wav", 16000)
        audio_s += len(samples) / 16000
        heard.append(transcribe(rtc.AudioFrame(samples.tobytes(), 16000, 1, len(samples))))
    return word_error_rate(questions, heard), (time.perf_counter() - started) / audio_s


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def spread(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 1), "p95": round(percentile(values, 0.95), 1)}


def trailing_silence_s(wav: Path) -> float:
    """How long a recording is quiet at its end (espeak-ng pads ~0.1-0.2 s): the speech
    ended that much before the file did."""
    samples = np.abs(read_wav_mono(wav, MIC_RATE).astype(np.int32))
    loud = np.flatnonzero(samples > 500)
    return (len(samples) - (loud[-1] + 1 if len(loud) else 0)) / MIC_RATE


async def ask(user: VoiceUser, wav: Path, timeout_s: float = 60) -> tuple[str, float]:
    """Play one question; its transcript and end of speech → first agent audio (ms)."""
    user.speak(wav)
    heard = await asyncio.wait_for(user.user_transcripts.get(), timeout_s)
    # the transcript comes after the speech ended: when the file's last sample was sent, less
    # its trailing silence
    ended = user.spoke_until - trailing_silence_s(wav)
    assert time.monotonic() > ended, "a transcript before the question was played"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        spans = user.heard.speech_spans(threshold=LOUD, since=ended)
        if spans and time.monotonic() - spans[0][1] > 1.5:  # the answer was said
            return heard, 1000 * (spans[0][0] - ended)
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no spoken answer to {wav.name}")


def session_timings(costs: Path) -> list[dict[str, float]]:
    """Per answered question, from the finished session's event log (milliseconds)."""
    log = max(costs.glob("live_*.jsonl"), key=lambda p: p.stat().st_mtime)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    heard = [e["detail"] for e in events if e["kind"] == "heard"]
    replies = [e["detail"] for e in events if e["kind"] == "reply"]
    recalls = [e["detail"].get("recall_ms", 0.0) for e in events if e["kind"] == "context"]
    calls = [e["detail"]["first_token_ms"] for e in events if e["kind"] == "model_call"
             and e["detail"].get("purpose") != "memory"]
    return [
        {"end_of_turn": 1000 * h.get("end_of_turn_delay", 0.0),
         "transcript": 1000 * h.get("transcription_delay", 0.0),
         "recall": recall, "first_token": token,
         "first_tts_audio": 1000 * r.get("tts_node_ttfb", 0.0),
         "agent_e2e": 1000 * r.get("e2e_latency", 0.0)}
        for h, r, recall, token in zip(heard, replies, recalls, calls, strict=False)
    ]


async def run(count: int, workdir: Path, turn_detection: str) -> dict[str, Any]:
    questions = (VOICE / "questions.txt").read_text().splitlines()
    wer_direct, realtime_factor = offline_wer(questions)
    print(f"local STT on the recordings: WER {wer_direct:.3f}, "
          f"{realtime_factor:.3f} s of CPU per s of audio", file=sys.stderr)
    postgres = start_embedded(workdir / "pgdata")
    try:
        async with ScriptedModelServer([ScriptedReply(text=ANSWER)]) as models:
            with run_livekit_server(workdir) as livekit:
                env = {
                    "LIVEKIT_URL": livekit.ws_url, "LIVEKIT_API_KEY": API_KEY,
                    "LIVEKIT_API_SECRET": API_SECRET, "SIGHTLINE_AGENT_NAME": AGENT_NAME,
                    "GOOGLE_API_KEY": "bench-fake-key", "ANTHROPIC_API_KEY": "bench-fake-key",
                    "SIGHTLINE_GEMINI_BASE_URL": models.base_url,
                    "SIGHTLINE_ANTHROPIC_BASE_URL": models.base_url,
                    "DATABASE_URL": postgres.get_uri(), "SIGHTLINE_MEMORY_UPDATES": "off",
                    "SIGHTLINE_DATA_DIR": str(workdir / "data"),
                    "SIGHTLINE_HEALTH_PORT": str(free_port()), "SIGHTLINE_WEBHOOK_PORT": "0",
                    "SIGHTLINE_STT": "local", "SIGHTLINE_TTS": "local",
                    "SIGHTLINE_TURN_DETECTION": turn_detection,
                }
                worker = start_worker(workdir, env)
                try:
                    user = VoiceUser(livekit, "bench-voice", agent_name=AGENT_NAME,
                                     metadata={"tenant": "bench"},
                                     video=REPO / "fixtures" / "demo" / "screen.webm")
                    await user.join("bench-speaker")
                    await user.wait_for_agent()
                    await user.publish_video(rtc.TrackSource.SOURCE_SCREENSHARE, fps=5)
                    await user.publish_microphone()
                    await asyncio.sleep(2)
                    heard, e2e = [], []
                    for n in range(count):
                        index = n % len(questions)
                        text, ms = await ask(user, VOICE / f"q{index + 1:02d}.wav")
                        heard.append(text)
                        e2e.append(ms)
                        print(f"  q{index + 1:02d}: {ms:6.0f} ms  heard {text!r}",
                              file=sys.stderr)
                    await user.leave()
                    await asyncio.sleep(3)  # the session closes and writes its summary
                finally:
                    worker.stop()
                timings = session_timings(workdir / "data" / "costs")
    finally:
        postgres.cleanup()
    references = [questions[n % len(questions)] for n in range(count)]
    parts = {key: [t[key] for t in timings] for key in timings[0]} if timings else {}
    # on the worker: its end of the user's speech → its first audio frame out, less the
    # engines and the model; the rest of what the user waits is WebRTC both ways
    sightline = [t["agent_e2e"] - t["end_of_turn"] - t["first_token"] - t["first_tts_audio"]
                 for t in timings]
    transport = [total - t["agent_e2e"] for total, t in zip(e2e, timings, strict=False)]
    return {
        "bench": "voice", "turn_detection": turn_detection, "questions": count,
        "answered_in_log": len(timings),
        "e2e_ms": spread(e2e),
        "breakdown_ms": {key: spread(values) for key, values in parts.items()},
        "sightline_ms": spread(sightline) if sightline else None,
        "webrtc_both_ways_ms": spread(transport) if transport else None,
        "wer_local_stt": round(wer_direct, 3),
        "wer_through_room": round(word_error_rate(references, heard), 3),
        "local_stt_cpu_per_audio_s": round(realtime_factor, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=20,
                        help="spoken questions to ask (the 20 recordings, cycled)")
    parser.add_argument("--turn-detection", choices=("model", "vad"), default="model",
                        help="SIGHTLINE_TURN_DETECTION of the worker (default: model)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(args.questions, Path(tmp), args.turn_detection))
    for key in ("e2e_ms", "sightline_ms", "webrtc_both_ways_ms"):
        print(f"{key}: {result[key]}", file=sys.stderr)
    for key, value in result["breakdown_ms"].items():
        print(f"  {key}: {value}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
