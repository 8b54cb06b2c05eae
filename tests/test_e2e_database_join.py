"""A live session that opened while Postgres was down joins it once it answers.

A real `sightline start` worker on a real LiveKit server, with a Postgres of this test's own
that it stops and starts: the worker migrated it at start; it is down when the user's session
opens, so the session answers without knowledge; then it is back, and the next question is
answered with the tenant's knowledge, the session having joined the database (the worker's
`Database.unconnected` pool, `agent/database_watch.py`); as it closes it imports its own rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from conftest import DEMO_FIXTURE
from test_database import OwnPostgres
from test_e2e_livekit import session_events
from worker_fixture import running_worker, worker_env

from agent.wire_format_server import ScriptedModelServer, ScriptedReply
from bench.livekit_harness import LiveKitServer, User, Worker
from memory.db import Database
from memory.embeddings import WordLlamaEmbedder
from memory.knowledge import KnowledgeBase

pytestmark = pytest.mark.e2e

AGENT_NAME = "sightline-e2e-db-join"
ANSWER = "(scripted) The staging key rotates on Fridays."
FACT = "The staging deploy key rotates every Friday at noon; ask #ops for the new one."


@pytest.fixture(scope="module")
async def postgres(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[OwnPostgres]:
    pg = OwnPostgres(tmp_path_factory.mktemp("join") / "pgdata")
    await pg.start()
    try:
        yield pg
    finally:
        await pg.stop()


@pytest.fixture(scope="module")
async def model_server() -> AsyncIterator[ScriptedModelServer]:
    async with ScriptedModelServer(replies=lambda _: ScriptedReply(
            text=f"[[confidence: 0.95]] {ANSWER}")) as server:  # scripted
        yield server


@pytest.fixture(scope="module")
async def worker(livekit: LiveKitServer, model_server: ScriptedModelServer,
                 postgres: OwnPostgres, tmp_path_factory: pytest.TempPathFactory,
                 ) -> AsyncIterator[Worker]:
    workdir = tmp_path_factory.mktemp("worker-db-join")
    async with running_worker(workdir, worker_env(
            livekit, model_server, agent_name=AGENT_NAME, database_url=postgres.url,
            data_dir=workdir / "data", SIGHTLINE_EMBEDDINGS="wordllama",
            SIGHTLINE_MEMORY_UPDATES="off", SIGHTLINE_DATABASE_RETRY_S="0.5",
            SIGHTLINE_MAX_SESSIONS="4")) as worker:
        yield worker


async def test_a_live_session_opened_while_postgres_is_down_joins_it_when_it_is_back(
    livekit: LiveKitServer, worker: Worker, model_server: ScriptedModelServer,
    postgres: OwnPostgres,
) -> None:
    db = await Database.open(postgres.url, worker.data_dir, migrate=False, connections=1)
    try:
        await KnowledgeBase(db.pool, WordLlamaEmbedder()).ingest_chunks(
            "e2e-db", "ops/keys.md", [("keys#1", FACT)])
    finally:
        await db.close()
    await postgres.stop()

    user = User(livekit, "e2e-db-join", agent_name=AGENT_NAME, metadata={"tenant": "e2e-db"},
                video=DEMO_FIXTURE / "screen.webm")
    await user.join("user-db")
    await user.wait_for_agent()
    await user.say("When does the staging deploy key rotate?")
    first = await user.wait_for_reply()
    await postgres.start()
    deadline = time.monotonic() + 30
    while "the database answers again" not in worker.log_text():
        assert time.monotonic() < deadline, worker.log_text()[-4000:]
        await asyncio.sleep(0.2)
    await user.say("And when does the staging deploy key rotate again?")
    second = await user.wait_for_reply()
    await user.leave()

    assert first == second == ANSWER
    answers = [r for r in model_server.requests if r.purpose == "answer"]
    assert len(answers) == 2
    assert FACT not in answers[0].text and FACT in answers[1].text
    events = await session_events(worker, user)
    kinds = [e["kind"] for e in events]
    assert kinds[:2] == ["session", "no_database"] and kinds.count("database_joined") == 1
    contexts = [e["detail"] for e in events if e["kind"] == "context"]
    assert [[k["source"] for k in c["knowledge"]] for c in contexts] == [[], ["ops/keys.md"]]
    # the second question's lookup started as the inbox handed it on (the first had none)
    assert [c["recall_prefetched"] for c in contexts] == [False, True]
    assert events[-1]["detail"]["database"]["joined_after_s"] > 0
    assert "Traceback" not in worker.log_text()
    # it imported what it wrote to disk as it closed (after its summary, which marks it
    # closed for the import, and before its last line): nothing waits for another session
    session_id = events[0]["session_id"]
    deadline = time.monotonic() + 30
    while f"session {session_id} ended:" not in worker.log_text():
        assert time.monotonic() < deadline, worker.log_text()[-4000:]
        await asyncio.sleep(0.2)
    assert not list((worker.data_dir / "costs").glob(f"{session_id}.*-spill.jsonl"))
    conn = await asyncpg.connect(postgres.url)
    try:
        ledger = await conn.fetchval(
            "SELECT count(*) FROM cost_events WHERE session_id = $1", session_id)
        said = await conn.fetch(
            "SELECT role, content FROM messages WHERE session_id = $1 ORDER BY id", session_id)
    finally:
        await conn.close()
    assert ledger == len(events) - 1
    assert [(m["role"], m["content"]) for m in said][::2] == [
        ("user", "When does the staging deploy key rotate?"),
        ("user", "And when does the staging deploy key rotate again?")]
