"""End to end on a real LiveKit server: dispatch → join → screen share → chat → reply → cost log.

A `sightline start` worker (a separate process, as in production) answers a user who joins with
the rtc SDK and publishes the demo screen recording as a screen-share track. The model is the
local wire-format server, reached by the worker through the real google-genai client.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shlex
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import fresh_database
from livekit import rtc
from PIL import Image, ImageFont
from synthetic_screen import Desk, write_recording
from waits import eventually
from worker_fixture import running_worker, worker_env

from agent.assist import ASSIST_TOPIC, AssistMessage
from agent.chat_inbox import RECEIVED_TOPIC
from agent.components import make_embedder
from agent.config import Settings
from agent.images import sized_for
from agent.wire_format_server import CapturedRequest, ScriptedModelServer, ScriptedReply
from bench.livekit_harness import LiveKitServer, User, Worker, free_port
from memory.db import Database
from memory.knowledge import KnowledgeBase, stored_models
from memory.spill_files import read_event_log

REPO = Path(__file__).resolve().parent.parent
DEMO_FIXTURE = REPO / "fixtures" / "demo"

pytestmark = pytest.mark.e2e

AGENT_NAME = "sightline-e2e"
ANSWER = "(scripted) The traceback says json.loads hit a trailing comma before the closing brace."
MEMORY_UPDATE = json.dumps({"facts": [{"key": "current_bug", "text": (
    "(scripted) The user is debugging a json.loads error caused by a trailing comma.")}],
    "summary": "(scripted) The user asked why a JSONDecodeError showed up."})


class Replies:
    """What the fake models say next: `by_model` first, else `next`; tests swap them. The
    memory model (tier 0 asked after each exchange) gets `memory`."""

    def __init__(self) -> None:
        self.next = ScriptedReply(text=ANSWER)
        self.by_model: dict[str, ScriptedReply] = {}
        self.memory = ScriptedReply(text=MEMORY_UPDATE)
        self.asked = asyncio.Event()

    def __call__(self, request: CapturedRequest) -> ScriptedReply:
        if request.purpose == "memory":
            return self.memory
        self.asked.set()
        return self.by_model.get(request.model, self.next)


def turn_requests(server: ScriptedModelServer, seen: int) -> list[CapturedRequest]:
    """The requests since `seen` that answered the user: not embeddings, not memory updates."""
    return [r for r in server.requests[seen:]
            if r.purpose == "answer"]


def sure(text: str, **kw: float) -> ScriptedReply:
    """A reply the first tier is sure of, so it answers alone."""
    return ScriptedReply(text=f"[[confidence: 0.95]] {text}", **kw)  # type: ignore[arg-type]


@pytest.fixture
def free_tcp_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
async def model_server() -> AsyncIterator[tuple[ScriptedModelServer, Replies]]:
    replies = Replies()
    async with ScriptedModelServer(replies=replies) as server:
        yield server, replies


@pytest.fixture(scope="module")
async def e2e_database_url(postgres_admin_url: str) -> str:
    return await fresh_database(postgres_admin_url, "e2e")


@pytest.fixture(scope="module")
async def worker(
    livekit: LiveKitServer,
    model_server: tuple[ScriptedModelServer, Replies],
    e2e_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Worker]:
    workdir = tmp_path_factory.mktemp("worker")
    # the test machine's CPU is shared: count sessions, not CPU, or a busy moment refuses the
    # dispatch
    async with running_worker(workdir, worker_env(
            livekit, model_server[0], agent_name=AGENT_NAME, database_url=e2e_database_url,
            data_dir=workdir / "data", SIGHTLINE_MAX_SESSIONS="8")) as worker:
        yield worker


def receipts(user: User) -> list[dict[str, Any]]:
    """The worker's confirmations of the user's chat messages (agent/chat_inbox.py)."""
    return [json.loads(payload) for topic, payload in user.data if topic == RECEIVED_TOPIC]


def new_user(livekit: LiveKitServer, room_name: str) -> User:
    """A person who dispatches this module's worker (tenant e2e) and shares the demo screen."""
    return User(livekit, room_name, agent_name=AGENT_NAME, metadata={"tenant": "e2e"},
                video=DEMO_FIXTURE / "screen.webm")


