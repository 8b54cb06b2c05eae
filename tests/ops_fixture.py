"""A scripted multi-session fixture for the ops commands (quality, usage, alerts, report): several
users of tenant `acme`, some of whose questions fail, recorded through the real cascade, the real
google-genai and anthropic clients against the wire-format server (replies scripted per question
and model), the real session record and the real Postgres writer. A second tenant's session
checks that every figure stays within its tenant.

What the plan holds, and so what the ops figures must say (tests assert these):
- acme: 3 users, 4 sessions, 9 user turns.
  - alice (s-alice, 2 days ago): a first question answered by tier 0 (0.9); the same question
    rephrased (retry, starts at tier 1, 0.8); "that didn't help" (retry, tier 2 answers with a
    stated 0.5). Ended normally.
  - bob (s-bob, 1 day ago): tier 0 unsure (0.3), tier 1 answers (0.9: an escalation); a new
    topic at tier 0 (0.95); a long answer the user cuts short and leaves: `left_mid_answer`.
    He shared a code screen for a minute (61 frames sampled, 7 kept) and spoke 90 s (one
    speech-to-text call, $0.0012, recorded as the voice work records them).
  - carol (s-carol, today): tier 0 fails with HTTP 500, tier 1 answers (0.7: an escalation by
    failure); every tier fails (no answer); the session ends `failed`.
  - alice again (s-alice-2, today): a new question, tier 0 (0.85). Ended normally.
- globex: one session (s-globex, today), one turn answered by tier 2 (0.99), so a figure that
  leaked across tenants would show.
Tier mix of acme: 0 ×3 (alice, bob's 2nd, alice-2), 1 ×3, 2 ×1, none ×2 (carol's unanswered
question, and bob's answer cut short: it never ended). Latency is real (scripted delays of
30 ms at the server).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from livekit.agents import llm

from agent.cascade import CascadeLLM, Tier
from agent.images import ImageEncoder
from agent.pricing import PriceTable
from agent.providers import ClaudeProvider, GeminiProvider
from agent.session_record import COMPLETED, FAILED, SessionRecord
from agent.wire_format_server import CapturedRequest, ScriptedModelServer, ScriptedReply
from memory.db import Database
from memory.store import Store

TIERS = [
    Tier("gemini", "gemini-2.5-flash-lite", 0.7, 256),
    Tier("gemini", "gemini-2.5-flash", 0.7, 256),
    Tier("anthropic", "claude-sonnet-4-6", 0.0, 256),
]
LITE, FLASH, CLAUDE = (t.model for t in TIERS)


def said(text: str, confidence: float, delay_s: float = 0.03, **kw: float) -> ScriptedReply:
    return ScriptedReply(text=f"[[confidence: {confidence}]] {text}", delay_s=delay_s,
                         **kw)  # type: ignore[arg-type]


FAIL = ScriptedReply(status=500)


@dataclass
class Question:
    text: str
    replies: dict[str, ScriptedReply]  # by model: what each tier says to this question
    leave_mid_answer: bool = False  # the user cuts the answer short after its first words
    # events recorded right after the question's turn, as (kind, fields): what a tool did then
    after: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@dataclass
class SessionPlan:
    session_id: str
    tenant: str
    user: str
    questions: list[Question]
    outcome: str = COMPLETED
    days_ago: int = 0
    # events recorded after the questions, as (kind, fields): the screen share's frame
    # decisions, and a speech-to-text call as the voice work records one (see memory/usage.py)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _frames(seconds: int, content_type: str, keep_every: int) -> list[tuple[str, dict]]:
    """A screen share's sampled frames at 1 FPS, every `keep_every`-th kept."""
    return [("frame", {"detail": {"t": float(t), "kept": t % keep_every == 0,
                                  "reason": "changed" if t % keep_every == 0 else "unchanged",
                                  "content_type": content_type}})
            for t in range(seconds)]


PLAN = [
    SessionPlan("s-alice", "acme", "alice", [
        Question("How do I reset my API key in the console?",
                 {LITE: said("Open Settings, then API keys, then Reset.", 0.9)}),
        Question("how can I reset the API key in the console",
                 {FLASH: said("Settings > API keys > Reset, then confirm by email.", 0.8)}),
        Question("That didn't help, the reset button is greyed out.",
                 {CLAUDE: said("Only an admin can reset it; ask your workspace admin.", 0.5)}),
    ], days_ago=2),
    SessionPlan("s-bob", "acme", "bob", [
        Question("Why does the export fail with error E42?",
                 {LITE: said("Maybe a network issue.", 0.3),
                  FLASH: said("E42 means the export exceeds 10,000 rows; filter first.", 0.9)}),
        Question("Where do I change the invoice currency?",
                 {LITE: said("Billing, then Currency.", 0.95)}),
        Question("Can you walk me through the whole SSO setup?",
                 {LITE: said("Sure. " + "First open the identity provider settings. " * 30,
                             0.9, chunk_delay_s=0.02, words_per_chunk=3)},
                 leave_mid_answer=True),
    ], days_ago=1, events=[
        *_frames(61, "code", 10),
        # speech engines' events as agent/metering.py records them (scripted figures)
        ("speech", {"cost_usd": 0.0012, "provider": "openai", "model": "whisper-1",
                    "detail": {"direction": "stt", "audio_s": 90.0, "characters": 0,
                               "latency_ms": 80.0}}),
        ("speech", {"cost_usd": 0.0009, "provider": "openai", "model": "tts-1",
                    "detail": {"direction": "tts", "audio_s": 12.0, "characters": 60,
                               "latency_ms": 120.0}}),
    ]),
    SessionPlan("s-carol", "acme", "carol", [
        Question("What does the red banner on the dashboard mean?",
                 {LITE: FAIL, FLASH: said("Your trial ends in 3 days.", 0.7)}),
        Question("Why is the webhook signature invalid?",
                 {LITE: FAIL, FLASH: FAIL, CLAUDE: FAIL}),
    ], outcome=FAILED),
    SessionPlan("s-alice-2", "acme", "alice", [
        Question("How do I invite a teammate?",
                 {LITE: said("Team, then Invite, then enter their email.", 0.85)}),
    ]),
    SessionPlan("s-globex", "globex", "gus", [
        Question("Explain the quarterly audit log format.",
                 {LITE: said("not sure", 0.2), FLASH: said("unsure", 0.4),
                  CLAUDE: said("Each line is a JSON object with actor, action and time.", 0.99)}),
    ]),
]


