"""A session is always closed, whatever fails or is cancelled as it opens or closes, and a
worker is healthy only while it is connected to LiveKit.

Protects: a close step that raises still lets the cost summary be written (`failed`, naming
the step) and the parts after it close (agent/session.py `SessionRuntime.close`, agent/worker.py
`OpenedSession`); a session whose record cannot open, or that is cancelled as it opens, leaves
no row open (`SessionRuntime.open`); a live session that fails between its opening and its
shutdown callback, or whose room parts fail to close, still ends with its summary and its row
closed (`run_session`, on a real LiveKit server); the health port answers 503 until the
worker registers and again once its connection is lost (`SightlineServer`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import pytest
from conftest import DEMO_FIXTURE, fresh_database
from worker_fixture import started_worker, worker_env

from agent.config import Settings
from agent.session import SessionRuntime
from agent.wire_format_server import ScriptedModelServer
from agent.worker import build_server
from bench.livekit_harness import (
    API_KEY,
    API_SECRET,
    LiveKitServer,
    User,
    free_port,
    run_livekit_server,
    start_worker,
)
from memory.db import Database
from memory.spill_files import event_log_path

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")
KEYS = {"gemini_api_key": "test-key", "anthropic_api_key": "test-key", "embeddings": "wordllama"}


def _summary(path: Path) -> dict[str, Any] | None:
    """The cost log's summary, None while it has none (it may not exist yet, be empty, or have
    its last line part written)."""
    lines = path.read_text().splitlines() if path.exists() else []
    try:
        last = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None
    return last["detail"] if last is not None and last["kind"] == "summary" else None


async def test_a_close_step_that_fails_still_writes_the_summary(
    settings: Settings, db: Database, caplog: pytest.LogCaptureFixture,
) -> None:
    """The frame archive's close raises: the steps after it still run (the model's provider
    clients close), the summary is written, to the cost log and the row, as `failed` naming
    the step, and the failure is one log line without a traceback."""
    caplog.set_level(logging.INFO, "sightline.session")
    runtime = await SessionRuntime.open(settings.with_overrides(**KEYS), db, tenant="acme",
                                        user_id="u1", source="live")

    async def disk_full() -> int:
        raise OSError("disk full while closing the frame archive")

    runtime.screen_memory.aclose = disk_full  # type: ignore[method-assign]
    model_closed: list[bool] = []
    close_model = runtime.model.aclose

    async def close_and_note() -> None:
        await close_model()
        model_closed.append(True)

    runtime.model.aclose = close_and_note  # type: ignore[method-assign]
    summary = await runtime.close()

    error = "closing its screen memory: OSError: disk full while closing the frame archive"
    assert (summary["outcome"], summary["error"]) == ("failed", error)
    assert _summary(runtime.record.events.path) == summary
    row = await db.pool.fetchrow("SELECT ended_at, summary FROM sessions WHERE id = $1",
                                 runtime.session_id)
    assert row["ended_at"] is not None and json.loads(row["summary"])["error"] == error
    assert model_closed == [True]
    [failed] = [r for r in caplog.records if "closing its screen memory failed" in r.message]
    assert failed.exc_info is None and "\n" not in failed.getMessage()


async def test_a_session_whose_cost_log_cannot_open_leaves_no_row_open(
    settings: Settings, db: Database,
) -> None:
    """The record fails to open after the row was written (its cost log's name is taken by a
    folder): the row is closed as failed, with nothing spent, rather than left open with no
    cost log for anything to close it by."""
    settings = settings.with_overrides(**KEYS)
    session_id = "live_no_log"
    settings.costs_dir.mkdir(parents=True, exist_ok=True)
    event_log_path(settings.costs_dir, session_id).mkdir()
    with pytest.raises(IsADirectoryError):
        await SessionRuntime.open(settings, db, tenant="acme", user_id="u1", source="live",
                                  session_id=session_id)
    row = await db.pool.fetchrow("SELECT ended_at, total_cost_usd, summary FROM sessions"
                                 " WHERE id = $1", session_id)
    assert row is not None and row["ended_at"] is not None and row["total_cost_usd"] == 0
    summary = json.loads(row["summary"])
    assert summary["outcome"] == "failed" and summary["error"].startswith("IsADirectoryError")


async def test_a_session_cancelled_as_it_opens_leaves_no_row_open(
    settings: Settings, db: Database,
) -> None:
    """Cancelled while it reads the tenant's spend today (livekit-agents cancels an entrypoint
    still running 15 s after the job's shutdown): no row is left open."""
    settings = settings.with_overrides(**KEYS, tenant_budget_usd=5.0)
    holder = await asyncpg.connect(settings.database_url)
    try:
        lock = holder.transaction()
        await lock.start()
        await holder.execute("LOCK TABLE cost_events IN ACCESS EXCLUSIVE MODE")
        opening = asyncio.create_task(SessionRuntime.open(
            settings, db, tenant="acme", user_id="u1", source="live"))
        for _ in range(600):  # until the spend query waits for the lock
            if await db.pool.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the session never read the tenant's spend")
        opening.cancel()
        await lock.rollback()
        with pytest.raises(asyncio.CancelledError):
            await opening
    finally:
        await holder.close()
    assert await db.pool.fetchval("SELECT count(*) FROM sessions WHERE ended_at IS NULL") == 0


