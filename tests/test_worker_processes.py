"""A worker of several processes (`SIGHTLINE_WORKER_PROCESSES`), on a real LiveKit server.

`sightline start` with 2 processes registers twice with LiveKit and splits its sessions
between them; its health port answers for both; a process that dies is started again and the
worker goes on; SIGTERM stops them all with status 0; SIGKILL of the parent leaves no process.
The split of the limits, ports and process count is checked on its own first.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psutil
import pytest
from conftest import fresh_database, run_cli
from livekit import rtc
from test_cli_inputs import bare_env
from test_e2e_livekit import session_events
from test_fleet import ANSWER, MEMORY_UPDATE, SCREENS
from worker_fixture import started_worker, worker_env

from agent.capacity import Limits
from agent.config import ConfigError, Settings
from agent.wire_format_server import CapturedRequest, ScriptedModelServer, ScriptedReply
from agent.worker_processes import (
    PORT_TAKEN_EXIT,
    ProcessSlot,
    Supervisor,
    WorkerProcess,
    describe_exit,
    metrics_ports,
    process_count,
    process_env,
)
from bench.livekit_harness import LiveKitServer, User, Worker, free_port

AGENT_NAME = "sightline-processes"


@pytest.mark.parametrize(("sessions", "count", "expected"), [
    (30, 2, [15, 15]), (31, 2, [16, 15]), (5, 3, [2, 2, 1]), (1, 1, [1])])
def test_a_workers_limits_are_split_between_its_processes(
        sessions: int, count: int, expected: list[int]) -> None:
    limits = Limits(sessions, 9000.0, 2.0)
    shares = [limits.share(i, count) for i in range(count)]
    assert [s.sessions for s in shares] == expected
    assert sum(s.memory_mb for s in shares) == pytest.approx(9000.0)
    assert sum(s.cores for s in shares) == pytest.approx(2.0)


def test_process_count_is_the_setting_or_a_process_per_core_and_never_above_the_sessions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.worker_processes.usable_cores", lambda: 4.5)
    assert process_count(Settings.from_env({"SIGHTLINE_WORKER_PROCESSES": "0"}), 60) == 4
    assert process_count(Settings.from_env({"SIGHTLINE_WORKER_PROCESSES": "3"}), 60) == 3
    assert process_count(Settings.from_env({"SIGHTLINE_WORKER_PROCESSES": "3"}), 2) == 2
    monkeypatch.setattr("agent.worker_processes.usable_cores", lambda: 0.5)  # a CPU quota
    assert process_count(Settings.from_env({}), 60) == 1


def test_each_process_has_its_own_ports_and_only_the_first_serves_the_webhook() -> None:
    settings = Settings.from_env({"SIGHTLINE_WEBHOOK_PORT": "8082",
                                  "SIGHTLINE_METRICS_PORT": "9100"})
    first = process_env(settings, ProcessSlot(0, 2), "postgresql://db/x")
    second = process_env(settings, ProcessSlot(1, 2), "postgresql://db/x")
    assert (first["SIGHTLINE_WEBHOOK_PORT"], second["SIGHTLINE_WEBHOOK_PORT"]) == ("8082", "0")
    assert (first["SIGHTLINE_METRICS_PORT"], second["SIGHTLINE_METRICS_PORT"]) == ("9100",
                                                                                  "9101")
    off = process_env(Settings.from_env({"SIGHTLINE_METRICS_PORT": "0"}), ProcessSlot(1, 2),
                      "postgresql://db/x")
    assert off["SIGHTLINE_METRICS_PORT"] == "0"
    with pytest.raises(ConfigError, match="METRICS_PORT=65535"):  # a line, not bind's traceback
        metrics_ports(Settings.from_env({"SIGHTLINE_METRICS_PORT": "65535"}), 2)
    assert ProcessSlot.parse("2/3") == ProcessSlot(1, 3) and str(ProcessSlot(1, 3)) == "2/3"
    for bad in ("0/2", "3/2", "x/2", "2"):
        with pytest.raises(argparse.ArgumentTypeError):
            ProcessSlot.parse(bad)


def scripted(monkeypatch: pytest.MonkeyPatch, scripts: dict[int, list[str]]) -> None:
    """Worker processes that run the Python of `scripts[index]` instead of Sightline, one
    script per start (the last one again once they run out), with the settings of each."""
    def command(self: WorkerProcess) -> list[str]:
        runs = scripts[self.slot.index]
        return [sys.executable, "-c", runs.pop(0) if len(runs) > 1 else runs[0]]
    monkeypatch.setattr(WorkerProcess, "command", command)


def test_a_process_gets_a_health_port_picked_afresh_at_each_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    picked = iter(range(20001, 20100))
    monkeypatch.setattr("agent.worker_processes.free_port", lambda: next(picked))
    process = WorkerProcess(ProcessSlot(1, 2), {"DATABASE_URL": "postgresql://db/x"}, "INFO",
                            health=True)
    assert process.start_env()["SIGHTLINE_HEALTH_PORT"] == "20001"
    assert (process.start_env()["SIGHTLINE_HEALTH_PORT"], process.health_port) == ("20002",
                                                                                  20002)
    off = WorkerProcess(ProcessSlot(1, 2), {}, "INFO", health=False)
    assert (off.start_env()["SIGHTLINE_HEALTH_PORT"], off.health_port) == ("0", 0)


async def test_a_process_whose_health_port_was_taken_first_ends_with_one_line(
        tmp_path: Path) -> None:
    """The parent picked the port free; someone bound it before the process started: the
    process says so and ends with PORT_TAKEN_EXIT (started again on another), not with the
    status of a refused setting, which would stop the whole worker."""
    with socket.socket() as holder:
        holder.bind(("", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, out, err = await run_cli(
            "start", "--process", "2/2", "--parent", str(os.getpid()),
            env=bare_env(tmp_path, LIVEKIT_URL="ws://127.0.0.1:9", LIVEKIT_API_KEY="k",
                         LIVEKIT_API_SECRET="s", GOOGLE_API_KEY="processes-fake-key",
                         SIGHTLINE_HEALTH_PORT=str(port), SIGHTLINE_WEBHOOK_PORT="0",
                         DATABASE_URL="postgresql://127.0.0.1:9/x"))
    assert code == PORT_TAKEN_EXIT, (out, err)
    assert "Traceback" not in err
    assert f"worker process 2/2: its health port {port} is taken" in err
    assert not (tmp_path / "data").exists()


SLEEPS = "import time; time.sleep(60)"


async def test_a_process_that_refuses_its_settings_stops_the_worker_with_status_2(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    scripted(monkeypatch, {0: ["raise SystemExit(2)"], 1: [SLEEPS]})
    settings = Settings.from_env({"SIGHTLINE_HEALTH_PORT": "0"})
    supervisor = Supervisor(settings, 2, "postgresql://db/x", "INFO")
    async with asyncio.timeout(30):
        assert await supervisor.run() == 2
    assert supervisor.processes[1].proc is not None
    assert supervisor.processes[1].proc.returncode == -signal.SIGTERM  # told to stop
    assert "worker process 1/2 refused its settings" in capfd.readouterr().err


@pytest.mark.parametrize("ended", [1, PORT_TAKEN_EXIT])
async def test_a_process_that_ends_is_started_again_and_a_stop_ends_them_all(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], ended: int) -> None:
    scripted(monkeypatch, {0: [f"raise SystemExit({ended})", SLEEPS], 1: [SLEEPS]})
    picked = iter(range(20001, 20100))
    monkeypatch.setattr("agent.worker_processes.free_port", lambda: next(picked))
    settings = Settings.from_env({"SIGHTLINE_HEALTH_PORT": str(free_port())})
    supervisor = Supervisor(settings, 2, "postgresql://db/x", "INFO")
    running = asyncio.create_task(supervisor.run())
    deadline = time.monotonic() + 30
    while not re.search(rf"1/2 \(pid \d+\) ended \(status {ended}\) after \d+ s; starting it "
                        r"again in 1 s", capfd.readouterr().err):
        assert time.monotonic() < deadline, "the process's end was not seen"
        await asyncio.sleep(0.1)
    first = supervisor.processes[0].proc
    ports = {p.slot.index: p.health_port for p in supervisor.processes}
    while supervisor.processes[0].proc is first:  # started again, a second later
        assert time.monotonic() < deadline, "the process was not started again"
        await asyncio.sleep(0.1)
    assert supervisor.processes[0].health_port not in (ports[0], ports[1])  # another port
    os.kill(os.getpid(), signal.SIGTERM)  # the worker's stop: passed on to both
    async with asyncio.timeout(30):
        assert await running == 0
    assert all(p.proc is not None and p.proc.returncode == -signal.SIGTERM
               for p in supervisor.processes)


@pytest.mark.parametrize(("count", "scripts", "stopped_at"), [
    (3, {0: [SLEEPS], 1: [SLEEPS], 2: [SLEEPS]}, 2),  # as the worker starts its second
    (2, {0: ["raise SystemExit(1)", SLEEPS], 1: [SLEEPS]}, 3),  # as the first is started again
], ids=["first-start", "restart"])
async def test_a_stop_signal_while_a_process_is_being_started_reaches_it(
        monkeypatch: pytest.MonkeyPatch, count: int, scripts: dict[int, list[str]],
        stopped_at: int) -> None:
    """SIGTERM arrives during the `stopped_at`-th start, before that process exists for the
    parent to pass it to: it is passed once the process does, and the worker ends."""
    scripted(monkeypatch, scripts)
    monkeypatch.setattr("agent.worker_processes.RESTART_FIRST_S", 0.0)
    create, starts = asyncio.create_subprocess_exec, 0

    async def stopped_while_starting(*args: str, **kwargs: object) -> asyncio.subprocess.Process:
        nonlocal starts
        starts += 1
        if starts == stopped_at:
            # to this thread, which runs the loop; the start takes a while, as a real one does
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
            await asyncio.sleep(0.5)
        return await create(*args, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(asyncio, "create_subprocess_exec", stopped_while_starting)
    supervisor = Supervisor(Settings.from_env({"SIGHTLINE_HEALTH_PORT": "0"}), count,
                            "postgresql://db/x", "INFO")
    async with asyncio.timeout(30):  # the processes sleep for 60 s unless told to stop
        assert await supervisor.run() == 0
    assert all(p.proc is None or p.proc.returncode == -signal.SIGTERM
               for p in supervisor.processes)


def ended_processes(supervisor: Supervisor) -> None:
    """Kill what a failed test left running (the old code left processes and watchers)."""
    for process in supervisor.processes:
        if process.proc is not None and process.proc.returncode is None:
            process.proc.kill()


async def seen(capfd: pytest.CaptureFixture[str], said: list[str], pattern: str,
               deadline: float, running: asyncio.Task[int]) -> None:
    """Wait until the worker's stderr (gathered in `said`) has a line matching `pattern`,
    while the worker (`running`) runs."""
    while not re.search(pattern, "".join(said)):
        if running.done():
            raise AssertionError(f"the worker ended ({running.exception()!r}) before saying "
                                 f"{pattern!r}: {''.join(said)}")
        assert time.monotonic() < deadline, f"never said {pattern!r}: {''.join(said)}"
        await asyncio.sleep(0.1)
        said.append(capfd.readouterr().err)


@pytest.mark.parametrize("refused", ["fork", "port"])
async def test_a_restart_that_fails_is_one_line_and_tried_again_while_the_others_run(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], refused: str) -> None:
    """Process 1/2 ends; the start that replaces it fails (`fork`: the kernel refuses the
    fork, EAGAIN, as it may just after the OOM killer; `port`: no free health port). The
    parent says so in a line and starts it on the next try; process 2/2 runs on, untouched,
    and a stop still drains both."""
    scripted(monkeypatch, {0: ["raise SystemExit(1)", SLEEPS], 1: [SLEEPS]})
    monkeypatch.setattr("agent.worker_processes.RESTART_FIRST_S", 0.0)
    create, starts, picks = asyncio.create_subprocess_exec, 0, iter(range(20001, 20100))

    async def fork_refused_on_restart(*args: str, **kwargs: object) -> asyncio.subprocess.Process:
        nonlocal starts
        starts += 1
        if refused == "fork" and starts == 3:  # the restart of process 1/2
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return await create(*args, **kwargs)  # type: ignore[arg-type]

    def no_port_on_restart() -> int:
        port = next(picks)
        if refused == "port" and port == 20003:  # the restart of process 1/2
            raise RuntimeError("no free port outside the ephemeral range")
        return port
    monkeypatch.setattr(asyncio, "create_subprocess_exec", fork_refused_on_restart)
    monkeypatch.setattr("agent.worker_processes.free_port", no_port_on_restart)
    supervisor = Supervisor(Settings.from_env({"SIGHTLINE_HEALTH_PORT": str(free_port())}), 2,
                            "postgresql://db/x", "INFO")
    running_ = asyncio.create_task(supervisor.run())
    try:
        said: list[str] = []
        deadline = time.monotonic() + 30
        await seen(capfd, said, r"worker process 1/2 \(pid \d+\) ended \(status 1\)", deadline,
                   running_)
        other = supervisor.processes[1].proc
        why = ("BlockingIOError: [Errno 11] Resource temporarily unavailable" if refused == "fork"
               else "RuntimeError: no free port outside the ephemeral range")
        await seen(capfd, said, re.escape(f"worker process 1/2 could not be started again "
                                          f"({why}); trying again in 0 s"), deadline, running_)
        while (first := supervisor.processes[0].proc) is None or first.returncode is not None:
            assert time.monotonic() < deadline, "the process was not started on the next try"
            assert not running_.done(), running_
            await asyncio.sleep(0.1)
        assert supervisor.processes[1].proc is other and other is not None
        assert other.returncode is None, "the other process runs on"
        os.kill(os.getpid(), signal.SIGTERM)  # the worker's stop: passed on to both
        async with asyncio.timeout(30):
            assert await running_ == 0
        assert all(p.proc is not None and p.proc.returncode == -signal.SIGTERM
                   for p in supervisor.processes)
        said.append(capfd.readouterr().err)
        assert "Traceback" not in "".join(said)
    finally:
        running_.cancel()
        ended_processes(supervisor)


async def test_a_process_killed_by_a_signal_without_a_name_is_started_again(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """A real-time signal (SIGRTMIN+n) has no name in `signal.Signals`: naming it in the
    process's line must not raise out of the watcher and end the worker."""
    unnamed = signal.SIGRTMIN + 6
    assert describe_exit(-unnamed) == f"killed by signal {unnamed}"
    assert (describe_exit(-signal.SIGKILL), describe_exit(3)) == ("killed by SIGKILL",
                                                                  "status 3")
    scripted(monkeypatch, {0: [f"import os; os.kill(os.getpid(), {unnamed})", SLEEPS],
                           1: [SLEEPS]})
    monkeypatch.setattr("agent.worker_processes.RESTART_FIRST_S", 0.0)
    supervisor = Supervisor(Settings.from_env({"SIGHTLINE_HEALTH_PORT": "0"}), 2,
                            "postgresql://db/x", "INFO")
    running_ = asyncio.create_task(supervisor.run())
    try:
        said: list[str] = []
        await seen(capfd, said, rf"1/2 \(pid \d+\) ended \(killed by signal {unnamed}\)",
                   time.monotonic() + 30, running_)
        deadline = time.monotonic() + 30
        while (first := supervisor.processes[0].proc) is None or first.returncode is not None:
            assert time.monotonic() < deadline, "the process was not started again"
            assert not running_.done(), running_
            await asyncio.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await running_ == 0
    finally:
        running_.cancel()
        ended_processes(supervisor)