def _log_of(costs: Path, room: str, *, finished: bool) -> list[dict[str, Any]] | None:
    """The cost log of the session in `room` (its `session` event names the room), once it is
    finished if `finished`. Not the newest file: a session that ended late, under load, writes
    its summary after the next test's session has begun, and the newest file is then the
    wrong session's."""
    for path in costs.glob("live_*.jsonl"):
        events = read_event_log(path)
        if any(e["kind"] == "session" and e["detail"].get("room") == room for e in events):
            return events if not finished or events[-1]["kind"] == "summary" else None
    return None


async def session_events(worker: Worker, user: User, timeout_s: float = 30, *,
                         finished: bool = True) -> list[dict[str, Any]]:
    """Events of `user`'s session (one per room here), once its summary line is written (or,
    unless `finished`, as soon as its `session` event is: the log is written as it goes)."""
    costs = worker.data_dir / "costs"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        events = await asyncio.to_thread(_log_of, costs, user.room_name, finished=finished)
        if events is not None:
            return events
        await asyncio.sleep(0.2)
    raise AssertionError(f"no {'finished ' if finished else ''}cost log for {user.room_name} "
                         f"in {costs}:\n{worker.log_text()[-4000:]}")


def jpeg_size(request: CapturedRequest) -> tuple[int, int]:
    for content in request.body["contents"]:
        for part in content["parts"]:
            inline = part.get("inlineData") or part.get("inline_data")
            if inline:
                data = inline["data"]  # google-genai sends URL-safe base64 without padding
                raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
                return Image.open(io.BytesIO(raw)).size
    raise AssertionError("the request carries no inline image")


