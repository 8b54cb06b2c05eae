"""SpeechOutages' bookkeeping, on engines that only emit events and a session that records what
it was asked to say (the real thing, end to end: tests/test_e2e_voice.py::
test_a_speech_outage_goes_on_in_the_chat)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from livekit.agents import APIConnectionError
from livekit.agents.stt import STTError
from livekit.agents.tts import TTSError
from livekit.rtc import EventEmitter

import agent.speech_outage as speech_outage
from agent.cli_costs import format_summary
from agent.session_summary import SessionTotals
from agent.speech import Speech
from agent.speech_outage import NOTICES, STT, TTS, SpeechOutages


class Engine(EventEmitter[str]):
    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model

    def fail(self, recoverable: bool = False) -> None:
        kind = STTError if self.model == "whisper-1" else TTSError
        self.emit("error", kind(timestamp=time.time(), label=self.model, recoverable=recoverable,
                                error=RuntimeError("503 from the provider\nbody: {...}")))

    def work(self) -> None:
        self.emit("metrics_collected", object())


class Output:
    def __init__(self) -> None:
        self.audio_enabled = True

    def set_audio_enabled(self, enabled: bool) -> None:
        self.audio_enabled = enabled


class Session:
    """What SpeechOutages uses of an AgentSession: `say` and the audio output switch."""

    def __init__(self) -> None:
        self.output = Output()
        self.said: list[tuple[str, bool]] = []
        self.current_speech: SpeechInProgress | None = None

    def say(self, text: str, *, add_to_chat_ctx: bool) -> None:
        self.said.append((text, add_to_chat_ctx))


class SpeechInProgress:
    """What SpeechOutages uses of a SpeechHandle: whether it is done, and a call when it is."""

    def __init__(self) -> None:
        self._done = False
        self._callbacks: list[Any] = []

    def done(self) -> bool:
        return self._done

    def add_done_callback(self, callback: Any) -> None:
        self._callbacks.append(callback)

    def end(self) -> None:
        self._done = True
        for callback in self._callbacks:
            callback(self)


class SentTexts:
    """The replies' output as SpeechOutages reads it: the text of each reply sent."""

    def __init__(self, *texts: str) -> None:
        self.sent = list(texts)

    @property
    def begun(self) -> int:
        return len(self.sent)

    def said_since(self, begun: int) -> list[str]:
        return self.sent[begun:]


@pytest.fixture
def parts() -> tuple[SpeechOutages, Session, Engine, Engine, list[tuple[str, dict[str, Any]]]]:
    stt, tts = Engine("whisper-1"), Engine("tts-1")
    session = Session()
    events: list[tuple[str, dict[str, Any]]] = []
    outages = SpeechOutages(
        session, Speech(stt=stt, tts=tts, stt_provider="openai", tts_provider="openai"),  # type: ignore[arg-type]
        lambda kind, detail: events.append((kind, detail)), probe_every_s=3600)
    return outages, session, stt, tts, events


async def test_one_notice_per_outage_and_every_failure_recorded(parts: Any) -> None:
    outages, session, stt, _tts, events = parts
    stt.fail(recoverable=True)  # a retry in progress: not a failure yet
    assert events == [] and session.said == []
    for _ in range(3):
        stt.fail()
    assert session.said == [(NOTICES[STT], False)]
    assert [kind for kind, _ in events] == ["speech_failed"] * 3
    assert events[0][1] == {"engine": "stt", "provider": "openai", "model": "whisper-1",
                            "error": "RuntimeError: 503 from the provider body: {...}"}
    stt.work()
    assert events[-1] == ("speech_recovered", {"engine": "stt", "failures": 3,
                                               "outage_s": events[-1][1]["outage_s"]})
    assert STT not in outages.down
    stt.work()  # working while nothing is down records nothing
    assert len(events) == 4