@pytest.mark.parametrize("ends", ["a-watcher-raises", "run-cancelled"])
async def test_a_run_that_ends_early_drains_the_processes_and_leaves_no_watcher(
        monkeypatch: pytest.MonkeyPatch, ends: str) -> None:
    """Should `Supervisor.run` end before its processes (a bug in one process's watcher; its
    caller cancelling it), the others are told to stop as by SIGTERM, so they drain instead of
    dying undrained with the parent, and no watcher is left to restart a process for it."""
    scripted(monkeypatch, {0: ["raise SystemExit(1)" if ends == "a-watcher-raises" else SLEEPS],
                           1: [SLEEPS]})

    def a_bug(code: int) -> str:
        raise RuntimeError("a bug in the watcher")
    monkeypatch.setattr("agent.worker_processes.describe_exit", a_bug)
    supervisor = Supervisor(Settings.from_env({"SIGHTLINE_HEALTH_PORT": "0"}), 2,
                            "postgresql://db/x", "INFO")
    running_ = asyncio.create_task(supervisor.run())
    try:
        if ends == "run-cancelled":
            deadline = time.monotonic() + 30
            while not all(p.proc for p in supervisor.processes):
                assert time.monotonic() < deadline, "the processes were not started"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.2)  # the watchers are waiting on them
            running_.cancel()
        with pytest.raises(asyncio.CancelledError if ends == "run-cancelled" else RuntimeError):
            async with asyncio.timeout(30):
                await running_
        other = supervisor.processes[1].proc
        assert other is not None and other.returncode == -signal.SIGTERM, "told to stop"
        assert not [t for t in asyncio.all_tasks()
                    if t.get_coro().__qualname__ == "Supervisor._keep"], "a watcher left"
    finally:
        ended_processes(supervisor)