# `sightline start` with faults injected by room name: the speech engines fail to build (after
# the runtime opened, before the shutdown callback), the agent session fails to start (after
# the shutdown callback), or the chat inbox fails to close
FAULTY_WORKER = """
import sys
from agent import chat_inbox, session
from agent.cli import main
from livekit.agents import AgentSession, get_job_context

_close_inbox = chat_inbox.ChatInbox.aclose
_agent_session = session.SessionRuntime.agent_session
_start = AgentSession.start

def no_speech(self):
    if "speech" in get_job_context().room.name:
        raise RuntimeError("injected fault: the speech engines failed to build")
    return _agent_session(self)

async def inbox_fails(self):
    await _close_inbox(self)
    if "inbox" in get_job_context().room.name:
        raise OSError("injected fault: the chat inbox failed to close")

async def start_fails(self, *args, **kwargs):
    if "start" in get_job_context().room.name:
        raise RuntimeError("injected fault: the agent session failed to start")
    return await _start(self, *args, **kwargs)

session.SessionRuntime.agent_session = no_speech
chat_inbox.ChatInbox.aclose = inbox_fails
AgentSession.start = start_fails
sys.exit(main())
"""


@pytest.fixture(scope="module")
def livekit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKitServer]:
    with run_livekit_server(tmp_path_factory.mktemp("livekit")) as server:
        yield server


async def _eventually(value: Callable[[], T], timeout_s: float = 60) -> T:
    """`value()` once it is truthy (a file another process writes)."""
    deadline = time.monotonic() + timeout_s
    while not (found := value()):
        assert time.monotonic() < deadline, f"nothing came within {timeout_s} s"
        await asyncio.sleep(0.1)
    return found