async def test_agent_sees_the_screen_share_and_answers_a_chat_message(
    livekit: LiveKitServer,
    worker: Worker,
    model_server: tuple[ScriptedModelServer, Replies],
    e2e_database_url: str,
) -> None:
    server, replies = model_server
    # the default cascade: Flash-Lite is unsure, so Flash answers within the same turn
    replies.by_model = {
        "gemini-2.5-flash-lite": ScriptedReply(text="[[confidence: 0.3]] (scripted) A typo?"),
        "gemini-2.5-flash": sure(ANSWER),
    }
    seen = len(server.requests)
    user = new_user(livekit, "e2e-screen-share")
    session_streams: list[str] = []  # livekit-agents' session-host events, which Sightline skips
    user.room.register_byte_stream_handler(
        "lk.agent.session", lambda reader, identity: session_streams.append(identity))
    await user.join("user-1")
    agent = await user.wait_for_agent()
    await user.publish_video(rtc.TrackSource.SOURCE_SCREENSHARE, fps=10)
    await asyncio.sleep(8)  # the measured window: the agent samples while we publish
    asked_at = time.time()
    await user.say("Why does this error show up?", message_id="page-1")
    reply = await user.wait_for_reply()
    # the question is confirmed read, then answered once its reply is done; a copy of it (the
    # page missed the receipt) is told it is answered, not answered again
    await eventually(lambda: len(receipts(user)) == 2, f"answered: {receipts(user)}")
    await user.say("Why does this error show up?", message_id="page-1")
    await eventually(lambda: len(receipts(user)) == 3, f"the copy: {receipts(user)}")
    await asyncio.sleep(1)
    await user.leave()
    assert receipts(user) == [{"message": "page-1"}, {"message": "page-1", "answered": True},
                              {"message": "page-1", "answered": True}]

    assert agent.identity.startswith("agent-")
    assert reply == ANSWER, "the reply on the text stream must be the model's response"
    assert session_streams == [], "the agent must not broadcast its session events to the room"

    replies.by_model = {}
    requests = turn_requests(server, seen)
    assert [r.model for r in requests] == ["gemini-2.5-flash-lite", "gemini-2.5-flash"]
    assert all(r.provider == "gemini" and r.stream and r.image_count == 1 for r in requests)
    assert "Why does this error show up?" in requests[0].text

    events = await session_events(worker, user)
    seen_frame = [e for e in events if e["kind"] == "frame"][-1]["detail"]
    sent = sized_for("gemini", seen_frame["width"], seen_frame["height"], "medium")
    assert jpeg_size(requests[0]) == jpeg_size(requests[1]) == sent
    summary = events[-1]["detail"]
    frames = [e for e in events if e["kind"] == "frame"]
    assert len(frames) >= 6
    wall = frames[-1]["ts"] - frames[0]["ts"]
    rate = (len(frames) - 1) / wall
    assert 0.75 <= rate <= 1.25, f"sampled {rate:.2f} frames/s over {wall:.1f}s, want ~1"
    assert summary["frames"]["received"] >= 4 * summary["frames"]["sampled"], (
        "the publisher sent ~10 fps; the sampler must keep about one frame a second"
    )
    calls = [e for e in events if e["kind"] == "model_call"
             and e["detail"].get("purpose") not in ("memory", "embedding")]
    # the question and the messages embedded by Gemini (SIGHTLINE_EMBEDDINGS auto with a key)
    # are billed calls of their own (tests/test_command_costs.py)
    assert any(e["kind"] == "model_call" and e["detail"].get("purpose") == "embedding"
               for e in events)
    assert [c["model"] for c in calls] == ["gemini-2.5-flash-lite", "gemini-2.5-flash"]
    assert [c["image_tokens"] for c in calls] == [r.image_tokens for r in requests]
    assert all(c["images"] == 1 and c["cost_usd"] > 0 and c["tenant"] == "e2e" for c in calls)
    turn = next(e for e in events if e["kind"] == "turn")["detail"]
    assert [t["outcome"] for t in turn["tried"]] == ["low_confidence", "answered"]
    assert events[0]["kind"] == "session" and events[0]["detail"]["room"] == user.room.name
    [chat] = [e for e in events if e["kind"] == "chat"]  # when the question reached the worker
    assert chat["detail"]["characters"] == len("Why does this error show up?")
    assert asked_at - 1 <= chat["detail"]["sent_at"] <= chat["detail"]["received_at"] <= chat["ts"]
    # what the turn cost the session's loop thread: some CPU, never more than one thread can
    # spend between the question's arrival and the reply
    [answered] = [e for e in events if e["kind"] == "reply"]
    assert 0 < answered["detail"]["cpu_ms"] <= (answered["ts"] - chat["ts"]) * 1000 + 1, answered

    conn = await asyncpg.connect(e2e_database_url)
    try:
        stored = await conn.fetchval(
            "SELECT count(*) FROM cost_events WHERE session_id = $1 AND kind = 'model_call'"
            " AND detail->>'purpose' IS DISTINCT FROM 'embedding'",
            events[0]["session_id"],
        )
        messages = await conn.fetch(
            "SELECT role, content, embed_model FROM messages WHERE session_id = $1 ORDER BY id",
            events[0]["session_id"],
        )
        facts = await conn.fetch("SELECT tenant, key, text FROM memory_facts WHERE"
                                 " session_id = $1", events[0]["session_id"])
    finally:
        await conn.close()
    assert stored == 2 + 1  # the two tiers, then tier 0's memory update off the reply path
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "Why does this error show up?"), ("assistant", ANSWER)
    ]
    # with a Gemini key the worker embeds with Gemini (here: the wire-format server's
    # scripted vectors), and the memory update it was given is stored for the user
    assert {m["embed_model"] for m in messages} == {"gemini-embedding-001-768"}
    assert [(f["tenant"], f["key"]) for f in facts] == [("e2e", "current_bug")]
    assert summary["memory"]["updates"] == 1

    # the worker's /metrics: livekit-agents' own series and Sightline's, from the same events
    metrics = await scrape(worker)
    assert "lk_agents_active_job_count" in metrics
    flash_cost = sum(c["cost_usd"] for c in calls if c["model"] == "gemini-2.5-flash")
    assert sample(metrics, "sightline_model_cost_usd_total", model="gemini-2.5-flash",
                  tenant="e2e", tier="1") >= flash_cost > 0
    assert sample(metrics, "sightline_turns_total", answered_tier="1", tenant="e2e") >= 1
    assert sample(metrics, "sightline_escalations_total", tenant="e2e") >= 1
    assert sample(metrics, "sightline_first_token_seconds_count", tenant="e2e") >= 1
    kept = sum(1 for f in frames if f["detail"]["kept"])
    assert sum(v for labels, v in samples(metrics, "sightline_frames_total")
               if labels.get("decision") == "kept" and labels.get("tenant") == "e2e") + sum(
        v for labels, v in samples(metrics, "sightline_frames_kept_later_total")
        if labels.get("tenant") == "e2e") >= kept
    [looked] = [e["detail"]["recall"] for e in events if e["kind"] == "context"]
    assert sample(metrics, "sightline_recalls_total", tenant="e2e", outcome=looked) >= 1
    assert sample(metrics, "sightline_recall_seconds_count", tenant="e2e") >= (looked != "off")
    assert "sightline_writer_queue_rows" in metrics