REPO = Path(__file__).resolve().parents[1]
# a worker of two processes that run `sys.argv[1]` with the parent's pid as their argument
SUPERVISES = """
import asyncio, os, sys
from agent.config import Settings
from agent.worker_processes import Supervisor, WorkerProcess
WorkerProcess.command = lambda self: [sys.executable, "-c", sys.argv[1], str(os.getpid())]
supervisor = Supervisor(Settings.from_env({"SIGHTLINE_HEALTH_PORT": "0"}), 2,
                        "postgresql://db/x", "INFO")
sys.exit(asyncio.run(supervisor.run()))
"""
# a process that drains as livekit-agents' does: the first stop signal drains it, a second
# ends it at once (status 1, undrained)
DRAINS = """
import os, signal, sys, time
from agent.worker_processes import die_with_parent
die_with_parent(int(sys.argv[1]))
heard = []
def on_signal(signum, frame):
    heard.append(signum)
    if len(heard) > 1:
        os._exit(1)
signal.signal(signal.SIGINT, on_signal)
signal.signal(signal.SIGTERM, on_signal)
os.write(1, b"ready\\n")  # one write, as "drained" below
deadline = time.monotonic() + 60
while not heard and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(1)  # draining
os.write(1, b"drained\\n")  # one write: two processes' lines never interleave on the pipe
"""