@pytest.mark.e2e
async def test_a_live_session_that_fails_opening_or_closing_still_writes_its_summary(
    livekit: LiveKitServer, postgres_admin_url: str, tmp_path: Path,
) -> None:
    """A live session whose speech engines fail to build (its runtime open, its shutdown
    callback not registered yet) is closed as it fails: its summary says so and its row and
    pools are closed. One whose agent session fails to start (its shutdown callback
    registered) ends its job, its summary and row `failed` with the error. Either failure is
    one log line naming the room, without a traceback.
    One whose chat inbox fails to close as the user leaves still reaches its runtime's close:
    its summary is written, `failed`, naming the inbox."""
    launcher = tmp_path / "faulty_worker.py"
    launcher.write_text(FAULTY_WORKER)
    env = {
        "LIVEKIT_URL": livekit.ws_url, "LIVEKIT_API_KEY": API_KEY,
        "LIVEKIT_API_SECRET": API_SECRET, "SIGHTLINE_AGENT_NAME": "sightline-lifecycle",
        "GOOGLE_API_KEY": "lifecycle-fake-key", "ANTHROPIC_API_KEY": "lifecycle-fake-key",
        "DATABASE_URL": await fresh_database(postgres_admin_url, "lifecycle"),
        "SIGHTLINE_DATA_DIR": str(tmp_path / "data"), "SIGHTLINE_MAX_SESSIONS": "2",
        "SIGHTLINE_HEALTH_PORT": str(free_port()), "SIGHTLINE_WEBHOOK_PORT": "0",
        "SIGHTLINE_SCREEN_TEXT": "off", "SIGHTLINE_EMBEDDINGS": "wordllama",
        "PYTHONPATH": str(REPO),
    }
    worker = await asyncio.to_thread(start_worker, tmp_path, env, name="worker-lifecycle",
                                     launcher=[sys.executable, str(launcher)])
    costs = tmp_path / "data" / "costs"
    users = {kind: User(livekit, f"lifecycle-{kind}", agent_name="sightline-lifecycle",
                        metadata={"tenant": "lifecycle"}, video=DEMO_FIXTURE / "screen.webm")
             for kind in ("speech", "start", "inbox")}
    summaries: dict[str, dict[str, Any]] = {}
    seen: set[Path] = set()
    try:
        for kind, user in users.items():
            await user.join(f"user-{kind}")
            [log] = await _eventually(lambda: set(costs.glob("live_*.jsonl")) - seen)
            seen.add(log)
            if kind == "inbox":
                await user.wait_for_agent()
                await user.leave()
            summaries[kind] = await _eventually(partial(_summary, log))
    finally:
        for user in users.values():
            await user.leave()
        status = await worker.astop(60)
        if worker.proc.poll() is None:
            worker.proc.kill()
    assert status == 0, worker.log_text()[-4000:]
    assert summaries["speech"]["outcome"] == "failed"
    assert summaries["speech"]["error"] == ("RuntimeError: injected fault: the speech engines "
                                            "failed to build")
    assert summaries["start"]["outcome"] == "failed"
    assert summaries["start"]["error"] == ("RuntimeError: injected fault: the agent session "
                                           "failed to start")
    assert summaries["inbox"]["outcome"] == "failed"
    assert summaries["inbox"]["error"] == ("closing its chat inbox: OSError: injected fault: "
                                           "the chat inbox failed to close")
    log_text = worker.log_text()
    assert "closing its chat inbox failed: OSError: injected fault" in log_text
    records = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    failed = {r["message"].split("(room ")[1].split(")")[0]: r for r in records
              if r["level"] == "ERROR" and "failed to start" in r["message"]}
    assert failed.keys() == {"lifecycle-speech", "lifecycle-start"}, failed
    assert failed["lifecycle-speech"]["message"].endswith(
        "(room lifecycle-speech) failed to start: RuntimeError: injected fault: the speech "
        "engines failed to build")
    assert failed["lifecycle-start"]["message"].endswith(
        "(room lifecycle-start) failed to start: RuntimeError: injected fault: the agent "
        "session failed to start")
    assert "Traceback" not in log_text and not any("exc_info" in r for r in records)
    conn = await asyncpg.connect(env["DATABASE_URL"])
    try:
        assert await conn.fetchval("SELECT count(*) FROM sessions WHERE ended_at IS NULL") == 0
        assert await conn.fetchval("SELECT count(*) FROM sessions") == 3
        stored = await conn.fetchval("SELECT summary FROM sessions WHERE room = $1",
                                     "lifecycle-start")
        assert json.loads(stored)["outcome"] == "failed"
    finally:
        await conn.close()