async def scrape(worker: Worker) -> str:
    import aiohttp

    port = worker.env["SIGHTLINE_METRICS_PORT"]
    async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        return await response.text()


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of one metric in Prometheus' text format, with its labels."""
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.labels, s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name]


def sample(text: str, name: str, **labels: str) -> float:
    return sum(v for found, v in samples(text, name)
               if all(found.get(k) == want for k, want in labels.items()))


def test_the_image_healthcheck_reaches_the_worker(worker: Worker, free_tcp_port: int) -> None:
    """The Dockerfile's HEALTHCHECK command, run as the image runs it, against the live worker;
    and against a port where nothing listens, where it must fail."""
    line = next(line for line in (REPO / "Dockerfile").read_text().splitlines()
                if line.strip().startswith("CMD python -c"))
    _cmd, _python, _c, code = shlex.split(line.strip())
    ok = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=10,
                        env={"SIGHTLINE_HEALTH_PORT": worker.env["SIGHTLINE_HEALTH_PORT"]})
    assert ok.returncode == 0, ok.stderr
    down = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=10,
                          env={"SIGHTLINE_HEALTH_PORT": str(free_tcp_port)})
    assert down.returncode != 0


ERROR_ON_SCREEN = "ModuleNotFoundError: No module named 'requests'"


def failing_terminal(t: float) -> Desk:
    """Code on screen, and from 3 s on an error line under it."""
    desk = Desk(width=1280, height=720, pointer=None, cursor_on=False)
    desk.font = ImageFont.load_default(size=20)
    if t >= 3:
        desk.lines = [*desk.lines, "", ERROR_ON_SCREEN]
    return desk


async def test_the_live_screen_becomes_a_timeline_and_errors_reach_the_room(
    livekit: LiveKitServer, worker: Worker, e2e_database_url: str, tmp_path: Path,
) -> None:
    """What appears on a live screen share is read by the worker, written to the user's screen
    timeline in Postgres, and a new error is published to the room on `sightline.screen`."""
    video = tmp_path / "failing.webm"
    write_recording(video, failing_terminal, seconds=8, fps=5)
    error = ERROR_ON_SCREEN
    user = User(livekit, "e2e-screen-memory", agent_name=AGENT_NAME,
                metadata={"tenant": "e2e"}, video=video)
    await user.join("user-5")
    await user.wait_for_agent()
    await user.publish_video(rtc.TrackSource.SOURCE_SCREENSHARE, fps=5)
    try:
        signals = [json.loads(p) for p in await user.wait_for_data("sightline.screen")]
    except TimeoutError:
        raise AssertionError(
            f"no screen signal reached the room:\n{worker.log_text()[-3000:]}") from None
    finally:
        await user.leave()
    assert signals[0]["type"] == "screen_error" and signals[0]["version"] == 1
    assert signals[0]["headline"].endswith(error)  # as shown: the editor's line number first
    assert len({s["fingerprint"] for s in signals}) == len(signals)  # each error once
    conn = await asyncpg.connect(e2e_database_url)
    try:
        rows = []
        for _ in range(50):  # the screen writer flushes in the background
            rows = await conn.fetch(
                "SELECT text, is_error FROM screen_events WHERE tenant = 'e2e' AND"
                " user_id = 'user-5' ORDER BY t")
            if any(r["is_error"] for r in rows):
                break
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    assert any("import asyncio" in r["text"] for r in rows)  # the screen as the share began
    [error_row] = [r["text"] for r in rows if r["is_error"]]
    assert error_row.endswith(error)


