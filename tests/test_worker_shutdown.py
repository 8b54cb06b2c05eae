"""A worker told to stop exits: an idle job thread still starting when the worker closes does
not keep the close waiting, and a thread that never ends does not keep the process alive."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import DEMO_FIXTURE, fresh_database
from livekit.agents import JobExecutorType
from livekit.agents.ipc.proc_pool import ProcPool
from test_left_open import cost_log
from test_left_spills import offline_session

from agent.config import Settings
from agent.worker import SightlineServer
from bench.livekit_harness import (
    API_KEY,
    API_SECRET,
    LiveKitServer,
    User,
    free_port,
    run_livekit_server,
    start_worker,
)
from memory.migrate import apply_migrations

REPO = Path(__file__).resolve().parents[1]
DRAIN_TIMEOUT_S = 3


async def _no_job(_: object) -> None:
    raise AssertionError("no job is launched here")


def _wired_thread_pool(prewarm: Callable[[object], None], *, initialize_timeout: float,
                       ) -> ProcPool:
    """A pool of job threads with one idle thread, wired as the server wires its own (the
    server itself without settings or LiveKit)."""
    pool = ProcPool(
        initialize_process_fnc=prewarm, job_entrypoint_fnc=_no_job, session_end_fnc=None,
        simulation_end_fnc=None, num_idle_processes=1, initialize_timeout=initialize_timeout,
        close_timeout=2, session_end_timeout=2, inference_executor=None,
        job_executor_type=JobExecutorType.THREAD, mp_ctx=multiprocessing.get_context("spawn"),
        memory_warn_mb=0, memory_limit_mb=0, http_proxy=None, loop=asyncio.get_running_loop())
    server = SightlineServer.__new__(SightlineServer)
    server._proc_pool = pool
    return pool


def _assert_job_threads_end() -> None:
    """An executor is closed once its thread has signalled its end, a moment before it ends."""
    for thread in [t for t in threading.enumerate() if t.name == "job_thread_runner"]:
        thread.join(10)
        assert not thread.is_alive(), "a job thread outlived the pool"


async def test_a_pool_closed_while_an_idle_thread_initializes_closes() -> None:
    """The race of a loaded run's SIGTERM (#13): the pool was warming an idle thread when the
    worker closed it. livekit-agents 1.8.9 cancels that thread's initialization, and its
    executor then never reads the thread's answer to the shutdown request: the close waited
    forever. Through the server's wiring it closes once the thread has answered."""
    started = threading.Event()
    release = threading.Event()

    def slow_prewarm(_: object) -> None:  # the job thread's initialization, held open
        started.set()
        release.wait(30)

    pool = _wired_thread_pool(slow_prewarm, initialize_timeout=30)
    starting = asyncio.create_task(pool.start())
    try:
        assert await asyncio.to_thread(started.wait, 10), "the idle thread never started"
        closing = asyncio.create_task(pool.aclose())
        await asyncio.sleep(0.2)  # the pool cancels the initialization, asks the thread to stop
        release.set()
        await asyncio.wait_for(closing, 20)
    finally:
        release.set()
        starting.cancel()
    _assert_job_threads_end()


