"""Live assist in a real session: real Postgres, the offline embedder, the real google-genai
client against the wire-format server (scripted replies).

Protects: a typed question produces one assist message — recorded in the event log before the
turn's first model call, handed to the room's publisher identically, valid against the
committed JSON Schema (docs/assist.schema.json, which must match the code) — with the detected
intent and up to three suggestions, one per document, from the session's tenant only; small talk
gets no intent and no suggestions; an early reply's (preemptive generation) goes out only once
the reply is used, never for words the user went on from; interim transcripts and typed drafts
are looked up one at a time (the rest counted as skipped) and a final one marks the question as
voice; the question is embedded once for the turn's recall and live assist together
(`SharedQueries`), and a failed embedding is not kept; the tenant's knowledge is probed until it
has some, then never again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CountingEmbedder
from livekit.agents import ConversationItemAddedEvent, ModelSettings, llm
from livekit.agents.voice.audio_recognition import (
    _EndOfTurnInfo,
    _EndOfTurnMetrics,
    _PreemptiveGenerationInfo,
    _PreflightStaleInfo,
)
from test_user_tools import NO_MEMORY_UPDATE, tool_settings

from agent.assist import INTENTS, AssistMessage, IntentIndex, LiveAssist, intent_floor
from agent.config import Settings
from agent.screen_context import ScreenContext
from agent.session import SessionRuntime
from agent.sightline_agent import SightlineAgent
from agent.turn_context import TurnContext
from agent.wire_format_server import CapturedRequest, ScriptedModelServer, ScriptedReply
from memory.db import Database
from memory.embeddings import (
    BgeSmallEmbedder,
    EmbeddingError,
    MiniLMEmbedder,
    SharedQueries,
    offline_embedder,
)
from memory.knowledge import KnowledgeBase
from memory.recall import Recalled
from memory.spill_files import read_event_log
from vision.sampler import FrameSampler
from vision.screen import ScreenWatcher

REPO = Path(__file__).resolve().parent.parent
ARTICLES = {
    "help/vpn-reset.md": "VPN client error 809: reset the VPN client from Settings, Network.",
    "help/vpn-install.md": "Install the VPN client: download it, run the installer, sign in.",
    "help/vpn-reset-old.md": "Older VPN client error codes and how to reset the client.",
    "help/printer.md": "Printer jams: open the tray and remove the paper.",
    "help/billing.pdf": "Invoices are sent monthly; a double charge is refunded in 5 days.",
}


def answers(event: dict[str, Any]) -> bool:
    """A cascade round's model call (the answer), not a billed embedding's or memory's."""
    return event["kind"] == "model_call" and "request_id" in (event.get("detail") or {})


def answer(request: CapturedRequest) -> ScriptedReply:
    if request.purpose == "memory":
        return ScriptedReply(text=NO_MEMORY_UPDATE)
    return ScriptedReply(text="[[confidence: 0.95]] (scripted) Reset the VPN client.")


async def test_a_question_is_assisted_before_the_answer(
    settings: Settings, db: Database,
) -> None:
    async with ScriptedModelServer(replies=answer) as models:
        runtime = await SessionRuntime.open(tool_settings(settings, models), db, tenant="acme",
                                            user_id="ana", source="replay")
        assert runtime.memory is not None
        knowledge = KnowledgeBase(db.pool, runtime.memory.embedder)
        for source, text in ARTICLES.items():
            await knowledge.ingest_chunks("acme", source, [(f"{source}#1", text),
                                                           (f"{source}#2", text + " More.")])
        await knowledge.ingest_chunks("globex", "globex/vpn-error.md", [(
            "g#1", "Globex VPN client error reset codes.")])
        published: list[dict[str, Any]] = []
        runtime.assist.listeners.append(published.append)
        session = runtime.agent_session()
        await session.start(runtime.agent, record=False)
        try:
            await session.run(user_input="Why does the VPN client show error 809?")
            await session.run(user_input="Lovely weather today")
        finally:
            await session.aclose()
            await runtime.close()
    events = read_event_log(runtime.record.events.path)
    assists = [e for e in events if e["kind"] == "assist"]
    assert [a["detail"] for a in assists] == published
    first, second = (AssistMessage.model_validate(m) for m in published)
    assert first.input == "typed" and first.final and first.session_id == runtime.session_id
    assert first.text == "Why does the VPN client show error 809?"
    assert first.intent is not None and first.intent.name == "troubleshoot_error"
    sources = [s.source for s in first.suggestions]
    assert len(sources) == 3 == len(set(sources)) and sources[0] == "help/vpn-reset.md"
    assert all(s.startswith("help/vpn") for s in sources)
    assert first.suggestions[0].title == "Vpn reset"
    assert second.suggestions == [] and second.intent is None, "small talk: nothing to suggest"
    first_call = next(e for e in events if answers(e))
    assert assists[0]["seq"] < first_call["seq"], "published before the answer starts"
    assert events[-1]["detail"]["assist_messages"] == 2