async def test_a_camera_is_not_taken_for_the_screen(
    livekit: LiveKitServer, worker: Worker, model_server: tuple[ScriptedModelServer, Replies]
) -> None:
    server, replies = model_server
    replies.next = sure("(scripted) Please share your screen.")
    seen = len(server.requests)
    user = new_user(livekit, "e2e-camera")
    await user.join("user-2")
    await user.wait_for_agent()
    await user.publish_video(rtc.TrackSource.SOURCE_CAMERA, fps=5)
    await asyncio.sleep(3)
    await user.say("What is on my screen?")
    assert await user.wait_for_reply() == "(scripted) Please share your screen."
    await user.leave()

    request = turn_requests(server, seen)[0]
    assert request.image_count == 0
    assert "sharing a camera, not a screen" in request.text
    events = await session_events(worker, user)
    assert not [e for e in events if e["kind"] == "frame"], "camera frames must not be sampled"


async def test_live_assist_reaches_the_room_before_the_answer(
    livekit: LiveKitServer, worker: Worker, model_server: tuple[ScriptedModelServer, Replies],
    e2e_database_url: str,
) -> None:
    """A typed question gets its assist message (intent, the tenant's matching article) on
    `sightline.assist` before the answer's text stream opens."""
    _server, replies = model_server
    replies.next = sure("(scripted) Reset the VPN client from Settings.")
    settings = Settings.from_env(worker.env)
    db = await Database.open(e2e_database_url, settings.data_dir, connections=1)
    try:
        embedder = make_embedder(settings, await stored_models(db.pool, "e2e"))
        await KnowledgeBase(db.pool, embedder).ingest_chunks("e2e", "help/vpn-reset.md", [(
            "vpn#1", "VPN client error 809: reset the VPN client from Settings, Network.")])
        await embedder.aclose()
    finally:
        await db.close()
    user = new_user(livekit, "e2e-assist")
    await user.join("user-6")
    await user.wait_for_agent()
    await user.say("Why does the VPN client show error 809?")
    reply = await user.wait_for_reply()
    [payload] = await user.wait_for_data(ASSIST_TOPIC)
    await user.leave()
    assert reply == "(scripted) Reset the VPN client from Settings."
    message = AssistMessage.model_validate_json(payload)
    assert message.text == "Why does the VPN client show error 809?" and message.final
    assert message.input == "typed"
    assert message.intent is not None and message.intent.name == "troubleshoot_error"
    assert [s.source for s in message.suggestions] == ["help/vpn-reset.md"]
    arrived = user.data_at[[t for t, _ in user.data].index(ASSIST_TOPIC)]
    assert arrived < user.replies_started[0], "the assist message comes before the answer"
    events = await session_events(worker, user)
    [recorded] = [e["detail"] for e in events if e["kind"] == "assist"]
    assert recorded == json.loads(payload)


async def test_a_user_leaving_mid_turn_ends_the_session_cleanly(
    livekit: LiveKitServer, worker: Worker, model_server: tuple[ScriptedModelServer, Replies]
) -> None:
    server, replies = model_server
    replies.next = sure("(scripted) too late", delay_s=3)
    seen = len(server.requests)
    user = new_user(livekit, "e2e-leaves")
    await user.join("user-3")
    await user.wait_for_agent()
    replies.asked.clear()
    await user.say("Are you there?")
    await asyncio.wait_for(replies.asked.wait(), 15)
    assert len(turn_requests(server, seen)) == 1, "the turn must have reached the model"
    await user.leave()  # while the model is still thinking

    events = await session_events(worker, user)
    calls = [e for e in events if e["kind"] in ("model_call", "model_error")
             and e["detail"].get("purpose") != "embedding"]
    assert len(calls) == 1, "the interrupted call is still in the ledger (and no memory update)"
    assert events[-1]["kind"] == "summary"
    assert worker.proc.poll() is None, "the worker survives a user leaving mid-turn"