# more of acme's users, for the knowledge gaps (recorded by tests/test_gaps.py only): questions
# about the API key that the knowledge base fails in three ways, and a second webhook failure
GAP_SESSIONS = [
    SessionPlan("s-dave", "acme", "dave", [
        Question("How do I rotate my API key?",
                 {LITE: said("unsure", 0.2), FLASH: said("unsure", 0.3),
                  CLAUDE: said("Probably under Settings, but I cannot tell.", 0.4)},
                 # the model hands dave to a person (the handoff tool's event, as it records it)
                 after=[("handoff", {"detail": {
                     "type": "handoff", "version": 1, "session_id": "s-dave", "user": "dave",
                     "reason": "cannot find how to rotate keys",
                     "at": "2026-11-30T05:00:00+00:00"}})]),
    ]),
    SessionPlan("s-erin", "acme", "erin", [
        Question("Where can I regenerate the API key?",
                 {LITE: said("In Settings.", 0.9)}),
        Question("That did not help: where is the page to reset the API key?",
                 {FLASH: said("Try the Account page.", 0.5),
                  CLAUDE: said("It may be on the Account page.", 0.5)}),
    ]),
    SessionPlan("s-frank", "acme", "frank", [
        Question("My webhook signature does not verify, why?",
                 {LITE: FAIL, FLASH: FAIL, CLAUDE: FAIL}),
    ]),
]


class _Script:
    """Replies to the question being asked, by model (a model not scripted for it fails)."""

    def __init__(self) -> None:
        self.question: Question | None = None

    def __call__(self, request: CapturedRequest) -> ScriptedReply:
        assert self.question is not None
        return self.question.replies.get(request.model, FAIL)


async def _ask(model: CascadeLLM, ctx: llm.ChatContext, question: Question) -> None:
    ctx.add_message(role="user", content=question.text)
    parts: list[str] = []
    async with model.chat(chat_ctx=ctx) as stream:
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                parts.append(chunk.delta.content)
                if question.leave_mid_answer:
                    break  # the user leaves while the agent speaks: LiveKit closes the stream
    ctx.add_message(role="assistant", content="".join(parts))


async def record_plan(
    db: Database, costs_dir: Path, plan: list[SessionPlan] = PLAN, at: datetime | None = None,
) -> None:
    """Run every planned session through the cascade into Postgres, then move each session's
    rows to `days_ago` before `at` (default now): the runs all happen now; the reports look at
    days and months."""
    now = datetime.now(UTC)
    at = at or now
    store = Store(db.pool)
    script = _Script()
    server = ScriptedModelServer(replies=script)
    await server.start()
    try:
        for session in plan:
            await store.start_session(session.session_id, tenant=session.tenant,
                                      user_id=session.user, room=None, source="replay",
                                      provider="cascade", model="cascade")
            record = SessionRecord.open(session_id=session.session_id, tenant=session.tenant,
                                        source="replay", costs_dir=costs_dir,
                                        prices=PriceTable.load(), store=store)
            providers = [
                (GeminiProvider if t.provider == "gemini" else ClaudeProvider)(
                    api_key="test-key", model=t.model, base_url=server.base_url,
                    timeout_s=2.0, retries=0)
                for t in TIERS
            ]
            model = CascadeLLM(TIERS, providers, record.meter,  # type: ignore[arg-type]
                               20.0, ImageEncoder("medium"))
            ctx = llm.ChatContext.empty()
            for question in session.questions:
                script.question = question
                await _ask(model, ctx, question)
                for kind, fields in question.after:
                    record.events.record(kind, **fields)
                # the exchange as the conversation log stores it (the gaps read the questions)
                await store.add_messages(session.session_id, session.tenant, [
                    {"user_id": session.user, "role": "user", "content": question.text},
                    {"user_id": session.user, "role": "assistant",
                     "content": ctx.items[-1].text_content or ""}])
            await asyncio.sleep(0.05)  # the cancelled round's turn event is recorded
            for kind, fields in session.events:
                record.events.record(kind, **fields)
            await model.aclose()
            error = "RuntimeError: scripted failure" if session.outcome == FAILED else None
            await record.close(session.outcome, error)
    finally:
        await server.stop()
    for session in plan:
        shift = now - (at - timedelta(days=session.days_ago))
        if shift:
            await db.pool.execute(
                "UPDATE sessions SET started_at = started_at - $2::interval,"
                " ended_at = ended_at - $2::interval WHERE id = $1", session.session_id, shift)
            await db.pool.execute(
                "UPDATE cost_events SET ts = ts - $2::interval WHERE session_id = $1",
                session.session_id, shift)
