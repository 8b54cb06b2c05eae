"""Replaying fixtures through the live pipeline: real AgentSession, real SDKs, real Postgres.

Protects: the demo replays turn by turn with its scripted answers, one screenshot per turn taken
at the right moment, frames counted and costs logged; the conversation is stored and recalled in
the user's next session (and only in that tenant's); a provider error or timeout is answered
with one plain sentence, recorded as a model_error, and the session keeps going.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import pytest
from conftest import DEMO_FIXTURE
from livekit.agents import AgentSession

from agent import tenant_spend
from agent.cascade import failure_sentence
from agent.config import Settings
from agent.providers import ProviderError
from agent.replay import replay
from agent.replay_script import load_fixture
from agent.session import REPLAY_WAIT_S, RecallBudget, SessionRuntime
from agent.wire_format_server import ScriptedModelServer, ScriptedReply
from memory.conversation import ConversationLog
from memory.db import Database
from memory.recall import VECTOR_WAIT_S
from memory.screen_timeline import ScreenTimeline
from memory.store import Store

DEMO_SESSION: dict[str, Any] = json.loads((DEMO_FIXTURE / "session.json").read_text())
JSON_ERROR = ("json.decoder.JSONDecodeError: Expecting property name enclosed in double quotes: "
              "line 1 column 13 (char 12)")  # shown on the demo's screen, read back by OCR


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def write_fixture(root: Path, turns: list[dict[str, Any]], *, seconds: float | None = None,
                  **extra: Any) -> Path:
    """A fixture of `turns` on the demo's video, or on its first `seconds`: a replay decodes,
    samples and reads all of its video (~5 s of the run for the demo's 40 s), and most tests
    look at nothing after their last turn."""
    root.mkdir(parents=True, exist_ok=True)
    if seconds is None:
        shutil.copy(DEMO_FIXTURE / "screen.webm", root / "screen.webm")
    else:
        demo_clip(root / "screen.webm", seconds)
    session = {"name": root.name, "video": "screen.webm", "turns": turns, **extra}
    (root / "session.json").write_text(json.dumps(session))
    return root


def demo_clip(path: Path, seconds: float) -> None:
    """The demo video's first `seconds`, its packets copied as they are (no re-encoding)."""
    with av.open(str(DEMO_FIXTURE / "screen.webm")) as source, \
            av.open(str(path), "w", format="webm") as clip:
        video = source.streams.video[0]
        into = clip.add_stream_from_template(video)
        for packet in source.demux(video):
            if packet.dts is None:  # the demuxer's empty packet at the end
                continue
            if packet.pts * video.time_base >= seconds:
                break
            packet.stream = into
            clip.mux(packet)


def answer(raw_turn: dict[str, Any]) -> str:
    """The text a fixture turn ends with: its answering tier's, or its one reply."""
    response = raw_turn["response"]
    return response["tiers"][-1]["text"] if "tiers" in response else response["text"]


def sure(text: str, **kw: float) -> ScriptedReply:
    """A reply every tier is sure of: the first tier answers alone."""
    return ScriptedReply(text=f"[[confidence: 0.95]] {text}", **kw)  # type: ignore[arg-type]


def one_tier(provider: str, model: str) -> str:
    return f"{provider}:{model}:0:512"


async def drive(
    settings: Settings, db: Database, server: ScriptedModelServer, inputs: list[str], *,
    tenant: str = "demo", user: str = "dev-1", memory_updates: bool = False,
) -> tuple[list[str], dict[str, Any]]:
    """Run a session the way the worker does, on `server`, and return its replies and summary.
    Memory updates are off unless asked for: `server` answers every request from one script."""
    settings = settings.with_overrides(
        gemini_api_key="test-key", anthropic_api_key="test-key",
        gemini_base_url=server.base_url, anthropic_base_url=server.base_url,
        embeddings="offline", memory_updates=memory_updates,
    )
    runtime = await SessionRuntime.open(
        settings, db, tenant=tenant, user_id=user, source="replay",
    )
    session = runtime.agent_session()
    await session.start(runtime.agent, record=False)
    replies = []
    try:
        for text in inputs:
            run = await session.run(user_input=text)
            replies.append(" ".join(
                ev.item.text_content or "" for ev in run.events
                if ev.type == "message" and ev.item.role == "assistant"
            ))
    finally:
        await session.aclose()
        summary = await runtime.close()
    return replies, summary


async def test_demo_replay(settings: Settings, db: Database) -> None:
    result = await replay(load_fixture(DEMO_FIXTURE), settings, db)

    assert result.fixture == "demo"
    assert len(result.turns) == 5
    for turn, raw in zip(result.turns, DEMO_SESSION["turns"], strict=True):
        assert turn.text == raw["text"]
        assert turn.reply == answer(raw)
        assert turn.origin == "scripted"
        # the screen the model saw was sampled at or before the moment the user spoke
        assert turn.screen_t is not None and turn.t - 1.0 <= turn.screen_t <= turn.t
    assert 24.0 <= result.turns[1].screen_t <= 26.0  # type: ignore[operator]
    lite, flash, sonnet = "gemini-2.5-flash-lite", "gemini-2.5-flash", "claude-sonnet-4-6"
    assert [t.models_asked for t in result.turns] == [
        (lite,), (lite, flash), (lite, flash, sonnet), (lite,), (lite,)]
    assert [t.tools_called for t in result.turns] == [(), (), (), (), ()]
    # the fixture's knowledge folder was ingested for the tenant and consulted on every turn;
    # its documents are named from the folder down, as `kb list` shows them
    assert "knowledge/python-setup.md" in result.turns[0].knowledge_used
    assert result.turns[1].knowledge_used == ("knowledge/config-files.md",)
    # one screenshot per model call; the fourth question's screen had not changed since the
    # third's screenshot, which its request still carries (image policy `changed`)
    assert [t.images_sent for t in result.turns] == [1, 2, 3, 1, 1]
    assert [t.screenshot for t in result.turns] == ["sent", "sent", "sent", "unchanged", "sent"]
    # screen memory: "it's gone now" is answered from the timeline: the error's read is in the
    # fourth request's digest, and the later session recalls it from the earlier one
    timeline = {r["t"]: r for r in await db.pool.fetch(
        "SELECT session_id, t, text, is_error FROM screen_events ORDER BY id")}
    [error_t] = [t for t, r in timeline.items() if JSON_ERROR in r["text"]]
    assert timeline[error_t]["is_error"] and 24.0 <= error_t <= 26.0
    assert f"t={error_t:.0f}s" in result.turns[3].screen_used
    assert f"earlier t={error_t:.0f}s" in result.turns[4].screen_used
    assert all("[[" not in t.reply for t in result.turns)
    # memory: the first turn has nothing to recall; facts and the summary that tier 0 wrote
    # after each exchange (scripted) go into the next requests; in the later session the first
    # exchanges are outside its 4-message window and come back by recall
    assert result.turns[0].memory_used == ()
    assert set(result.turns[2].memory_used) == {"summary", "fact:python_setup",
                                                "fact:config_format"}
    later = result.turns[4].memory_used
    assert {"summary", "fact:python_setup", "fact:config_format"} <= set(later)
    assert any(m.startswith("earlier ") and m.endswith(" user") for m in later)
    assert not any(m.startswith("earlier ") for m in result.turns[3].memory_used), (
        "within a session, the conversation itself is in the request: nothing to recall")
    facts = await db.pool.fetch("SELECT key, text FROM memory_facts WHERE tenant = 'demo' AND"
                                " user_id = 'dev-1' ORDER BY key")
    assert [f["key"] for f in facts] == ["config_format", "python_setup"]
    remembered = await db.pool.fetchval("SELECT text FROM memory_summaries WHERE tenant ="
                                        " 'demo' AND user_id = 'dev-1'")
    assert remembered == DEMO_SESSION["turns"][2]["memory"]["summary"]

    assert len(result.sessions) == 2
    assert result.sessions[1]["memory"]["recalled"] >= 4
    summary = result.sessions[0]
    assert summary["tenant"] == "demo" and summary["source"] == "replay"
    later_frames = result.sessions[1]["frames"]["received"]
    assert summary["frames"]["received"] + later_frames == 400 and later_frames > 0
    assert abs(summary["frames"]["sampled"] - 40) <= 1
    frames = summary["frames"]
    assert 0 < frames["kept"] < frames["sampled"]
    assert frames["kept"] + sum(frames["dropped"].values()) == frames["sampled"]
    assert sum(c["sampled"] for c in frames["by_content_type"].values()) == frames["sampled"]
    calls_by_model = {m: t["calls"] for m, t in summary["by_model"].items()}
    assert calls_by_model == {lite: 4 + 4, flash: 2, sonnet: 1}  # 4 memory updates by tier 0
    assert summary["memory"]["updates"] == 4 and summary["memory"]["failed_updates"] == 0
    assert 0 < summary["memory"]["cost_usd"] < summary["total_cost_usd"]
    assert all(t["errors"] == 0 for t in summary["by_model"].values())
    assert summary["total_cost_usd"] > 0
    assert "tool_calls" not in summary["turns"]
    assert summary["knowledge_hits"] >= 4
    assert summary["vs_top_tier"]["user_turns"] == 4
    assert summary["vs_top_tier"]["model_rounds"] == 4
    assert 0 < summary["vs_top_tier"]["savings"] < 1
    # each model caches its own prompts from its floor on (the tool definitions, instructions and
    # history): Flash's second call reads its first's; Flash-Lite's stay under 2,048 tokens;
    # Claude's one call writes its prefix
    cached = {m: t["cached_input_tokens"] for m, t in summary["by_model"].items()}
    assert cached[lite] == cached[sonnet] == 0 < cached[flash]
    assert summary["by_model"][sonnet]["cache_write_tokens"] > 1024
    assert 0 < summary["prompt_cache"]["hit_rate"] < 0.1
    images = summary["images"]
    assert images["sent"] == 7 and images["tokens"] > 0
    assert images["tokens"] <= images["tokens_at_full_resolution"]
    assert images["questions_with_new_image"] == 3 and images["questions_screen_unchanged"] == 1
    # 1280x720: 2 tiles; the screenshot held instead lies past Gemini's cached prefix, billed
    # as fresh input as a new one would have been
    assert images["unsent_tokens"] == 516 and images["unsent_saved_usd"] == 0.0
    screen = summary["screen"]
    assert screen["reads"] == frames["kept"] and screen["reader"]["coalesced"] == 0
    assert screen["lines_added"] > 0 and screen["errors"] >= 1 and screen["ocr_cpu_s"] > 0
    assert screen["reader"]["archived_frames"] == frames["kept"]
    session_rows = [r for r in timeline.values() if r["session_id"] == summary["session_id"]]
    assert 0 < len(session_rows) <= screen["reads"]
    assert summary["unpriced_models"] == []
    assert summary.get("db_spilled_events", 0) == 0

    events = read_jsonl(summary["cost_log"])
    calls = [e for e in events if e["kind"] == "model_call"]
    assert len(calls) == 7 + 4
    memory_calls = [c for c in calls if c["detail"].get("purpose") == "memory"]
    assert len(memory_calls) == 4 and all(c["model"] == lite for c in memory_calls)
    assert [c["detail"]["facts_written"] for c in memory_calls] == [1, 1, 0, 0]
    assert sum(c["images"] for c in calls) == 7
    assert all(c["image_tokens"] >= 258 * c["images"] and c["output_tokens"] > 0 for c in calls)
    turn_events = [e["detail"] for e in events if e["kind"] == "turn"]
    assert [(t["start_tier"], t["reason"], t["answered_model"]) for t in turn_events] == [
        (0, "first_turn", lite), (0, "new_topic", flash), (0, "new_topic", sonnet),
        (0, "new_topic", lite)]
    assert [[x["confidence"] for x in t["tried"]] for t in turn_events] == [
        [0.9], [0.45, 0.9], [0.4, 0.6, 0.9], [0.9]]
    logged = [e["detail"] for e in events if e["kind"] == "frame"]
    # the question at 8.1 s came while a command was typed: that sample, held back, was kept
    # then, and its decision written again (`was`)
    [asked] = [d for d in logged if "was" in d]
    assert (asked["t"], asked["reason"], asked["was"], asked["kept"]) == (8.0, "asked",
                                                                          "typing", True)
    assert len(logged) == frames["sampled"] + 1
    assert sum(d["kept"] for d in logged) == frames["kept"]
    assert logged[0]["reason"] == "first" and logged[0]["kept"]
    assert all(d["content_type"] in {"code", "ui", "docs", "video"} for d in logged)
    assert all(isinstance(d["phash_distance"], int) and d["changed_px"] >= 0 for d in logged)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["kind"] == "summary"
    assert sum(c["cost_usd"] for c in calls) == pytest.approx(summary["total_cost_usd"])

    rows = await db.pool.fetch(
        "SELECT session_id, role, content FROM messages WHERE tenant = $1 AND user_id = $2"
        " ORDER BY id", "demo", "dev-1",
    )
    assert [r["role"] for r in rows] == ["user", "assistant"] * 5
    assert [r["content"] for r in rows[0::2]] == [t["text"] for t in DEMO_SESSION["turns"]]
    assert [r["content"] for r in rows[1::2]] == [answer(t) for t in DEMO_SESSION["turns"]]
    assert [r["session_id"] for r in rows] == [summary["session_id"]] * 8 + [
        result.sessions[1]["session_id"]] * 2
    assert await db.pool.fetchval("SELECT count(*) FROM messages") == 10
    assert await db.pool.fetchval(
        "SELECT count(*) FROM messages WHERE embed_model = 'minilm-l6-v2-384-windows'") == 10

    stored = await Store(db.pool).get_session(summary["session_id"])
    assert stored is not None and stored["model_calls"] == 11
    assert stored["total_cost_usd"] == pytest.approx(summary["total_cost_usd"], abs=1e-8)


async def test_a_replay_waits_for_the_screen_timeline_its_questions_recall(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Replay runs faster than real time, so before a question it waits until what the reads
    found is in the screen timeline, which the question's recall searches, not only read: a
    slow database changes nothing a replay prints. (Waiting for the reads alone, a question at
    t=34 once missed the rows of t=29 and t=32 on a busy machine.)"""
    write = ScreenTimeline.write

    async def slow_write(self: ScreenTimeline, rows: Sequence[dict[str, Any]]) -> None:
        await asyncio.sleep(0.5)
        await write(self, rows)

    monkeypatch.setattr(ScreenTimeline, "write", slow_write)
    result = await replay(load_fixture(DEMO_FIXTURE), settings, db)
    assert result.turns[2].screen_used == (
        "t=24s", "t=25s", "t=33s", "recalled t=29s", "recalled t=32s")  # as `make demo` prints


async def test_conversation_is_recalled_in_the_next_session(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    await replay(load_fixture(DEMO_FIXTURE), settings, db)

    probe = ConversationLog(Store(db.pool), "probe", "demo", tmp_path)
    history = await probe.history("dev-1", 10)
    texts = [(m.role, m.text_content) for m in history.messages()]
    expected = []
    for turn in DEMO_SESSION["turns"]:
        expected += [("user", turn["text"]), ("assistant", answer(turn))]
    assert texts == expected
    # the limit keeps the most recent messages
    last_two = await probe.history("dev-1", 2)
    assert [m.text_content for m in last_two.messages()] == [t for _, t in expected[-2:]]
    # its writer's task ended (left pending, it was destroyed in a later test of this process)
    assert await probe.close() == 0

    # a second replay, in a new session, for the same tenant and user
    question = "Did the zebra-42 deploy finish?"
    one_turn = write_fixture(tmp_path / "one-turn", seconds=5, turns=[
        {"t": 3.0, "tenant": "demo", "user": "dev-1", "text": question,
         "response": {"origin": "scripted", "text": "Yes, zebra-42 is live."}},
    ])
    second = await replay(load_fixture(one_turn), settings, db)
    assert second.turns[0].reply == "Yes, zebra-42 is live."

    async with ScriptedModelServer([sure("You asked about zebra-42.")]) as server:
        replies, _ = await drive(settings, db, server, ["What did I ask you before?"])
        assert replies == ["You asked about zebra-42."]
        assert len(server.requests) == 1
        sent = server.requests[0].text
        assert question in sent
        assert "Yes, zebra-42 is live." in sent
        for turn in DEMO_SESSION["turns"][1:]:  # the window: the last 10 messages
            assert turn["text"] in sent
        assert "What did I ask you before?" in sent
        # no screen share in this session: the model is told, and no image is sent
        assert server.requests[0].image_count == 0
        assert "No screen share is visible" in sent

    # another tenant's user with the same id sees none of it
    async with ScriptedModelServer([sure("Hello.")]) as server:
        await drive(settings, db, server, ["Hi there"], tenant="other-tenant")
        sent = server.requests[0].text
        assert question not in sent
        assert DEMO_SESSION["turns"][0]["text"] not in sent


def expected_failure(provider: str, model: str, kind: str, status: int | None) -> str:
    return failure_sentence(ProviderError(provider, model, kind, status, ""))


@pytest.mark.parametrize(
    ("provider", "model", "status", "kind", "told"),
    [("gemini", "gemini-2.5-flash", 500, "server_error", "had an internal error"),
     ("anthropic", "claude-sonnet-4-6", 500, "server_error", "had an internal error"),
     # a model too busy now, or a service unavailable for now (both were told as an internal
     # error); a 503 may be a gateway's as well as Gemini's overload
     ("gemini", "gemini-2.5-flash", 503, "unavailable", "is unavailable right now"),
     ("anthropic", "claude-sonnet-4-6", 529, "overloaded", "is overloaded right now")],
)
async def test_provider_error_is_one_sentence_and_the_session_continues(
    settings: Settings, db: Database, tmp_path: Path, provider: str, model: str, status: int,
    kind: str, told: str,
) -> None:
    root = write_fixture(tmp_path / "errors", tiers=one_tier(provider, model), seconds=10, turns=[
        {"t": 2.0, "tenant": "acme", "user": "u-7", "text": "What is on my screen?",
         "response": {"origin": "scripted", "error": {"status": status}}},
        {"t": 9.0, "tenant": "acme", "user": "u-7", "text": "And now?",
         "response": {"origin": "scripted", "text": "A terminal showing pip 23.2.1."}},
    ])
    result = await replay(load_fixture(root), settings, db)

    assert len(result.turns) == 2
    failed, answered = result.turns
    assert failed.reply == expected_failure(provider, model, kind, status)
    assert failed.reply == (f"Sorry, the model ({model}) {told}, so I have no answer. "
                            "Please ask again.")
    assert failed.model_requests == 1  # one model call (its SDK retries: test_cascade.py)
    assert answered.reply == "A terminal showing pip 23.2.1."
    assert answered.model_requests == 1 and answered.images_sent == 1

    assert len(result.sessions) == 1
    summary = result.sessions[0]
    # the failed attempt and the answer; then the answered exchange's memory update (the
    # failure sentence is not worth remembering)
    assert summary["by_model"][model]["calls"] == 3
    assert summary["by_model"][model]["errors"] == 1
    assert summary["memory"]["updates"] == 1
    events = read_jsonl(summary["cost_log"])
    errors = [e for e in events if e["kind"] == "model_error"]
    assert len(errors) == 1
    assert errors[0]["provider"] == provider and errors[0]["model"] == model
    assert f"HTTP {status}" in errors[0]["detail"]["error"]
    assert errors[0]["detail"]["outcome"] == "failed"
    assert [(e["kind"], e["detail"].get("purpose")) for e in events
            if e["kind"].startswith("model")] == [
        ("model_error", None), ("model_call", None), ("model_call", "memory"),
    ]
    kinds = [r["kind"] for r in await db.pool.fetch(
        "SELECT kind FROM cost_events WHERE session_id = $1 AND kind LIKE 'model%' ORDER BY seq",
        summary["session_id"],
    )]
    assert kinds == ["model_error", "model_call", "model_call"]


@pytest.mark.parametrize(
    ("provider", "model"),
    [("gemini", "gemini-2.5-flash"), ("anthropic", "claude-sonnet-4-6")],
)
async def test_provider_timeout_is_one_sentence_and_the_session_continues(
    database_url: str, tmp_path: Path, provider: str, model: str
) -> None:
    settings = Settings.from_env({
        "DATABASE_URL": database_url,
        "SIGHTLINE_DATA_DIR": str(tmp_path / "data"),
        "SIGHTLINE_TIERS": one_tier(provider, model),
        "SIGHTLINE_MODEL_TIMEOUT_S": "0.5",
        "SIGHTLINE_MODEL_RETRIES": "0",
    })
    db = await Database.open(settings.database_url, settings.data_dir)
    try:
        replies_script = [
            ScriptedReply(text="This answer comes far too late.", delay_s=3.0),
            ScriptedReply(text="Your terminal shows git 2.39.5."),
        ]
        async with ScriptedModelServer(replies_script) as server:
            replies, summary = await drive(
                settings, db, server, ["What is this?", "And what version is git?"],
            )
            assert len(server.requests) == 2  # no retry
        assert replies[0] == expected_failure(provider, model, "timeout", None)
        assert "took too long" in replies[0]
        assert "far too late" not in replies[0]
        assert replies[1] == "Your terminal shows git 2.39.5."

        events = read_jsonl(summary["cost_log"])
        model_events = [e for e in events if e["kind"].startswith("model")]
        assert [e["kind"] for e in model_events] == ["model_error", "model_call"]
        assert "timeout" in model_events[0]["detail"]["error"]
        assert summary["by_model"][model]["errors"] == 1
    finally:
        await db.close()


CASCADE = ("gemini:gemini-2.5-flash-lite:0.7:256,gemini:gemini-2.5-flash:0.6:256,"
           "anthropic:claude-sonnet-4-6:0:512")


def tiered(*replies: tuple[str, float | None, str]) -> dict[str, Any]:
    return {"origin": "scripted", "tiers": [
        {"model": m, "confidence": c, "text": t} for m, c, t in replies
    ]}


async def test_replayed_cascade_logs_the_escalation_path_turn_by_turn(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    root = write_fixture(tmp_path / "cascade", [
        {"t": 9.0, "tenant": "acme", "user": "u1", "text": "Which pip version is shown?",
         "response": tiered(("gemini-2.5-flash-lite", 0.35, "Maybe pip 22?"),
                            ("gemini-2.5-flash", 0.9, "pip 23.2.1, for Python 3.11."))},
        {"t": 12.0, "tenant": "acme", "user": "u1", "text": "which version of pip is shown",
         "response": tiered(("claude-sonnet-4-6", None, "It is pip 23.2.1 from the venv."))},
        {"t": 20.0, "tenant": "acme", "user": "u1", "text": "What does the clock show?",
         "response": tiered(("gemini-2.5-flash-lite", 0.95, "It shows 14:05."))},
    ], tiers=CASCADE)
    result = await replay(load_fixture(root), settings, db)
    first, second, third = result.turns
    assert first.reply == "pip 23.2.1, for Python 3.11."
    assert first.models_asked == ("gemini-2.5-flash-lite", "gemini-2.5-flash")
    assert second.reply == "It is pip 23.2.1 from the venv."
    # asked again after tier 1 answered: this turn starts one tier higher, at tier 2
    assert second.models_asked == ("claude-sonnet-4-6",)
    assert third.models_asked == ("gemini-2.5-flash-lite",) and third.reply == "It shows 14:05."
    assert all("[[" not in t.reply and "Maybe" not in t.reply for t in result.turns)

    (summary,) = result.sessions
    turns = [e["detail"] for e in read_jsonl(summary["cost_log"]) if e["kind"] == "turn"]
    path = [
        (t["start_tier"], t["reason"], [(x["model"], x["confidence"], x["outcome"])
                                        for x in t["tried"]], t["answered_model"])
        for t in turns
    ]
    assert path == [
        (0, "first_turn", [("gemini-2.5-flash-lite", 0.35, "low_confidence"),
                           ("gemini-2.5-flash", 0.9, "answered")], "gemini-2.5-flash"),
        (2, "question_repeated", [("claude-sonnet-4-6", None, "answered")],
         "claude-sonnet-4-6"),
        (0, "new_topic", [("gemini-2.5-flash-lite", 0.95, "answered")],
         "gemini-2.5-flash-lite"),
    ]
    assert summary["turns"]["answered_by_tier"] == {"1": 1, "2": 1, "0": 1}
    assert set(summary["by_model"]) == {
        "gemini-2.5-flash-lite", "gemini-2.5-flash", "claude-sonnet-4-6"}
    assert summary["by_model"]["gemini-2.5-flash"]["calls"] == 1
    assert all(m["errors"] == 0 for m in summary["by_model"].values())
    # what the same answers would have cost from the top tier alone
    vs_top = summary["vs_top_tier"]
    assert vs_top["user_turns"] == vs_top["model_rounds"] == 3
    assert vs_top["cost_usd"] + summary["memory"]["cost_usd"] == pytest.approx(
        summary["total_cost_usd"], abs=1e-8)
    assert vs_top["top_tier_cost_usd"] > vs_top["cost_usd"] > 0
    assert vs_top["savings"] == pytest.approx(1 - vs_top["cost_usd"] / vs_top[
        "top_tier_cost_usd"], abs=1e-4)
    assert turns[2]["cost_usd"] < turns[2]["top_tier_cost_usd"]
    assert turns[1]["cost_usd"] == pytest.approx(turns[1]["top_tier_cost_usd"], abs=1e-8)


async def test_tenant_budget_counts_earlier_sessions_from_postgres(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    unsure_then_sure = tiered(("gemini-2.5-flash-lite", 0.2, "Perhaps a cache issue."),
                              ("gemini-2.5-flash", 0.9, "The config file is missing."))
    root = write_fixture(tmp_path / "budget", seconds=11, turns=[
        {"t": 5.0, "tenant": "acme", "user": "u1", "text": "Why does startup fail?",
         "response": tiered(("gemini-2.5-flash-lite", 0.9, "The config file is missing."))},
        {"t": 10.0, "tenant": "acme", "user": "u2", "text": "Why does startup fail?",
         "response": unsure_then_sure},
    ], tiers=CASCADE)
    # the first session alone spends more than the tenant's budget for the day
    capped = settings.with_overrides(tenant_budget_usd=1e-6, budget_max_tier=0)
    result = await replay(load_fixture(root), capped, db)
    first, second = result.turns
    assert first.models_asked == ("gemini-2.5-flash-lite",)
    # u2's session opens over the tenant's budget: its unsure tier 0 answers, no climbing
    assert second.models_asked == ("gemini-2.5-flash-lite",)
    assert second.reply == "Perhaps a cache issue."
    one, two = result.sessions
    assert two["budget"]["tenant_spent_usd"] >= one["total_cost_usd"] > 0
    assert two["budget"]["escalation_capped_at_tier"] == 0
    assert "tenant:100%" in one["budget"]["thresholds_crossed"]


async def test_a_tenant_budget_counts_the_sessions_running_beside_it(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two sessions of one tenant at once: the spend of one reaches the other's budget guard
    while both run (agent/tenant_spend.py). Each knew only the tenant's spend when it opened,
    so together they could pass the budget far before either noticed."""
    monkeypatch.setattr(tenant_spend, "EVERY_S", 0.05)
    capped = settings.with_overrides(gemini_api_key="test-key", anthropic_api_key="test-key",
                                     embeddings="offline", memory_updates=False,
                                     tenant_budget_usd=0.01, budget_max_tier=0)
    first = await SessionRuntime.open(capped, db, tenant="acme", user_id="u1", source="replay")
    second = await SessionRuntime.open(capped, db, tenant="acme", user_id="u2", source="replay")
    other = await SessionRuntime.open(capped, db, tenant="globex", user_id="u3",
                                      source="replay")
    try:
        assert first.record.budget is not None and first.record.budget.tier_cap() is None
        # the second spends the whole day's budget (a priced call goes to Postgres at once)
        second.record.events.record("model_call", cost_usd=0.02, provider="gemini",
                                    model="gemini-2.5-flash", detail={"tier": 0})
        for _ in range(400):
            if first.record.budget.tier_cap() is not None:
                break
            await asyncio.sleep(0.05)
        assert first.record.budget.tier_cap() == 0, "the first never saw the second's spend"
        assert other.record.budget is not None and other.record.budget.tier_cap() is None
    finally:
        summaries = [await runtime.close() for runtime in (first, second, other)]
    crossed = [e["detail"] for e in map(json.loads, first.record.events.path.read_text()
                                        .splitlines()) if e["kind"] == "budget"]
    assert [(c["scope"], c["threshold"]) for c in crossed] == [
        ("tenant", 0.7), ("tenant", 0.9), ("tenant", 1.0)]
    assert summaries[0]["budget"]["tenant_spent_usd"] == pytest.approx(0.02)
    assert summaries[2]["budget"]["thresholds_crossed"] == []


async def test_a_replay_is_given_time_for_its_lookups(settings: Settings, db: Database) -> None:
    """A replay answers the same on a busy machine as on a quiet one: its turns wait for their
    lookups (a live turn gives up after 0.5 s, and on the question's vector after 0.3 s)."""
    settings = settings.with_overrides(gemini_api_key="test-key", anthropic_api_key="test-key",
                                       embeddings="offline", memory_updates=False)
    for source, vector_wait in (("replay", REPLAY_WAIT_S), ("live", VECTOR_WAIT_S)):
        runtime = await SessionRuntime.open(settings, db, tenant="demo", user_id="dev-1",
                                            source=source)
        try:
            assert runtime.recall_budget == RecallBudget.for_source(source)
            assert runtime.turn_context._recall_timeout_s == runtime.recall_budget.lookup_s
            assert runtime.agent._assist_wait_s == runtime.recall_budget.assist_s
            assert runtime.memory is not None
            assert runtime.memory.recall._vector_wait_s == vector_wait
        finally:
            await runtime.close()


async def test_an_agent_session_that_fails_to_close_still_leaves_its_summary(
    settings: Settings, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The replay closed its agent session, then its runtime: one raising skipped the other,
    and the summary with it. The runtime is closed whatever the agent session did, the
    session ends `failed` with why, in one line."""
    original = AgentSession.aclose

    async def failing(self: AgentSession) -> None:
        await original(self)
        raise RuntimeError("injected: the agent session failed to close")

    monkeypatch.setattr(AgentSession, "aclose", failing)
    fixture = write_fixture(tmp_path / "close", seconds=5, turns=[
        {"t": 3.0, "tenant": "demo", "user": "dev-1", "text": "Is it up?",
         "response": {"origin": "scripted", "text": "Yes."}}])
    result = await replay(load_fixture(fixture), settings, db)
    [summary] = result.sessions
    assert summary["outcome"] == "failed"
    assert summary["error"] == ("closing its agent session: RuntimeError: injected: the agent "
                                "session failed to close")
    assert read_jsonl(summary["cost_log"])[-1]["kind"] == "summary"
    assert not any(r.exc_info for r in caplog.records)