@pytest.mark.parametrize("when", ["as start finishes", "while start runs"])
async def test_a_warm_up_cancelled_around_its_start_still_closes(when: str) -> None:
    """The race at the end of a loaded run (`bench.load`, 1 of ~15 runs of two processes): the
    pool's cancellation of a warm-up landed as the thread's start finished, before the thread
    was told to initialize; closing then sent `ShutdownRequest` as the thread's first message,
    the thread died on livekit-agents' assertion, and the worker hung until its exit deadline
    (status 1). Through the server's wiring the thread is initialized, then shut down, and
    every thread ends without a traceback."""
    died: list[str] = []
    default_hook = threading.excepthook
    threading.excepthook = lambda args: died.append(f"{args.thread}: {args.exc_value!r}")
    pool = _wired_thread_pool(lambda _: None, initialize_timeout=10)
    cancelled: list[Any] = []
    going_on: list[asyncio.Future[None]] = []

    def cancel_the_first_warm_up(executor: Any) -> None:
        if cancelled:
            return
        cancelled.append(executor)
        start = executor.start

        async def start_then_cancelled() -> None:
            if when == "as start finishes":
                await start()
            else:  # the pool's wait ends while the start goes on (it is shielded)
                going_on.append(asyncio.ensure_future(start()))
                await asyncio.sleep(0)
            raise asyncio.CancelledError

        executor.start = start_then_cancelled

    pool.on("process_created", cancel_the_first_warm_up)  # after the server's own wiring
    try:
        await asyncio.wait_for(pool.start(), 20)  # a second warm-up becomes the idle thread
        await asyncio.wait_for(pool.aclose(), 20)
        _assert_job_threads_end()
    finally:
        threading.excepthook = default_hook
    assert cancelled and cancelled[0].started
    assert died == []


STUCK_THREAD = """
import logging, threading
from agent.worker import exit_if_still_running
logging.basicConfig()
threading.Thread(target=threading.Event().wait, name="job_thread_runner").start()  # never ends
exit_if_still_running(0.5)
"""


def test_a_thread_that_never_ends_does_not_keep_the_worker_alive() -> None:
    """Job threads are not daemons and cannot be killed: past the deadline the process ends
    anyway, saying which threads were still running, with a status that is not success."""
    done = subprocess.run([sys.executable, "-c", STUCK_THREAD], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "the worker did not exit within 0.5 s of shutting down" in done.stderr
    assert "job_thread_runner at threading.py" in done.stderr  # where it is stuck
    assert "exiting with status 1" in done.stderr


@pytest.fixture(scope="module")
def livekit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKitServer]:
    with run_livekit_server(tmp_path_factory.mktemp("livekit")) as server:
        yield server


async def _worker_env(livekit: LiveKitServer, postgres_admin_url: str, tmp_path: Path,
                      name: str, **settings: str) -> dict[str, str]:
    """A `sightline start` worker's environment, agent `sightline-<name>`, on a database of its
    own, without screen reading or webhooks; `settings` add to it."""
    return {
        "LIVEKIT_URL": livekit.ws_url, "LIVEKIT_API_KEY": API_KEY,
        "LIVEKIT_API_SECRET": API_SECRET, "SIGHTLINE_AGENT_NAME": f"sightline-{name}",
        "GOOGLE_API_KEY": f"{name}-fake-key", "ANTHROPIC_API_KEY": f"{name}-fake-key",
        "DATABASE_URL": await fresh_database(postgres_admin_url, name),
        "SIGHTLINE_DATA_DIR": str(tmp_path / "data"),
        "SIGHTLINE_HEALTH_PORT": str(free_port()), "SIGHTLINE_WEBHOOK_PORT": "0",
        "SIGHTLINE_SCREEN_TEXT": "off", **settings,
    }