async def supervising(script: str) -> tuple[asyncio.subprocess.Process, list[int]]:
    """A worker of two processes running `script`, once both said `ready`, and their pids.
    The worker is a process group of its own, as a shell's job is."""
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SUPERVISES, script, cwd=REPO, start_new_session=True,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        for _ in range(2):
            assert await worker.stdout.readline() == b"ready\n"  # type: ignore[union-attr]
    return worker, [p.pid for p in psutil.Process(worker.pid).children()]


def end_all(worker: asyncio.subprocess.Process, pids: list[int]) -> None:
    for pid in [worker.pid, *pids]:
        if running(pid):
            psutil.Process(pid).kill()


async def test_ctrl_c_at_a_terminal_drains_each_process_once() -> None:
    """A terminal's Ctrl-C is SIGINT to its foreground process group: the processes hear it
    through the parent alone, once, and drain (a second one would end them undrained)."""
    worker, pids = await supervising(DRAINS)
    try:
        os.killpg(worker.pid, signal.SIGINT)
        async with asyncio.timeout(30):
            out, err = await worker.communicate()
    finally:
        end_all(worker, pids)
    assert worker.returncode == 0, err.decode()
    assert out == b"drained\n" * 2


async def test_processes_in_sessions_of_their_own_still_die_with_the_worker() -> None:
    """SIGKILL to the worker's process group reaches the parent alone: `die_with_parent`
    ends the processes with it."""
    worker, pids = await supervising(DRAINS)
    try:
        os.killpg(worker.pid, signal.SIGKILL)
        await worker.wait()
        deadline = time.monotonic() + 15
        while alive := [pid for pid in pids if running(pid)]:
            assert time.monotonic() < deadline, f"processes {alive} outlived their worker"
            await asyncio.sleep(0.1)
    finally:
        end_all(worker, pids)


