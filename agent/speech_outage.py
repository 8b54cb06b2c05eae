"""A voice session whose speech recognition or synthesis fails goes on in the chat.

livekit-agents ends an AgentSession after a few consecutive unrecoverable STT or TTS errors
(`SessionConnectOptions.max_unrecoverable_errors`, 3): a speech provider that went down took the
whole session with it, typed chat included, and the user was told nothing. With synthesis down,
every answer was lost as well (its text waits on audio that never comes), and the unanswered
questions looked repeated to the cascade, which escalated them. So sessions are opened with
`session_options` (no limit; SIGHTLINE_SPEECH_RETRIES retries a request), and `SpeechOutages`
handles each engine's failures:

- the first failure of an outage: one line in the log, and the user is told once what failed
  and what still works (aloud while synthesis works, always in the chat); an engine that comes
  and goes is not announced again within NOTICE_AGAIN_S;
- every failure is a `speech_failed` event (the ledger, the summary, Prometheus);
- synthesis down: the audio output is turned off, so answers go to the chat as text at once;
  the answer that failed to be spoken is sent as text (`unspoken`) once its speech has ended,
  unless it reached the chat all the same; synthesis is tried again with one short phrase every
  SIGHTLINE_SYNTHESIS_PROBE_S;
- the engine's first success again (its usage metrics): a `speech_recovered` event, and for
  synthesis the audio output is turned back on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

from livekit.agents import AgentSession, APIConnectOptions, APIError
from livekit.agents.voice.agent_session import SessionConnectOptions

from memory.db import OneLine

from .speech import Speech

log = logging.getLogger("sightline.speech")

STT, TTS = "stt", "tts"
NOTICE_AGAIN_S = 120.0  # a new outage of the same engine sooner than this is not announced
PROBE_TEXT = "OK."  # what the probe synthesises (billed as any speech; the audio is dropped)
_WHAT = {STT: "speech recognition", TTS: "speech synthesis"}
# short, since the first is spoken; which engine failed is in the log and the ledger
NOTICES = {
    STT: ("Sorry, I couldn't hear that: speech recognition isn't working right now. Please "
          "type your question in the chat."),
    TTS: "Sorry, my voice isn't working right now, so I'll answer here in the chat.",
}

RecordFn = Callable[[str, dict[str, Any]], None]  # (event kind, detail) into the ledger


class SentReplies(Protocol):
    """The session's replies as sent to the user (agent/reply_transcript.py's output)."""

    begun: int  # replies begun so far

    def said_since(self, begun: int) -> list[str]: ...


def session_options(retries: int) -> SessionConnectOptions:
    """The session survives any number of speech failures (SpeechOutages reports them); each
    speech request is retried `retries` times first."""
    speech = APIConnectOptions(max_retry=retries)
    return SessionConnectOptions(stt_conn_options=speech, tts_conn_options=speech,
                                 max_unrecoverable_errors=sys.maxsize)


@dataclass
class Outage:
    started: float  # monotonic
    failures: int = 1


def error_line(exc: BaseException) -> str:
    """An engine's error in one line: the plugins' messages can carry a response body."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


@cache
def provider_failures_in_one_line() -> None:
    """livekit-agents logs a failed speech request with its traceback (the STT stream it
    recreates, the TTS task that failed), each failure again: SpeechOutages reports them, so
    one line each is enough. Once per process."""
    logging.getLogger("livekit.agents").addFilter(OneLine((APIError,)))