async def test_an_engine_that_comes_and_goes_is_announced_once_in_a_while(
    parts: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _outages, session, stt, _tts, events = parts
    stt.fail()
    stt.work()
    stt.fail()  # a second outage at once: recorded, not announced again
    assert len(session.said) == 1 and [k for k, _ in events].count("speech_failed") == 2
    stt.work()
    monkeypatch.setattr(speech_outage, "NOTICE_AGAIN_S", 0.0)
    stt.fail()
    assert len(session.said) == 2


async def test_synthesis_down_sends_answers_as_text_and_keeps_the_unheard_one(
    parts: Any,
) -> None:
    outages, session, _stt, tts, _events = parts
    tts.fail()
    notice = NOTICES[TTS]
    assert session.output.audio_enabled is False and session.said == [(notice, False)]
    outages.unspoken("The answer nobody heard.", False)  # into the conversation
    outages.unspoken("An answer half heard.", True)  # livekit-agents keeps what played
    outages.unspoken(notice, False)  # a notice stays out of the conversation
    outages.unspoken("  ", False)
    assert session.said[1:] == [("The answer nobody heard.", True),
                                ("An answer half heard.", False), (notice, False)]
    tts.work()
    assert session.output.audio_enabled is True
    await outages.aclose()


async def test_an_unspoken_answer_goes_out_once_its_speech_ended_unless_it_reached_the_chat(
    parts: Any,
) -> None:
    """The answer synthesis failed to speak is sent after its speech has ended (so after the
    notice asked for at the failure), and not at all when its own text reached the chat once
    the audio went off: livekit-agents passes it straight on when the synchronizer was still
    cutting the segment of a reply the user had typed over."""
    outages, session, _stt, tts, _events = parts
    outages.replies = SentTexts("The answer.")  # the same text earlier counts for nothing
    session.current_speech = speech = SpeechInProgress()
    tts.fail()
    outages.unspoken("The answer.", False)
    assert session.said == [(NOTICES[TTS], False)]
    speech.end()
    assert session.said == [(NOTICES[TTS], False), ("The answer.", True)]

    tts.work()  # back; then down again, while another answer is spoken
    session.current_speech = speech = SpeechInProgress()
    tts.fail()
    outages.replies.sent.append("Another answer.")  # its text went straight to the chat
    outages.unspoken("Another answer.", False)
    speech.end()
    assert session.said[2:] == []
    await outages.aclose()


class DownSynthesis(Engine):
    """A synthesis engine down for good whose requests hang until the test ends: each probe
    in flight is one request counted and one task left to see."""

    def __init__(self) -> None:
        super().__init__("tts-1")
        self.requests = 0

    def synthesize(self, _text: str, conn_options: Any) -> DownSynthesis:
        return self

    async def __aenter__(self) -> None:
        self.requests += 1
        await asyncio.Event().wait()
        raise APIConnectionError("down")

    async def __aexit__(self, *_exc: object) -> None:
        return None


def probes() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks()
            if task.get_name() == "speech-probe" and not task.done()]


async def test_synthesis_failing_again_before_the_probe_woke_keeps_one_probe() -> None:
    tts = DownSynthesis()
    outages = SpeechOutages(
        Session(), Speech(stt=None, tts=tts, tts_provider="openai"),  # type: ignore[arg-type]
        lambda _kind, _detail: None, probe_every_s=0)
    tts.fail()
    tts.work()  # back (a reply spoken) before the probe woke
    tts.fail()  # and down again
    for _ in range(5):  # the probes wake and ask
        await asyncio.sleep(0)
    assert tts.requests == 1 and len(probes()) == 1
    await outages.aclose()
    assert probes() == []
    tts.work()
    tts.fail()  # reported while the session closes: nothing left probing
    assert probes() == []


def test_the_summary_and_costs_count_failures_by_direction(tmp_path: Any) -> None:
    totals = SessionTotals(session_id="s", tenant="t", source="live",
                           prices=tmp_path / "p.json", cost_log=tmp_path / "c.jsonl")
    for engine in (STT, STT, TTS):
        totals.add({"kind": "speech_failed", "cost_usd": 0.0,
                    "detail": {"engine": engine, "provider": "openai", "model": "m",
                               "error": "x"}})
    summary = totals.summary()
    assert summary["voice"]["failed"] == {"stt": 2, "tts": 1}
    assert "  speech failures: 2 stt, 1 tts (the session went on in the chat)" in (
        format_summary({**summary, "outcome": "completed"}))