async def test_a_question_sent_again_to_the_rooms_next_agent_is_answered_once_and_stored_once(
    livekit: LiveKitServer, worker: Worker, model_server: tuple[ScriptedModelServer, Replies],
    e2e_database_url: str,
) -> None:
    """The console sends a question it has no answered receipt for to the agent that joins
    the room next (in place of a worker that died). That agent's session loaded what the
    earlier one stored: a question stored unanswered (here its session ended while the model
    was still answering) is asked again at the conversation's end, once in the model's request
    and once in Postgres; one stored answered (its receipt lost) is confirmed answered and not
    answered again."""
    server, replies = model_server
    question, answer = "Why does the VPN keep dropping?", "(scripted) Its keep-alive is off."
    room, identity = "e2e-asked-again", "user-asked-again"

    async def query(sql: str) -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(e2e_database_url)
        try:
            return [tuple(r) for r in await conn.fetch(sql, identity)]
        finally:
            await conn.close()

    async def asked() -> User:
        """The user (back) in the room, the question asked under the page's id."""
        user = new_user(livekit, room)
        await user.join(identity)
        await user.wait_for_agent()
        replies.asked.clear()
        await user.say(question, message_id="page-1")
        return user

    async def left(user: User, sessions: int) -> list[tuple[Any, ...]]:
        """The user gone and the room's `sessions` sessions ended; what the user said."""
        await user.leave()
        deadline = time.monotonic() + 30
        ended = "SELECT id FROM sessions WHERE user_id = $1 AND ended_at IS NOT NULL"
        while len(await query(ended)) < sessions:
            assert time.monotonic() < deadline, worker.log_text()[-4000:]
            await asyncio.sleep(0.2)
        return await query("SELECT role, content FROM messages WHERE user_id = $1 ORDER BY id")

    replies.next = sure("(scripted) too late", delay_s=5)
    first = await asked()
    await asyncio.wait_for(replies.asked.wait(), 15)
    await eventually(lambda: receipts(first) == [{"message": "page-1"}], receipts(first))
    assert await left(first, 1) == [("user", question)]  # read, not answered
    assert receipts(first) == [{"message": "page-1"}]

    replies.next = sure(answer)
    seen = len(server.requests)
    second = await asked()
    assert await second.wait_for_reply() == answer
    await eventually(lambda: len(receipts(second)) == 2, f"answered: {receipts(second)}")
    [request] = turn_requests(server, seen)
    assert request.text.count(question) == 1, request.text
    assert await left(second, 2) == [("user", question), ("assistant", answer)]

    seen = len(server.requests)
    third = await asked()
    await eventually(lambda: len(receipts(third)) == 2, f"receipts: {receipts(third)}")
    await asyncio.sleep(1)
    assert await left(third, 3) == [("user", question), ("assistant", answer)]
    assert receipts(third) == [{"message": "page-1"}, {"message": "page-1", "answered": True}]
    assert turn_requests(server, seen) == [], "answered before: not asked again"


async def test_sigterm_drains_the_running_session_and_flushes_its_log(
    livekit: LiveKitServer, worker: Worker, model_server: tuple[ScriptedModelServer, Replies]
) -> None:
    _server, replies = model_server
    replies.next = sure("(scripted) still here")
    user = new_user(livekit, "e2e-drain")
    await user.join("user-4")
    await user.wait_for_agent()
    await user.say("Hello?")
    assert await user.wait_for_reply() == "(scripted) still here"

    worker.proc.send_signal(15)
    await asyncio.sleep(2)
    assert worker.proc.poll() is None, "a draining worker waits for its running session"
    await user.leave()
    assert await asyncio.to_thread(worker.proc.wait, 60) == 0
    events = await session_events(worker, user, timeout_s=5)
    assert any(e["kind"] == "model_call" for e in events)
    assert events[-1]["kind"] == "summary"
    assert events[-1]["detail"]["cost_log"].startswith(str(worker.data_dir))