def _reply(request: CapturedRequest) -> ScriptedReply:
    return ScriptedReply(text=MEMORY_UPDATE if request.purpose == "memory" else ANSWER)


@pytest.fixture(scope="module")
async def models() -> AsyncIterator[ScriptedModelServer]:
    async with ScriptedModelServer(replies=_reply) as server:
        yield server


@pytest.fixture(scope="module")
async def processes_database_url(postgres_admin_url: str) -> str:
    return await fresh_database(postgres_admin_url, "processes")


async def start(livekit: LiveKitServer, models: ScriptedModelServer, database_url: str,
                workdir: Path, sessions: int) -> Worker:
    """A worker of two processes, without metrics (the second process would serve them on
    the port after the free one picked, maybe taken)."""
    return await started_worker(workdir, worker_env(
        livekit, models, agent_name=AGENT_NAME, database_url=database_url,
        data_dir=workdir / "data", SIGHTLINE_METRICS_PORT="0",
        SIGHTLINE_MAX_SESSIONS=str(sessions), SIGHTLINE_WORKER_PROCESSES="2",
        SIGHTLINE_SCREEN_TEXT="off"), name="worker-processes")


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def children(worker: Worker) -> set[int]:
    """The worker's processes (its parent's children)."""
    return {p.pid for p in psutil.Process(worker.proc.pid).children()}