async def _health(port: int) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for _ in range(100):  # until the server listens
            try:
                async with session.get(f"http://127.0.0.1:{port}/") as response:
                    return response.status, (await response.text()).strip()
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
    raise AssertionError(f"nothing answered on the health port {port}")


async def _health_becomes(port: int, wanted: tuple[int, str], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while (answer := await _health(port)) != wanted:
        assert time.monotonic() < deadline, f"the health check stayed {answer}, not {wanted}"
        await asyncio.sleep(0.2)


@pytest.mark.e2e
async def test_health_says_ok_only_while_connected_to_livekit(tmp_path: Path) -> None:
    """Pointed at a LiveKit server that is not there, the worker's health port says 503 (not
    registered) while it retries; once it registers, OK; when the server dies, 503 again
    (livekit-agents' own check said OK for the first ~2 min of retries, and while
    reconnecting)."""
    nowhere_port, health_port = free_port(), free_port()
    (tmp_path / "livekit").mkdir()
    with run_livekit_server(tmp_path / "livekit") as livekit:
        settings = Settings.from_env({
            "SIGHTLINE_DATA_DIR": str(tmp_path / "data"), "LIVEKIT_URL": livekit.ws_url,
            "LIVEKIT_API_KEY": API_KEY, "LIVEKIT_API_SECRET": API_SECRET,
            "SIGHTLINE_HEALTH_PORT": str(health_port), "SIGHTLINE_WEBHOOK_PORT": "0",
            "SIGHTLINE_MAX_SESSIONS": "1", "GOOGLE_API_KEY": "k", "ANTHROPIC_API_KEY": "k",
            "DATABASE_URL": f"postgresql://127.0.0.1:{nowhere_port}/none"})
        unreachable = build_server(settings.with_overrides(
            livekit_url=f"ws://127.0.0.1:{nowhere_port}"))
        running = asyncio.create_task(unreachable.run())
        try:
            await _health_becomes(health_port, (503, "not registered with LiveKit yet"))
            await asyncio.sleep(3)  # a retry or two later: still not OK
            assert await _health(health_port) == (503, "not registered with LiveKit yet")
        finally:
            await unreachable.aclose()
            await asyncio.gather(running, return_exceptions=True)

        server = build_server(settings)
        running = asyncio.create_task(server.run())
        try:
            await _health_becomes(health_port, (200, "OK"))
            assert livekit.process is not None
            livekit.process.crash()
            await _health_becomes(health_port, (503, "connection to LiveKit lost, reconnecting"))
        finally:
            await server.aclose()
            await asyncio.gather(running, return_exceptions=True)


@pytest.mark.e2e
async def test_a_worker_whose_livekit_stays_down_exits_with_status_1_and_one_line(
    tmp_path: Path, migrated_database_url: str,
) -> None:
    """A registered worker whose LiveKit server dies and stays down: once its retries
    (`SIGHTLINE_LIVEKIT_RETRIES`) are used up it exits with status 1 and one line, for its
    supervisor to start it again (livekit-agents' CLI logged a traceback and exited with 0,
    which a restart-on-failure policy takes for a clean stop)."""
    (tmp_path / "livekit").mkdir()
    with run_livekit_server(tmp_path / "livekit") as livekit:
        async with ScriptedModelServer() as models:  # no job reaches the worker
            worker = await started_worker(tmp_path, worker_env(
                livekit, models, agent_name="sightline-stays-down",
                database_url=migrated_database_url, data_dir=tmp_path / "data",
                SIGHTLINE_LIVEKIT_RETRIES="2"))
        assert livekit.process is not None
        livekit.process.crash()
        code = await asyncio.to_thread(worker.proc.wait, 60)
    log = worker.log_text()
    assert code == 1, log[-3000:]
    assert (f"sightline: could not reach LiveKit at {livekit.ws_url} (failed to connect to "
            "livekit after 2 attempts; SIGHTLINE_LIVEKIT_RETRIES=2); the worker exits\n") in log
    assert "Traceback" not in log and "worker failed" not in log
