"""The `local` speech pair: offline speech in and out, for development, demos and tests.

Speech in is Moonshine tiny-en (Useful Sensors, MIT; code and weights inside the
`moonshine-voice` 0.1.0 wheel, nothing downloaded). Measured on our recorded questions it
misses about one word in five (README: Voice) against pocketsphinx 5.1.1's ~72%: good enough to
exercise the voice path, not a production recogniser. Speech out is Debian's `espeak-ng` run as a
separate program (GPL-3.0 stays outside our process), streamed as it synthesises.

Both are LiveKit `stt.STT` / `tts.TTS` adapters, so the framework's metrics, interruptions and
stream adapter treat them like any provider. Recognition is CPU work: it runs on one thread per
process (the model is one native object), never on the event loop; so does the model's load,
which a session's start only sets going (livekit-agents calls `prewarm` on the session's loop).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    stt,
    tts,
    utils,
)
from livekit.agents.types import NOT_GIVEN, NotGivenOr

MOONSHINE_RATE = 16000
ESPEAK_RATE = 22050  # espeak-ng's output rate, fixed by the program
ESPEAK_WAV_HEADER = 44  # espeak-ng --stdout writes a canonical 44-byte WAV header, then PCM

_recognizer_lock = threading.Lock()
_recognizer: Any = None
# one native model per process; calls queue here (bounded by the sessions' turns in flight)
_recognize_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sightline-stt")


def _moonshine() -> Any:
    """The process's Moonshine transcriber, loaded on first use (~0.3 s, ~100 MB)."""
    global _recognizer
    with _recognizer_lock:
        if _recognizer is None:
            import moonshine_voice
            from moonshine_voice import ModelArch, Transcriber

            path = moonshine_voice.get_assets_path() / "tiny-en"
            _recognizer = Transcriber(str(path), ModelArch.TINY)
        return _recognizer


def to_moonshine_input(frame: rtc.AudioFrame) -> list[float]:
    """Mono float samples at 16 kHz in [-1, 1], what Moonshine takes (resampled by the rtc
    SDK's resampler: no further dependency in the worker)."""
    if frame.sample_rate != MOONSHINE_RATE:
        resampler = rtc.AudioResampler(frame.sample_rate, MOONSHINE_RATE,
                                       num_channels=frame.num_channels,
                                       quality=rtc.AudioResamplerQuality.HIGH)
        parts = [*resampler.push(frame), *resampler.flush()]
        if not parts:
            return []
        frame = rtc.combine_audio_frames(parts)
    samples = np.frombuffer(frame.data, dtype=np.int16).reshape(-1, frame.num_channels)
    return (samples.mean(axis=1) / 32768.0).astype(np.float32).tolist()


def transcribe(frame: rtc.AudioFrame) -> str:
    """Blocking: the words in `frame` (call it off the event loop)."""
    samples = to_moonshine_input(frame)
    if not samples:
        return ""
    transcript = _moonshine().transcribe_without_streaming(samples, MOONSHINE_RATE)
    return " ".join(line.text.strip() for line in transcript.lines if line.text.strip())


class LocalSTT(stt.STT):
    """Moonshine tiny-en as a non-streaming LiveKit STT (the session's VAD cuts the speech)."""

    def __init__(self) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))

    @property
    def model(self) -> str:
        return "moonshine-tiny-en"

    @property
    def provider(self) -> str:
        return "local"

    def prewarm(self) -> None:
        """Starts loading the model on the recognition thread and returns: livekit-agents
        calls this on the session's event loop, and the load takes ~0.3 s (sessions starting
        meanwhile would wait on its lock, each on its own loop). A recognition queues behind
        it there; once loaded, a session's prewarm costs that thread a lock's check."""
        _recognize_thread.submit(_moonshine)

    async def _recognize_impl(
        self, buffer: utils.AudioBuffer, *, language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        frame = rtc.combine_audio_frames(buffer)
        text = await asyncio.get_running_loop().run_in_executor(
            _recognize_thread, transcribe, frame)
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            alternatives=[stt.SpeechData(text=text, language="en")],  # type: ignore[arg-type]
        )


class LocalTTS(tts.TTS):
    """espeak-ng as a non-streaming LiveKit TTS; the framework splits replies into sentences."""

    def __init__(self, *, voice: str = "en-us", words_per_minute: int = 175) -> None:
        super().__init__(capabilities=tts.TTSCapabilities(streaming=False),
                         sample_rate=ESPEAK_RATE, num_channels=1)
        self._voice = voice
        self._words_per_minute = words_per_minute

    @property
    def model(self) -> str:
        return "espeak-ng"

    @property
    def provider(self) -> str:
        return "local"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return _EspeakStream(tts=self, input_text=text, conn_options=conn_options)

    def command(self) -> list[str]:
        # the text goes on stdin: never an argument espeak-ng could read as an option
        return ["espeak-ng", "-v", self._voice, "-s", str(self._words_per_minute),
                "--stdout", "--stdin"]


class _EspeakStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        assert isinstance(self._tts, LocalTTS)
        try:
            process = await asyncio.create_subprocess_exec(
                *self._tts.command(), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        except OSError as exc:
            raise APIConnectionError(f"espeak-ng could not start: {exc}") from exc
        assert process.stdin is not None and process.stdout is not None
        output_emitter.initialize(request_id=utils.shortuuid(), sample_rate=ESPEAK_RATE,
                                  num_channels=1, mime_type="audio/pcm")
        try:
            process.stdin.write(self._input_text.encode())
            process.stdin.close()
            header = await process.stdout.readexactly(ESPEAK_WAV_HEADER)
            if not header.startswith(b"RIFF"):
                raise APIConnectionError("espeak-ng did not write WAV audio")
            while chunk := await process.stdout.read(8192):
                output_emitter.push(chunk)
            if await process.wait() != 0:
                raise APIConnectionError(f"espeak-ng exited with status {process.returncode}")
        except asyncio.IncompleteReadError as exc:
            raise APIConnectionError("espeak-ng wrote no audio") from exc
        finally:
            if process.returncode is None:  # interrupted mid-sentence
                process.kill()
                await process.wait()
        output_emitter.flush()