async def health(port: int) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}/", timeout=aiohttp.ClientTimeout(total=10)) as response:
        return response.status, await response.text()


async def healthy(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while (answer := await health(port)) != (200, "OK"):
        assert time.monotonic() < deadline, f"the worker's health stayed {answer}"
        await asyncio.sleep(0.5)


async def session_pids(worker: Worker, users: list[User]) -> dict[str, int]:
    """Which process hosted each user's session, from its cost log's `session` event, written
    as the session began: not its summary, which waits for LiveKit to report the user gone (a
    leave LiveKit hears as a connection timeout, under load, takes 40 s to end a session)."""
    found = {}
    for user in users:
        events = await session_events(worker, user, finished=False)
        found[user.room_name] = next(e for e in events if e["kind"] == "session")["detail"]["pid"]
    return found


async def answered(livekit: LiveKitServer, rooms: list[str]) -> list[User]:
    """Users of `rooms` arrive at once, get an agent, share, are answered and leave."""
    users = [User(livekit, room, agent_name=AGENT_NAME, metadata={"tenant": "processes"},
                  frames=SCREENS, hold_s=2.0) for room in rooms]
    try:
        await asyncio.gather(*(user.dispatch() for user in users))
        await asyncio.gather(*(user.connect(f"user-{i}") for i, user in enumerate(users)))
        await asyncio.gather(*(user.wait_for_agent(timeout_s=60) for user in users))
        await asyncio.gather(*(user.publish_video(rtc.TrackSource.SOURCE_SCREENSHARE, fps=2)
                               for user in users))
        for user in users:
            await user.say("What is on my screen?")
        replies = await asyncio.gather(*(user.wait_for_reply(timeout_s=60) for user in users))
        assert replies == [ANSWER.split("]] ", 1)[1]] * len(users)
    finally:
        await asyncio.gather(*(user.leave() for user in users), return_exceptions=True)
    return users


@pytest.mark.e2e
async def test_a_worker_of_two_processes_shares_a_burst_and_outlives_a_process(
        livekit: LiveKitServer, models: ScriptedModelServer, processes_database_url: str,
        tmp_path: Path) -> None:
    worker = await start(livekit, models, processes_database_url, tmp_path, sessions=4)
    health_port = int(worker.env["SIGHTLINE_HEALTH_PORT"])
    try:
        first = now = children(worker)
        assert len(first) == 2
        await healthy(health_port)
        rooms = [f"processes-burst-{i}" for i in range(4)]
        users = await answered(livekit, rooms)  # two per process: the split capacity is full
        hosts = await session_pids(worker, users)
        assert sorted(hosts) == rooms
        assert set(hosts.values()) == first, "each process hosted its share of the burst"

        lost = min(first)
        psutil.Process(lost).send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 90
        while len(now := children(worker)) < 2 or lost in now or (
                worker.log_text().count("registered worker") < 3):
            assert time.monotonic() < deadline, f"no new process:\n{worker.log_text()[-3000:]}"
            await asyncio.sleep(0.5)
        assert f"(pid {lost}) ended (killed by SIGKILL)" in worker.log_text()
        await healthy(health_port)
        await answered(livekit, ["processes-after"])
        assert worker.proc.poll() is None
    finally:
        code = await worker.astop()
    assert code == 0, worker.log_text()[-3000:]
    assert not any(running(pid) for pid in now)


@pytest.mark.e2e
async def test_a_worker_killed_with_sigkill_leaves_no_process_behind(
        livekit: LiveKitServer, models: ScriptedModelServer, processes_database_url: str,
        tmp_path: Path) -> None:
    worker = await start(livekit, models, processes_database_url, tmp_path, sessions=2)
    left = children(worker)
    assert len(left) == 2
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait(10)
    deadline = time.monotonic() + 15
    while alive := [pid for pid in left if running(pid)]:
        assert time.monotonic() < deadline, f"processes {alive} outlived their worker"
        await asyncio.sleep(0.2)
