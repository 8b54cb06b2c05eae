"""The session's speech engines, built from SIGHTLINE_STT / SIGHTLINE_TTS (README: Voice).

Each backend is imported only when it is configured, so a text-only session loads no speech
code and no model: the provider plugins are the optional `voice` extra, and LiveKit Inference
is built into livekit-agents. Voice activity detection (Silero) and end-of-turn detection
(LiveKit's turn-detector v1-mini) run locally through `livekit-local-inference`, whose wheel
carries their weights; both are created only when speech comes in.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from livekit.agents import stt, tts, vad

from .config import Settings, SpeechBackend

# self-hosted OpenAI-compatible servers often check no key, but the openai client needs one
_NO_KEY = "none"


@dataclass
class Speech:
    """What a voice session hears and speaks with; absent parts mean typed chat only."""

    stt: stt.STT | None = None
    tts: tts.TTS | None = None
    vad: vad.VAD | None = None
    turn_detection: Any = None
    # the configured backends' providers (SIGHTLINE_STT / SIGHTLINE_TTS), which the ledger
    # names: an OpenAI-compatible plugin reports only its endpoint's host
    stt_provider: str = ""
    tts_provider: str = ""

    def session_options(self) -> dict[str, Any]:
        """AgentSession keyword arguments: only the parts that are set."""
        options: dict[str, Any] = {}
        if self.stt is not None:
            options.update(stt=self.stt, vad=self.vad,
                           turn_handling={"turn_detection": self.turn_detection})
        if self.tts is not None:
            options["tts"] = self.tts
        return options

    def on_metrics(self, listener: Callable[[Any, str], None]) -> None:
        """`listener` gets each STTMetrics / TTSMetrics the engines report (their usage), with
        the engine's configured provider."""
        for engine, provider in ((self.stt, self.stt_provider), (self.tts, self.tts_provider)):
            if engine is not None:
                engine.on("metrics_collected",
                          lambda metrics, provider=provider: listener(metrics, provider))


# the provider plugins, by the SpeechBackend provider that uses them
_PLUGINS = {"openai": "livekit.plugins.openai", "deepgram": "livekit.plugins.deepgram",
            "cartesia": "livekit.plugins.cartesia"}


def import_plugins(settings: Settings) -> None:
    """Import the configured provider plugins, on the worker's main thread: a plugin registers
    itself with livekit-agents when imported, which refuses it on any other thread, and sessions
    run as threads (agent/worker.py). A text-only worker imports none."""
    for backend in (settings.stt, settings.tts):
        if backend is not None and backend.provider in _PLUGINS:
            importlib.import_module(_PLUGINS[backend.provider])


def build_speech(settings: Settings) -> Speech:
    """The configured engines; nothing is imported or loaded when neither is set."""
    speech = Speech()
    if settings.stt is not None:
        from livekit.agents import inference

        speech.stt = build_stt(settings.stt, settings)
        speech.stt_provider = settings.stt.provider
        speech.vad = inference.VAD()
        # the local end-of-turn model ("auto" would pick LiveKit Cloud's in dev mode), or the
        # VAD's silence alone
        speech.turn_detection = (inference.TurnDetector(version="v1-mini")
                                 if settings.turn_detection == "model" else "vad")
    if settings.tts is not None:
        speech.tts = build_tts(settings.tts, settings)
        speech.tts_provider = settings.tts.provider
    return speech


def build_stt(backend: SpeechBackend, settings: Settings) -> stt.STT:
    if backend.provider == "local":
        from .local_speech import LocalSTT

        return LocalSTT()
    if backend.provider == "openai":
        from livekit.plugins import openai

        return openai.STT(model=backend.model, api_key=settings.openai_api_key or _NO_KEY,
                          use_realtime=False, **_base_url(settings.stt_base_url))
    if backend.provider == "deepgram":
        from livekit.plugins import deepgram

        return deepgram.STT(model=backend.model, api_key=settings.deepgram_api_key)
    from livekit.agents import inference

    return inference.STT.from_model_string(backend.model)


def build_tts(backend: SpeechBackend, settings: Settings) -> tts.TTS:
    if backend.provider == "local":
        from .local_speech import LocalTTS

        return LocalTTS()
    voice = {"voice": backend.voice} if backend.voice else {}
    if backend.provider == "openai":
        from livekit.plugins import openai

        # raw 24 kHz PCM: nothing to decode, and self-hosted servers (Kokoro, Speaches) serve it
        return openai.TTS(model=backend.model, api_key=settings.openai_api_key or _NO_KEY,
                          response_format="pcm", **voice, **_base_url(settings.tts_base_url))
    if backend.provider == "cartesia":
        from livekit.plugins import cartesia

        return cartesia.TTS(model=backend.model, api_key=settings.cartesia_api_key, **voice)
    from livekit.agents import inference

    return inference.TTS.from_model_string(backend.model)


def _base_url(url: str | None) -> dict[str, str]:
    return {"base_url": url} if url else {}