@pytest.mark.parametrize("source", ["replay", "live"])
async def test_a_slow_assist_goes_first_in_a_replay_only(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch, source: str,
) -> None:
    """An assist slower than a live turn's ASSIST_WAIT_S (1 s): a live answer goes first, a
    replay's waits for it, so a replay's order does not depend on how busy the machine is."""
    looked_up = LiveAssist.look_up

    async def slowly(self: LiveAssist, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        await asyncio.sleep(1.5)
        return await looked_up(self, *args, **kwargs)
    monkeypatch.setattr(LiveAssist, "look_up", slowly)
    async with ScriptedModelServer(replies=answer) as models:
        runtime = await SessionRuntime.open(tool_settings(settings, models), db, tenant="acme",
                                            user_id="ana", source=source)
        published = asyncio.Event()
        runtime.assist.listeners.append(lambda _message: published.set())
        session = runtime.agent_session()
        await session.start(runtime.agent, record=False)
        try:
            await session.run(user_input="Why does the VPN client show error 809?")
            await asyncio.wait_for(published.wait(), 10)  # a live answer did not wait for it
        finally:
            await session.aclose()
            await runtime.close()
    kinds = [e["kind"] for e in read_event_log(runtime.record.events.path)
             if e["kind"] == "assist" or answers(e)]
    assert "assist" in kinds
    assert (kinds.index("assist") < kinds.index("model_call")) == (source == "replay")


class StandIn:
    """What a turn asks of `LiveAssist`: `look_up` the words, `publish` what was looked up."""

    def __init__(self, look_up: Callable[[str], Awaitable[dict[str, Any] | None]]) -> None:
        self.look_up = look_up
        self.published: list[dict[str, Any]] = []

    def publish(self, message: dict[str, Any]) -> None:
        self.published.append(message)


async def dropped_reply(assist: StandIn, started: asyncio.Event) -> None:
    """Start a reply on a user's words and cancel it once `started` is set, while the turn's
    lookup still runs: what livekit-agents does to an early reply the user went on from."""
    async def recall(question: str) -> Recalled:
        await asyncio.Event().wait()
        raise AssertionError("never answered")

    screen = ScreenContext(ScreenWatcher(FrameSampler(1.0), lambda _d: None))
    agent = SightlineAgent(TurnContext(screen, recall, recall_timeout_s=60),
                           llm.ChatContext.empty(), [], assist)  # type: ignore[arg-type]
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="Why does the build")
    reply = asyncio.ensure_future(anext(aiter(agent.llm_node(ctx, [], ModelSettings()))))
    await started.wait()
    reply.cancel()
    await asyncio.gather(reply, return_exceptions=True)