class SpeechOutages:
    """Watches the session's speech engines; see the module's docstring."""

    def __init__(self, session: AgentSession, speech: Speech, record: RecordFn,
                 probe_every_s: float, retries: int = APIConnectOptions.max_retry) -> None:
        provider_failures_in_one_line()
        self._session = session
        self._retries = APIConnectOptions(max_retry=retries)
        self._record = record
        self._probe_every_s = probe_every_s
        self._engines: dict[str, tuple[Any, str]] = {}
        for name, engine, provider in ((STT, speech.stt, speech.stt_provider),
                                       (TTS, speech.tts, speech.tts_provider)):
            if engine is None:
                continue
            self._engines[name] = (engine, provider)
            # the engines themselves, not the session: livekit-agents wraps a non-streaming
            # engine in an adapter that forwards its metrics but not its errors
            engine.on("error", lambda error, name=name: self._failed(name, error))
            engine.on("metrics_collected", lambda _metrics, name=name: self._worked(name))
        self.down: dict[str, Outage] = {}
        self._told_at: dict[str, float] = {}  # monotonic, by engine
        self.replies: SentReplies | None = None  # a live session's, set by the worker
        self._audio_off_at = 0  # the replies begun when synthesis failed and audio went off
        self._probe: asyncio.Task[None] | None = None
        self._closed = False

    def _engine_name(self, name: str) -> str:
        engine, provider = self._engines[name]
        return f"{provider} {engine.model}".strip()

    def _failed(self, name: str, error: Any) -> None:
        if error.recoverable:  # the engine retries it
            return
        reason = error_line(error.error)
        self._record("speech_failed", {"engine": name, "provider": self._engines[name][1],
                                       "model": self._engines[name][0].model, "error": reason})
        outage = self.down.get(name)
        if outage is not None:
            outage.failures += 1
            return
        self.down[name] = Outage(time.monotonic())
        log.warning("%s (%s) failed: %s; the session goes on in the chat", _WHAT[name],
                    self._engine_name(name), reason)
        if name == TTS:
            if self.replies is not None:
                self._audio_off_at = self.replies.begun
            self._session.output.set_audio_enabled(False)
            self._start_probe()
        told_at = self._told_at.get(name)
        if told_at is not None and time.monotonic() - told_at < NOTICE_AGAIN_S:
            return
        self._told_at[name] = time.monotonic()
        self._tell(NOTICES[name])

    def _worked(self, name: str) -> None:
        outage = self.down.pop(name, None)
        if outage is None:
            return
        seconds = round(time.monotonic() - outage.started, 1)
        self._record("speech_recovered", {"engine": name, "failures": outage.failures,
                                          "outage_s": seconds})
        log.info("%s (%s) works again after %d failures in %.1f s", _WHAT[name],
                 self._engine_name(name), outage.failures, seconds)
        if name == TTS:
            self._session.output.set_audio_enabled(True)

    def _tell(self, text: str, add_to_chat_ctx: bool = False) -> None:
        try:
            self._session.say(text, add_to_chat_ctx=add_to_chat_ctx)
        except RuntimeError as exc:  # the session is closing: nobody is there to tell
            # its length, not the text: an answer may quote the user's screen or words
            log.info("could not tell the user (%s): %d characters unsaid", exc, len(text))

    def unspoken(self, text: str, partly_heard: bool) -> None:
        """What synthesis failed to say, sent as text once its speech has ended. An answer
        nobody heard goes into the conversation with it (livekit-agents adds none); one partly
        heard is in it already.

        Turning the audio off makes livekit-agents' transcript synchronizer pass text straight
        to the chat. The failed answer's text is mostly in the synchronizer by then, dropped
        with its segment; but when it arrives later (a busy worker, or a question typed over
        the agent's speech, whose segment cut still runs and makes the synchronizer skip the one
        that would drop it), it reaches the chat itself, before the notice. So the answer is
        sent only after its speech has ended (its text passed on, or dropped) and only if no
        reply since the audio went off carried it; else the user read it twice."""
        if not text.strip():
            return
        since = self._audio_off_at
        speech = self._session.current_speech
        if speech is None or speech.done():
            self._send_unspoken(text, partly_heard, since)
        else:
            speech.add_done_callback(
                lambda _speech: self._send_unspoken(text, partly_heard, since))

    def _send_unspoken(self, text: str, partly_heard: bool, since: int) -> None:
        if self.replies is not None and any(
                text.strip() in said for said in self.replies.said_since(since)):
            log.info("the answer synthesis failed to speak reached the chat as text already")
            return
        notice = text in NOTICES.values()
        self._tell(text, add_to_chat_ctx=not (notice or partly_heard))

    def _start_probe(self) -> None:
        """One probe at a time: a probe still running from an outage that ended and began
        again before it woke goes on probing this one (a second would double the billed
        requests and the failures recorded); none once closed."""
        if self._closed or (self._probe is not None and not self._probe.done()):
            return
        self._probe = asyncio.create_task(self._probe_synthesis(), name="speech-probe")

    async def _probe_synthesis(self) -> None:
        engine = self._engines[TTS][0]
        while TTS in self.down:
            await asyncio.sleep(self._probe_every_s)
            # a failure is reported by the engine's error event, a success by its metrics
            try:
                async with engine.synthesize(PROBE_TEXT, conn_options=self._retries) as stream:
                    async for _audio in stream:
                        pass
            except APIError:
                pass
            except Exception as exc:  # not the provider's answer: said, and tried again
                log.warning("speech synthesis probe failed: %s", error_line(exc))

    async def aclose(self) -> None:
        """Ends the probe; a failure reported after this (the session closing) starts none."""
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