@pytest.mark.e2e
async def test_sigterm_while_job_threads_warm_up_ends_the_worker(
    livekit: LiveKitServer, postgres_admin_url: str, tmp_path: Path,
) -> None:
    """`sightline start`, its job threads each taking 8 s to warm up: it registers once the
    first ones are warm (livekit-agents waits for the rest 12 s at most) and is sent SIGTERM
    right then, with threads still warming. It drains (no sessions) and exits, with success and
    without a thread left unanswered. A session that ran without the database left its row in
    a spill file in the worker's data directory, and no session opened since: the worker
    imports it before it exits (its disk may go with it)."""
    env = await _worker_env(
        livekit, postgres_admin_url, tmp_path, "stop",
        # six threads, warmed at most four at a time: some still warm when it registers
        SIGHTLINE_MAX_SESSIONS="6", SIGHTLINE_FAULT_DIR=str(tmp_path),
        SIGHTLINE_FAULT_WARMUP_S="8", SIGHTLINE_EMBEDDINGS="wordllama")
    left = await offline_session(Settings.from_env(env))
    worker = await asyncio.to_thread(
        start_worker, tmp_path, env, name="worker-stop",
        launcher=[sys.executable, str(REPO / "tests" / "fault_worker.py")])
    try:
        status = await asyncio.to_thread(worker.stop, 60)
    finally:
        if worker.proc.poll() is None:
            worker.proc.kill()
    log = worker.log_text()
    closing = log[:log.index('"shutting down worker"')]
    assert closing.count('"initializing job runner"') > closing.count('"job runner initialized"'), \
        "no job thread was warming when the worker closed: the race was not reproduced"
    assert status == 0, log[-4000:]
    assert "did not ack shutdown" not in log
    assert "did not exit within" not in log
    assert "imported 1 rows from 1 spill files before exiting" in log
    conn = await asyncpg.connect(env["DATABASE_URL"])
    try:
        assert await conn.fetchval("SELECT tenant FROM sessions WHERE id = $1", left) == "acme"
    finally:
        await conn.close()


@pytest.mark.e2e
async def test_a_drain_past_its_timeout_ends_the_running_session_and_writes_its_log(
    livekit: LiveKitServer, postgres_admin_url: str, tmp_path: Path,
) -> None:
    """SIGHTLINE_DRAIN_TIMEOUT_S bounds the wait for sessions after SIGTERM: a user who stays
    is waited for that long, then the session is ended, its log closed with its summary, and
    the worker exits with success. And as it started, the worker closed the session a killed
    worker of this host had left open in its data directory."""
    env = await _worker_env(livekit, postgres_admin_url, tmp_path, "drain",
                            SIGHTLINE_MAX_SESSIONS="2",
                            SIGHTLINE_DRAIN_TIMEOUT_S=str(DRAIN_TIMEOUT_S))
    killed = await asyncio.create_subprocess_exec("true")
    await killed.wait()  # the earlier worker: its process id names no process now
    conn = await asyncpg.connect(env["DATABASE_URL"])
    try:
        await apply_migrations(conn)  # as the killed worker had
        await conn.execute("INSERT INTO sessions (id, tenant, room, source) VALUES"
                           " ('live_killed', 'drain', 'r', 'live')")
    finally:
        await conn.close()
    cost_log(Settings.from_env(env), "live_killed", socket.gethostname(), killed.pid)
    worker = await asyncio.to_thread(start_worker, tmp_path, env, name="worker-drain")
    user = User(livekit, "drain-timeout", agent_name="sightline-drain",
                metadata={"tenant": "drain"}, video=DEMO_FIXTURE / "screen.webm")
    costs = tmp_path / "data" / "costs"
    try:
        await user.join("user-drain")
        await user.wait_for_agent()
        for _ in range(300):  # the session is open once its log is
            if list(costs.glob("live_*.jsonl")):
                break
            await asyncio.sleep(0.1)
        started = time.monotonic()
        status = await asyncio.to_thread(worker.stop, 120)
        took = time.monotonic() - started
    finally:
        await user.leave()
        if worker.proc.poll() is None:
            worker.proc.kill()
    log = worker.log_text()
    assert status == 0, log[-4000:]
    assert "drain timed out" in log
    assert took >= DRAIN_TIMEOUT_S, "the worker did not wait for the running session"
    [session_log] = [p for p in costs.glob("live_*.jsonl") if p.stem != "live_killed"]
    assert json.loads(session_log.read_text().splitlines()[-1])["kind"] == "summary"
    assert "closed 1 sessions a killed worker left open here" in log
    conn = await asyncpg.connect(env["DATABASE_URL"])
    try:
        assert await conn.fetchval("SELECT summary->>'outcome' FROM sessions"
                                   " WHERE id = 'live_killed'") == "abandoned"
    finally:
        await conn.close()