async def test_a_reply_that_ends_early_publishes_no_assist(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An early reply on words the user then went on from (livekit-agents' preemptive
    generation) is cancelled: its assist is cancelled with it and publishes nothing; what an
    assist raised is logged, not left unretrieved."""
    started, release, cancelled = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def look_up(text: str) -> dict[str, Any]:
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {"text": text}

    assist = StandIn(look_up)
    await dropped_reply(assist, started)
    release.set()
    await asyncio.wait_for(cancelled.wait(), 10)
    assert assist.published == []

    failed = asyncio.Event()

    async def failing(text: str) -> dict[str, Any]:
        failed.set()
        raise RuntimeError("a lookup failed")

    with caplog.at_level(logging.WARNING, logger="sightline.assist"):
        await dropped_reply(StandIn(failing), failed)
        await asyncio.sleep(0)
    assert any("a lookup failed" in r.getMessage() for r in caplog.records)


async def test_an_early_reply_s_assist_goes_out_only_once_the_reply_is_used(
    settings: Settings, db: Database,
) -> None:
    """livekit-agents starts a reply on a transcript before the user's turn ends (preemptive
    generation) and reads it to its end before it knows whether it will be used. When the user
    goes on, that reply is dropped unplayed: the assist it looked up long before never goes out
    (it did, recorded `final`, for words that answered no question). The early reply to the
    words the turn ends on is used, not generated again: its assist goes out then, once, before
    the answer (before even the question joins the conversation)."""
    first_half = "Why does the VPN client"
    question = "Why does the VPN client show error 809?"
    async with ScriptedModelServer(replies=answer) as models:
        runtime = await SessionRuntime.open(tool_settings(settings, models), db, tenant="acme",
                                            user_id="ana", source="replay")
        assert runtime.memory is not None
        knowledge = KnowledgeBase(db.pool, runtime.memory.embedder)
        await knowledge.ingest_chunks("acme", "help/vpn-reset.md",
                                      [("v#1", ARTICLES["help/vpn-reset.md"])])
        published: list[dict[str, Any]] = []
        runtime.assist.listeners.append(published.append)
        rounds: list[asyncio.Event] = [asyncio.Event(), asyncio.Event()]

        def on_event(event: dict[str, Any]) -> None:
            if event["kind"] == "turn":  # a model round read to its end
                for read in rounds:
                    if not read.is_set():
                        read.set()
                        break
        runtime.record.events.subscribe(on_event)
        published_when_heard: list[int] = []
        answered = asyncio.Event()

        def on_item(ev: ConversationItemAddedEvent) -> None:
            if ev.item.type == "message" and ev.item.role == "user":
                published_when_heard.append(len(published))
            elif ev.item.type == "message" and ev.item.role == "assistant":
                answered.set()
        session = runtime.agent_session()
        session.on("conversation_item_added", on_item)
        await session.start(runtime.agent, record=False)
        activity = session._activity  # what livekit-agents' speech recognition drives
        assert activity is not None
        try:
            activity.on_preemptive_generation(_PreemptiveGenerationInfo(
                new_transcript=first_half, transcript_confidence=1.0, started_speaking_at=None))
            assert activity._preemptive_generation is not None
            early = activity._preemptive_generation.speech_handle
            await asyncio.wait_for(rounds[0].wait(), 30)
            await asyncio.sleep(0.2)  # the reply's last steps, after its model round
            assert [m["text"] for m in published] == [], "an unused early reply: nothing out"
            activity.on_preflight_stale(_PreflightStaleInfo(new_transcript=question))
            await asyncio.wait_for(early.wait_for_playout(), 10)  # dropped unplayed
            assert not early.scheduled

            activity.on_preemptive_generation(_PreemptiveGenerationInfo(
                new_transcript=question, transcript_confidence=1.0, started_speaking_at=None))
            await asyncio.wait_for(rounds[1].wait(), 30)
            await asyncio.sleep(0.2)
            assert [m["text"] for m in published] == [], "an unused early reply: nothing out"
            activity.on_end_of_turn(_EndOfTurnInfo(
                skip_reply=False, new_transcript=question, transcript_confidence=1.0,
                metrics=_EndOfTurnMetrics(None, None, None, None)))
            await asyncio.wait_for(answered.wait(), 30)
        finally:
            await session.aclose()
            await runtime.close()
    events = read_event_log(runtime.record.events.path)
    assert [e["detail"] for e in events if e["kind"] == "assist"] == published
    assert [(m["text"], m["final"]) for m in published] == [(question, True)]
    assert [s["source"] for s in published[0]["suggestions"]] == ["help/vpn-reset.md"]
    assert published_when_heard == [1], "out as the reply is used, before the answer"
    assert len([e for e in events if e["kind"] == "turn"]) == 2, "the early reply was used"


def test_the_committed_schema_is_the_code_s() -> None:
    committed = json.loads((REPO / "docs" / "assist.schema.json").read_text())
    assert committed == AssistMessage.model_json_schema(), (
        "regenerate docs/assist.schema.json from agent.assist.AssistMessage")


async def test_interim_transcripts_one_at_a_time_and_voice_is_told_apart() -> None:
    recorded: list[dict[str, Any]] = []
    assist = LiveAssist(offline_embedder(), None, tenant="acme", session_id="s1",
                        record=recorded.append)
    assist.transcribed("how do I", final=False)
    assist.transcribed("how do I export", final=False)  # the first is still being looked up
    assert assist.interim_skipped == 1
    await assist.aclose()  # lets nothing half-done linger
    assist.transcribed("how do I export a report", final=True)
    message = await assist("how do I export a report")
    assert message is not None and message["input"] == "voice" and message["final"]
    assert message["intent"]["name"] == "how_to" and message["suggestions"] == []
    typed = await assist("how do I export a report as PDF")
    assert typed is not None and typed["input"] == "typed"
    assert await assist("   ") is None
    assist.drafted("how do I export")  # typing, not sent yet
    assert assist._interim is not None
    await assist._interim
    draft = recorded[-1]
    assert (draft["input"], draft["final"], draft["text"]) == ("typed", False, "how do I export")


async def test_a_secret_said_is_hidden_in_what_is_recorded_and_published() -> None:
    """The event log is kept: the words go there (and to the room) with the secret's value
    hidden, the rest as said; they are looked up as said."""
    counting = CountingEmbedder()
    recorded: list[dict[str, Any]] = []
    assist = LiveAssist(counting, None, tenant="acme", session_id="s1",
                        record=recorded.append)
    said = "my wifi password is hunter2, why does the router page not load"
    message = await assist(said)
    assert message is not None and recorded == [message]
    assert message["text"] == (
        "my wifi password is [secret hidden], why does the router page not load")
    assert said in counting.queries
    await assist.aclose()


class Failing(CountingEmbedder):
    async def embed_query(self, text: str) -> np.ndarray:
        await super().embed_query(text)
        raise EmbeddingError("down")


async def test_the_question_is_embedded_once_for_recall_and_assist() -> None:
    counting = CountingEmbedder()
    shared = SharedQueries(counting)
    first, second = await asyncio.gather(shared.embed_query("why error 809"),
                                         shared.embed_query("why error 809"))
    assert (first == second).all() and counting.queries == ["why error 809"]
    await shared.embed_query("another question")
    assert counting.queries == ["why error 809", "another question"]
    failing = SharedQueries(Failing())
    for _ in range(2):  # a failed call is not kept: the next ask tries again
        with pytest.raises(EmbeddingError):
            await failing.embed_query("q")
    assert failing.inner.queries == ["q", "q"]  # type: ignore[attr-defined]


def test_each_embedder_gets_its_own_intent_floor() -> None:
    """The floor is the 10th percentile of the examples' cosines to their nearest same-intent
    sibling: computed from the intent list, so an embedder whose similarities run high (bge)
    gets a higher floor than MiniLM, and small talk stays without an intent with either."""
    vectors = np.eye(4, dtype=np.float32)
    vectors[1] = vectors[0] * 0.8 + vectors[1] * 0.6  # a's two examples, cosine 0.8
    vectors[3] = vectors[2] * 0.6 + vectors[3] * 0.8  # b's two examples, cosine 0.6
    assert intent_floor(["a", "a", "b", "b"], vectors) == pytest.approx(0.6)
    floors = {}
    for embedder in (MiniLMEmbedder(), BgeSmallEmbedder()):
        labels = [name for name, phrases in INTENTS.items() for _ in phrases]
        examples = embedder.embed_sync([embedder.query_text(p)
                                        for phrases in INTENTS.values() for p in phrases])
        floors[embedder.name] = floor = intent_floor(labels, examples)
        chat = embedder.embed_sync([embedder.query_text("I had pasta for dinner yesterday")])[0]
        assert float((examples @ chat).max()) < floor
    assert floors["bge-small-en-v1.5-int8-384"] > floors["minilm-l6-v2-384-windows"] + 0.2


async def test_an_utterance_meets_its_examples_embedded_the_same_way() -> None:
    """bge embeds an utterance behind its retrieval instruction: the intent examples carry it
    too, so an example said word for word is its own intent at cosine 1 (without it on the
    examples, bge's held-apart intent accuracy fell from 0.962 to 0.846: README)."""
    embedder = BgeSmallEmbedder()
    index = IntentIndex(embedder)
    for name, phrases in INTENTS.items():
        intent = await index.classify(await embedder.embed_query(phrases[0]))
        assert intent is not None and intent.name == name and intent.score > 0.999


class DownForDocuments(CountingEmbedder):
    async def embed_documents(self, texts: list[str]) -> np.ndarray:
        raise EmbeddingError("down")


async def test_the_intent_examples_are_embedded_as_the_session_starts(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """The first utterance of a process waits for no example: they are embedded when the
    assist gets its embedder; an embedder down then costs one line, and the utterance asks
    again."""
    monkeypatch.setattr(IntentIndex, "_cache", {})  # as in a fresh process
    counting = CountingEmbedder()
    assist = LiveAssist(counting, None, tenant="acme", session_id="s1",
                        record=lambda _message: None)
    assert assist._preparing is not None
    await assist._preparing
    examples = sum(len(phrases) for phrases in INTENTS.values())
    assert len(counting.embedded) == examples and counting.queries == []
    message = await assist("why does this error show up")
    assert message is not None and message["intent"]["name"] == "troubleshoot_error"
    assert len(counting.embedded) == examples  # the utterance embedded only itself
    await assist.aclose()

    monkeypatch.setattr(IntentIndex, "_cache", {})  # the same model's name: kept otherwise
    with caplog.at_level("WARNING", logger="sightline.assist"):
        down = LiveAssist(DownForDocuments(), None, tenant="acme", session_id="s2",
                          record=lambda _message: None)
        assert down._preparing is not None
        await down._preparing  # logged, not raised
    assert [r.getMessage() for r in caplog.records if "intent examples" in r.getMessage()] == [
        "live assist: the intent examples could not be embedded yet (EmbeddingError('down')); "
        "the first utterance tries again"]
    assert await down("why does this error show up") is None  # one more line, no traceback
    await down.aclose()


class ProbeCounting(KnowledgeBase):
    """The real knowledge base, counting its `has_any` probes."""

    probes = 0

    async def has_any(self, tenant: str) -> bool:
        self.probes += 1
        return await super().has_any(tenant)


async def test_the_knowledge_probe_stops_once_the_tenant_has_some(db: Database) -> None:
    embedder = offline_embedder()
    knowledge = ProbeCounting(db.pool, embedder)
    assist = LiveAssist(embedder, knowledge, tenant="acme", session_id="s1",
                        record=lambda _message: None)
    before = await assist("Why does the VPN client show error 809?")
    assert before is not None and before["suggestions"] == []
    assert knowledge.probes == 1
    await knowledge.ingest_chunks("acme", "help/vpn-reset.md",
                                  [("v#1", ARTICLES["help/vpn-reset.md"])])
    for _ in range(3):  # found on the next question; not asked again after that
        message = await assist("Why does the VPN client show error 809?")
        assert message is not None
        assert [s["source"] for s in message["suggestions"]] == ["help/vpn-reset.md"]
    assert knowledge.probes == 2
