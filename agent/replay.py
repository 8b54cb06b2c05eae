"""Replay a fixture through the live pipeline, offline and deterministically.

Only the adapters change: frames come from the fixture's video (decoded in a thread, sampled by
their timestamps), turns from its timeline through `AgentSession.run()` (the same `llm_node` as a
live chat turn), and responses from a local server speaking the provider's wire format, reached
through the real SDK client. Consecutive turns of one tenant and user form one session, which
writes the same cost log as a live one. What each turn used (models, images, tools, knowledge,
memory, screen) is read from the events the session recorded while it ran.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import wave
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession, APIError

from memory.db import Database
from memory.knowledge import KnowledgeBase, SecretsSeen, stored_models
from memory.store import Store
from vision.screen import ScreenWatcher
from vision.video_file import VideoFrames, VideoReport

from .command_ledger import CommandLedger
from .components import make_embedder
from .config import Settings
from .event_log import Event
from .metering import MODEL_KINDS
from .replay_script import (
    Fixture,
    FixtureError,
    FixtureResponse,
    FixtureTurn,
    TierReply,
    has_audio,
)
from .session import CloseSteps, SessionRuntime
from .session_record import COMPLETED, describe_failure
from .tier_call import MEMORY_PURPOSE
from .wire_format_server import (
    CapturedRequest,
    ScriptedModelServer,
    ScriptedReply,
    ScriptedToolCall,
)

log = logging.getLogger("sightline.replay")


@dataclass(frozen=True)
class ReplayedTurn:
    t: float
    tenant: str
    user: str
    text: str
    reply: str
    origin: str
    model_requests: int
    images_sent: int  # images in the turn's requests, carried ones included (all billed)
    screen_t: float | None
    screenshot: str  # the question's new screenshot: sent, unchanged (not sent again), none
    models_asked: tuple[str, ...] = ()
    tools_called: tuple[str, ...] = ()
    knowledge_used: tuple[str, ...] = ()  # knowledge-base documents put in the turn's request
    memory_used: tuple[str, ...] = ()  # "summary", "fact:<key>", "earlier <date> <role>"
    screen_used: tuple[str, ...] = ()  # "t=<s>" digest, "recalled t=<s>", "earlier t=<s>"
    spoken: str | None = None  # a spoken turn: what was said (`text` is what the STT heard)
    unheard: str | None = None  # why the STT heard nothing of a spoken turn (then not asked)


@dataclass
class ReplayResult:
    fixture: str
    turns: list[ReplayedTurn] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    video: dict[str, Any] | None = None  # what decoding the recording found (VideoReport)
    # what ingesting the fixture's knowledge (for each of its tenants) found: files skipped
    # ("PATH: why"), and documents holding what looks like a secret
    knowledge_skipped: list[str] = field(default_factory=list)
    knowledge_secrets: list[SecretsSeen] = field(default_factory=list)


class _VideoFeed:
    """Hands decoded frames to a screen watcher up to a point in video time. After each kept
    frame it waits for `settle` (the screen text reader): live, the second between samples
    gives the reader that time; replay runs faster than real time and must not skip reads."""

    def __init__(self, frames: VideoFrames) -> None:
        self._frames = frames
        self._next: tuple[float, rtc.VideoFrame] | None = None
        self._done = False
        self._reported = False
        # one decode at a time, and `close` after the one in flight: a replay cancelled while
        # it awaited a frame leaves that frame's thread running
        self._decoding = threading.Lock()

    def _decode_next(self) -> tuple[float, rtc.VideoFrame] | None:
        """The next frame, or None at the end; run in a thread (decoding is CPU work)."""
        with self._decoding:
            return next(self._frames, None)

    def close(self) -> None:
        """Close the decoder (`VideoFrames.close`): left to the garbage collector, its file and
        threads stayed open after a failed session for as long as anything held the failure
        (its traceback holds the replay's frame, and so this feed). Blocks for as long as a
        decode in flight takes (one frame): a running generator cannot be closed."""
        with self._decoding:
            self._frames.close()
        self._done = True

    async def play(self, until: float | None, runtime: SessionRuntime) -> None:
        """Advance to `until` (None: the end) in `runtime`'s session, each kept frame read and
        what the reads found written to the screen timeline; the session that reaches the end
        of the frames records what decoding found (a `video` event), so a truncated or damaged
        recording is named in that session's cost log and summary."""
        await self.advance(until, runtime.screen, runtime.screen_settled)
        await runtime.screen_written()  # the next question may recall what was read
        if self._done and not self._reported:
            self._reported = True
            runtime.record.events.record("video", detail=self._frames.report.as_record())

    async def start(self) -> None:
        """Decode the first frame: a recording with none fails here, before a session opens."""
        self._next = await asyncio.to_thread(self._decode_next)
        self._done = self._next is None

    async def advance(
        self, until: float | None, screen: ScreenWatcher,
        settle: Callable[[], Awaitable[None]],
    ) -> None:
        while not self._done:
            if self._next is None:
                # decoding is CPU work: one frame per thread hop keeps the loop responsive
                self._next = await asyncio.to_thread(self._decode_next)
                if self._next is None:
                    self._done = True
                    return
            t, frame = self._next
            if until is not None and t > until:
                return
            if screen.offer(t, frame) is not None:
                await settle()
            self._next = None

    @property
    def report(self) -> VideoReport:
        return self._frames.report


def _tier_reply(tier: TierReply) -> ScriptedReply:
    if tier.error_status is not None:
        return ScriptedReply(status=tier.error_status)
    header = f"[[confidence: {tier.confidence}]] " if tier.confidence is not None else ""
    text = header + tier.text if tier.text or tier.tool_call is None else header
    calls = (ScriptedToolCall(tier.tool_call.name, tier.tool_call.args),) if tier.tool_call else ()
    return ScriptedReply(text=text, tool_calls=calls)


NO_MEMORY_CHANGE = '{"facts": [], "forget": [], "summary": null}'


@dataclass
class _TurnScript:
    """Serves one turn's scripted response to whichever tiers ask, in order per model, and its
    scripted memory update to the memory model (no change when the turn scripts none)."""

    response: FixtureResponse
    memory: str | None = None
    asked: Counter[str] = field(default_factory=Counter)

    def serve(self, request: CapturedRequest) -> ScriptedReply:
        if request.purpose == MEMORY_PURPOSE:
            return ScriptedReply(text=self.memory or NO_MEMORY_CHANGE)
        return self.reply(request.model)

    def reply(self, model: str) -> ScriptedReply:
        if not self.response.tiers:
            # one reply for the turn, whoever asks: every tier says it, sure of it, so the
            # first tier asked answers (an error fails every tier)
            if self.response.error_status is not None:
                return ScriptedReply(status=self.response.error_status)
            return ScriptedReply(text=f"[[confidence: 1]] {self.response.text}")
        entries = [t for t in self.response.tiers if t.model == model]
        if not entries:
            return ScriptedReply(status=503, text=f"the fixture scripts no reply from {model}")
        index = min(self.asked[model], len(entries) - 1)
        self.asked[model] += 1
        return _tier_reply(entries[index])


def isolated_settings(settings: Settings, db: Database) -> Settings:
    """`settings` for a replay on `db`: on a scratch schema (`--fresh`), cost logs and spill
    files of its own too, so nothing of other sessions is imported into it."""
    if db.scratch_schema is None:
        return settings
    return settings.with_overrides(cost_log_dir=settings.data_dir / "replays" / db.scratch_schema)


async def replay(
    fixture: Fixture, settings: Settings, db: Database | None,
    result: ReplayResult | None = None,
) -> ReplayResult:
    """Replay `fixture`; each session's summary goes into `result` as it closes, so a caller
    whose replay failed or was interrupted still knows which sessions it closed."""
    result = result or ReplayResult(fixture=fixture.name)
    feed = _VideoFeed(VideoFrames(fixture.video))
    try:
        await _replay_sessions(fixture, settings, db, result, feed)
    finally:  # its file and decoding threads, whatever stopped the replay
        feed.close()
        result.video = feed.report.as_record()  # as far as it was decoded
    return result


async def _replay_sessions(
    fixture: Fixture, settings: Settings, db: Database | None, result: ReplayResult,
    feed: _VideoFeed,
) -> None:
    """The fixture's sessions in turn, each on the model server and the frames of `feed`."""
    current = [_TurnScript(FixtureResponse("scripted"))]

    def serve(request: CapturedRequest) -> ScriptedReply:
        return current[0].serve(request)

    await feed.start()
    async with ScriptedModelServer(replies=serve) as server:
        if has_audio(fixture) and settings.stt is None:
            raise FixtureError(f"{fixture.path}: its turns carry audio: set SIGHTLINE_STT to "
                               "hear them (local needs no key; README: Voice)")
        settings = settings.with_overrides(
            # spoken turns go through the configured STT; nothing is said aloud, and a
            # fixture without audio loads no speech engine at all
            stt=settings.stt if has_audio(fixture) else None, tts=None,
            gemini_api_key="replay-needs-no-key",
            anthropic_api_key="replay-needs-no-key",
            gemini_base_url=server.base_url,
            anthropic_base_url=server.base_url,
            # the replay's keys are fake: embed offline unless Gemini was asked for by name
            embeddings="gemini" if settings.embeddings == "gemini" else "offline",
            **({"tiers": fixture.tiers} if fixture.tiers else {}),
            **({"history_messages": fixture.history_messages}
               if fixture.history_messages is not None else {}),
        )
        if fixture.knowledge is not None and db is not None:
            await _ingest_knowledge(fixture, settings, db, result)
        group_list = [
            (key, list(turns))
            for key, turns in itertools.groupby(
                fixture.turns, key=lambda t: (t.tenant, t.user, t.session))
        ]
        for index, ((tenant, user, _), turns) in enumerate(group_list):
            runtime = await SessionRuntime.open(
                settings, db, tenant=tenant, user_id=user,
                source="replay", room=f"replay:{fixture.name}",
            )
            session = runtime.agent_session()
            try:
                events: list[Event] = []
                runtime.record.events.subscribe(events.append)
                await session.start(runtime.agent, record=False)
                for turn in turns:
                    await feed.play(turn.t, runtime)
                    current[0] = _TurnScript(turn.response, turn.memory)
                    events.clear()
                    result.turns.append(await _run_turn(session, runtime, turn, events))
                if index == len(group_list) - 1:
                    await feed.play(None, runtime)
            except BaseException as exc:
                result.sessions.append(await _closed(session, runtime, *describe_failure(exc)))
                raise
            result.sessions.append(await _closed(session, runtime))


async def _closed(session: AgentSession, runtime: SessionRuntime, outcome: str = COMPLETED,
                  error: str | None = None) -> dict[str, Any]:
    """The agent session closed, then the runtime whatever that did (`CloseSteps`: a failure
    is one line and the outcome): the summary is the replay's record of the session."""
    steps = CloseSteps(runtime.session_id, outcome, error)
    try:
        await steps.run("agent session", session.aclose, None)
    finally:
        summary = await runtime.close(steps.outcome, steps.error)
    return summary


def _screen_used(context: dict[str, Any], session_id: str) -> tuple[str, ...]:
    """The screen text a turn's request carried, as the report names it: the session's digest
    (`t=25s`), and recalled events of this session (`recalled t=29s`) or an earlier one
    (`earlier t=25s`)."""
    return (*(f"t={event['t']:.0f}s" for event in context.get("screen_events", [])),
            *(f"{'recalled' if event['session_id'] == session_id else 'earlier'} "
              f"t={event['t']:.0f}s" for event in context.get("screen_recalled", [])))


def _memory_used(context: dict[str, Any]) -> tuple[str, ...]:
    """The memory a turn's request carried, as the report names it."""
    memory = context.get("memory", {})
    used = ["summary"] if memory.get("summary") else []
    used += [f"fact:{key}" for key in memory.get("facts", [])]
    used += [f"earlier {(m['at'] or 'earlier')[:10]} {m['role']}"
             for m in memory.get("messages", [])]
    return tuple(used)


async def _ingest_knowledge(fixture: Fixture, settings: Settings, db: Database,
                            result: ReplayResult) -> None:
    """Each tenant's copy with the embedder its knowledge is stored with (as its sessions
    will search it), so `auto` never re-embeds a tenant's documents with another model. What
    Gemini embeddings cost goes to the tenant's ledger, outside the sessions. What the
    ingests found (a file skipped, a secret seen) goes into `result` once: each tenant's is
    the same folder."""
    assert fixture.knowledge is not None
    skipped: dict[str, None] = {}
    secrets: dict[str, SecretsSeen] = {}
    for tenant in fixture.tenants:
        ledger, meter = CommandLedger.metered(settings, tenant, "replay knowledge ingest")
        embedder = make_embedder(settings, await stored_models(db.pool, tenant),
                                 record=meter.embedding_call)
        async with ledger.saving(Store(db.pool)):
            try:
                report = await KnowledgeBase(db.pool, embedder).ingest([fixture.knowledge],
                                                                       tenant)
            finally:
                await embedder.aclose()
        skipped.update(dict.fromkeys(report.skipped))
        secrets.update({seen.source: seen for seen in report.secrets})
    result.knowledge_skipped, result.knowledge_secrets = list(skipped), list(secrets.values())


async def _run_turn(
    session: Any, runtime: SessionRuntime, turn: FixtureTurn, events: list[Event],
) -> ReplayedTurn:
    """Run one scripted turn; `events` collects what the session records meanwhile. A
    spoken turn the STT fails on (after its retries) is said in one line and not asked: the
    replay goes on with the next."""
    text = turn.text
    if turn.audio is not None:
        try:
            text = await _hear(session, turn.audio)
        except APIError as exc:
            why = " ".join(str(exc).split())
            log.error("the spoken turn at t=%.1fs was not heard: %s", turn.t, why)
            return ReplayedTurn(t=turn.t, tenant=turn.tenant, user=turn.user, text="",
                                reply="", origin=turn.response.origin, model_requests=0,
                                images_sent=0, screen_t=None, screenshot="none",
                                spoken=turn.text, unheard=why)
    run = await session.run(user_input=text)
    reply = " ".join(
        ev.item.text_content or ""
        for ev in run.events
        if ev.type == "message" and ev.item.role == "assistant"
    )
    await runtime.memory_settled()  # the next turn's script must not answer this memory call
    calls = [e for e in events if e["kind"] in MODEL_KINDS
             and e["detail"].get("purpose") not in (MEMORY_PURPOSE, "rerank", "embedding")]
    context = next((e["detail"] for e in events if e["kind"] == "context"), {})
    return ReplayedTurn(
        t=turn.t, tenant=turn.tenant, user=turn.user, text=text, reply=reply,
        origin=turn.response.origin, model_requests=len(calls),
        images_sent=sum(e["images"] for e in calls),
        screen_t=context.get("screen_t"),
        screenshot=context.get("image", context.get("screen", "none")),
        models_asked=tuple(e["model"] for e in calls),
        tools_called=tuple(ev.item.name for ev in run.events if ev.type == "function_call"),
        knowledge_used=tuple(dict.fromkeys(
            k["source"] for k in context.get("knowledge", []))),
        memory_used=_memory_used(context),
        screen_used=_screen_used(context, runtime.session_id),
        spoken=turn.text if turn.audio is not None else None,
    )


async def _hear(session: Any, audio: Path) -> str:
    """A spoken turn's words, by the session's STT (recorded as a `speech` event like a live
    one's; the live path's voice activity and end-of-turn detection do not run here: the
    recording is one whole turn)."""
    with wave.open(str(audio)) as wav:
        frame = rtc.AudioFrame(wav.readframes(wav.getnframes()), wav.getframerate(),
                               wav.getnchannels(), wav.getnframes())
    event = await session.stt.recognize([frame])
    return event.alternatives[0].text if event.alternatives else ""
