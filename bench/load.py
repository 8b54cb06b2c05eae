"""Many sessions on one worker: who joins, how fast replies come, what each session costs the
worker in memory and CPU, whether 1 FPS sampling holds, and whether a long run leaks.

    .venv/bin/python -m bench.load --capacity 30         # levels 8, 16, 30 arriving in bursts
    .venv/bin/python -m bench.load --levels 30 --capacity 30 --arrival stagger --gap-s 4
    .venv/bin/python -m bench.load --levels 8 --reference /tmp/before/.venv/bin/sightline
    .venv/bin/python -m bench.load --levels 30 --capacity 30 --reference OTHER --pairs 4
    .venv/bin/python -m bench.load --levels 30 --capacity 30 --soak 10   # 10 minutes
    .venv/bin/python -m bench.load --levels 30 --capacity 30 --split-cores  # users elsewhere
    .venv/bin/python -m bench.load --levels 30 --capacity 30 --processes 2  # two processes

(`--capacity`: a worker's own default is 15 sessions per core; `--processes`: its own default
is one process per core, the bench's 1 unless asked.)

Real `livekit-server` on loopback, real `sightline start` worker(s), an embedded Postgres
(started here, shared by the workers), the models as the wire-format server answering at once
(scripted replies), and users in separate processes (bench/load_users.py) who dispatch the
agent, join, share a 1280x720 screen at 5 fps that changes every 5 s, and ask a question
every 15 s. The shares are VP8 encoded once per users process and sent as they are
(`--publish encoded`, bench/encoded_share.py: a user's encoder runs on their own machine);
`--publish raw` has each user's libwebrtc encode live on these cores, as before 2026-12-02. A
burst sends every dispatch within one second. Each level starts a fresh worker.

Per level: joined, asked and answered; reply round trip and overhead (the round trip minus the
model's own time, as the scripted server measured it: `model_served_ms_p50`; until 2026-12-03
the model's latency as the worker measured it, `model_ms_p50`, which also counts the worker's
own waits while it sends the request and reads the reply) p50/p95, and the round trip in three
hops (to the worker, at the worker, back to the user: each session's log records when each
question reached it; the hop at the worker again as its lookup and its answer; beside them the
CPU time the question cost its session's event-loop thread, `loop_cpu_ms_*`, from each reply's
`cpu_ms`), and the overhead
again over the questions asked in the steady window alone (from 30 s after the last arrival: a
burst's joining, and the first questions asked while the others still connect, left out);
sampled frames per session-second; each new screenshot's wait for the screen-text reads of
its frame (`cover_wait_ms_*`), the screenshots sent before those were done
(`screenshots_unread`) and the reads questions hurried (`screen_reads_hurried`); CPU cores of
the worker (and, of those, its screen-text readers' and its video decoders' threads), the
users' processes, LiveKit, Postgres and the scripted model server (all share the machine's
cores), and the cores the hypervisor stole from the machine meanwhile (`stolen_cores`); the
worker's RSS, in total and per session above its idle RSS. With `--reference`, the same
levels run against another build (the process-per-session worker this replaced) and the ratios
are printed; with `--pairs N`, N pairs a level, alternating which build runs first (a pair's
second run shares the first's database, LiveKit server and model server, and on a busy shared
host the hour drifts between them), then each build's median overhead over the pairs and how
many pairs this build won. With `--soak`,
RSS and open files are sampled for the whole run and their growth after warm-up is printed.
Last line: JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from memory.db import start_embedded
from vision.screen_text import OCR_THREAD_NAME

from .livekit_harness import (
    API_KEY,
    API_SECRET,
    LiveKitServer,
    Worker,
    free_port,
    run_livekit_server,
    start_worker,
    worker_processes,
)
from .load_users import SERVICE_TIMES, Plan, UserResult, run_users, serve_models

REPO = Path(__file__).resolve().parent.parent
VIDEO = REPO / "fixtures" / "demo" / "screen.webm"
AGENT_NAME = "sightline-load"
SETTLE_S = 6.0
WARM_UP_S = 10.0  # after the last user joined, before the steady window
SAMPLE_EVERY_S = 2.0
MATCH_S = 1.0  # a question and the worker's record of it are sent at most this far apart
SOAK_WARM_UP_S = 180.0
# libwebrtc's video decoder threads ("VideoDecoderQueue", cut to the OS's 15 bytes)
VIDEO_DECODE_THREADS = ("VideoDecoderQue",)


@dataclass
class Options:
    levels: list[int]
    arrival: str
    gap_s: float
    seconds: float
    ask_every_s: float
    fps: float
    change_every_s: float
    workers: int
    capacity: int
    users_processes: int
    sightline: Path
    worker_cpus: frozenset[int] = frozenset()  # --split-cores: the workers' own cores
    publish: str = "encoded"  # --publish: how the users send their shares (bench/load_users.py)
    processes: int = 1  # --processes: SIGHTLINE_WORKER_PROCESSES of each worker


def quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Meter:
    """CPU time and RSS of groups of processes, and of groups of their threads by the name the
    OS knows them by, sampled by the coordinator."""

    def __init__(self) -> None:
        self.groups: dict[str, list[psutil.Process]] = {}
        self.thread_groups: dict[str, tuple[list[psutil.Process], tuple[str, ...]]] = {}

    def set(self, name: str, procs: Sequence[psutil.Process]) -> None:
        self.groups[name] = list(procs)

    def set_threads(self, name: str, procs: Sequence[psutil.Process],
                    prefixes: tuple[str, ...]) -> None:
        """A group of the threads of `procs` whose OS name starts with one of `prefixes` (the
        threads alive when it is read: a thread that ended meanwhile takes its time along)."""
        self.thread_groups[name] = (list(procs), prefixes)

    @staticmethod
    def _threads_cpu_s(procs: Sequence[psutil.Process], prefixes: tuple[str, ...]) -> float:
        total = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                for thread in proc.threads():
                    with contextlib.suppress(OSError):  # the thread ended since
                        name = Path(f"/proc/{proc.pid}/task/{thread.id}/comm").read_text()
                        if name.startswith(prefixes):
                            total += thread.user_time + thread.system_time
        return total

    def cpu_s(self) -> dict[str, float]:
        """Each group's CPU seconds so far, and `stolen`: the machine's seconds its cores
        waited while the hypervisor ran other guests (a virtual machine's steal, which swings a
        level's figures on a shared host more than most changes do)."""
        out = {"stolen": getattr(psutil.cpu_times(), "steal", 0.0)}
        for name, procs in self.groups.items():
            total = 0.0
            for proc in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = proc.cpu_times()
                    total += times.user + times.system
            out[name] = total
        for name, (procs, prefixes) in self.thread_groups.items():
            out[name] = self._threads_cpu_s(procs, prefixes)
        return out

    @staticmethod
    def rss_mb(procs: Sequence[psutil.Process]) -> float:
        total = 0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total / 2**20

    @staticmethod
    def open_files(procs: Sequence[psutil.Process]) -> int:
        total = 0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.num_fds()
        return total


def postgres_processes(pgdata: Path) -> list[psutil.Process]:
    """The embedded Postgres's server process and its backends."""
    for proc in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if proc.info["name"] == "postgres" and str(pgdata) in " ".join(proc.info["cmdline"]):
                return [proc, *proc.children()]
    return []


def worker_env(livekit: LiveKitServer, models_url: str, database_url: str, data_dir: Path,
               capacity: int, processes: int) -> dict[str, str]:
    return {
        "LIVEKIT_URL": livekit.ws_url, "LIVEKIT_API_KEY": API_KEY,
        "LIVEKIT_API_SECRET": API_SECRET, "SIGHTLINE_AGENT_NAME": AGENT_NAME,
        "GOOGLE_API_KEY": "load-fake-key", "ANTHROPIC_API_KEY": "load-fake-key",
        "SIGHTLINE_GEMINI_BASE_URL": models_url, "SIGHTLINE_ANTHROPIC_BASE_URL": models_url,
        "DATABASE_URL": database_url, "SIGHTLINE_DATA_DIR": str(data_dir),
        "SIGHTLINE_HEALTH_PORT": str(free_port()), "SIGHTLINE_WEBHOOK_PORT": str(free_port()),
        **({"SIGHTLINE_MAX_SESSIONS": str(capacity)} if capacity else {}),
        "SIGHTLINE_WORKER_PROCESSES": str(processes),
    }


class Question(NamedTuple):
    """One question as its session recorded it, epoch seconds."""

    sent: float
    received: float  # reached the worker
    looked_up: float | None  # its turn's context ready (None: not recorded)
    ended: float | None  # the turn that answered it ended
    cpu_s: float | None = None  # its session's loop thread's CPU from arrival to the reply


@dataclass
class Sessions:
    """What the workers' cost logs say about a level's sessions."""

    count: int = 0
    frames_per_s: list[float] = field(default_factory=list)
    model_latency_s: list[float] = field(default_factory=list)
    # per room, each question the session was handed, epoch seconds (the sender's clock is
    # this machine's)
    questions: dict[str, list[Question]] = field(default_factory=dict)
    # the sessions' screen-text reads: kept frames handed to the reader, and those folded into
    # a newer read instead of being read on their own (the reader fell behind or waited for
    # the machine to have CPU to spare, as long as `screen_read_wait_s` in all)
    screen_reads_submitted: int = 0
    screen_reads_folded: int = 0
    screen_read_wait_s: float = 0.0
    screen_reads_forced: int = 0  # started after the longest wait, the machine still busy
    screen_reads_hurried: int = 0  # a question waited for them: past the OCR queue and the gate
    shares_resubscribed: int = 0  # shares a session subscribed to again: they had not arrived
    # questions whose knowledge and memory lookup ran out of its time (answered without it)
    recalls_timed_out: int = 0
    # each screenshot's wait for the reads of its frame (SIGHTLINE_COVER_WAIT_S), and those
    # sent with a read still not done (a secret shown just before would show as shared)
    cover_waits_s: list[float] = field(default_factory=list)
    screenshots_unread: int = 0


def read_cost_logs(data_dirs: Sequence[Path], window: tuple[float, float]) -> Sessions:
    """Sampled frames per second of each session within the steady window, the latency of
    every answering model call, where each question's time went inside the worker, and how
    many kept frames' text was read or folded, how many shares were subscribed again, and how
    many questions' lookups timed out."""
    found = Sessions()
    start, end = window
    for data_dir in data_dirs:
        for path in sorted((data_dir / "costs").glob("live_*.jsonl")):
            events = [json.loads(line) for line in path.read_text().splitlines() if line]
            found.count += 1
            frames = [e["ts"] for e in events if e["kind"] == "frame" and start <= e["ts"] <= end
                      and "was" not in e["detail"]]  # `was`: a sample decided again, asked
            found.frames_per_s.append(len(frames) / (end - start))
            found.model_latency_s += [
                e["latency_ms"] / 1000 for e in events
                if e["kind"] == "model_call" and e.get("detail", {}).get("purpose") != "memory"]
            for reader in (e["detail"] for e in events if e["kind"] == "screen_reader"):
                found.screen_reads_submitted += reader["submitted"]
                found.screen_reads_folded += reader["coalesced"]
                found.screen_read_wait_s += reader.get("waited_s", 0.0)
                found.screen_reads_forced += reader.get("forced", 0)
                found.screen_reads_hurried += reader.get("hurried", 0)
            for count in (e["detail"] for e in events if e["kind"] == "frame_count"):
                found.shares_resubscribed += count.get("resubscribed", 0)
            contexts = [e["detail"] for e in events if e["kind"] == "context"]
            found.recalls_timed_out += sum(c.get("recall") == "timeout" for c in contexts)
            found.cover_waits_s += [c["cover_wait_ms"] / 1000 for c in contexts
                                    if "cover_wait_ms" in c]
            found.screenshots_unread += sum(bool(c.get("screen_unread")) for c in contexts)
            room = next((e["detail"].get("room") for e in events if e["kind"] == "session"), None)
            if room is not None:
                found.questions[room] = _questions(events)
    return found


def _questions(events: Sequence[dict[str, Any]]) -> list[Question]:
    """Each chat message's sending, its arrival at the worker, the end of the turn that
    answered it (the first turn recorded after the message was handed on), when that
    turn's context was ready (its `context` event: the lookup done or given up), and the CPU
    time its session's loop thread spent on it (the `cpu_ms` of the reply after that turn)."""
    turns = [e["ts"] for e in events if e["kind"] == "turn"]
    contexts = [e["ts"] for e in events if e["kind"] == "context"]
    replies = [(e["ts"], e["detail"].get("cpu_ms")) for e in events if e["kind"] == "reply"]
    found = []
    for event in events:
        if event["kind"] == "chat" and event["detail"]["sent_at"] > 0:
            ended = next((t for t in turns if t >= event["ts"]), None)
            looked_up = next((t for t in contexts if t >= event["ts"]), None)
            if looked_up is not None and ended is not None and looked_up > ended:
                looked_up = None  # the next question's: this turn recorded no context
            cpu_ms = None if ended is None else next(
                (cpu for t, cpu in replies if t >= ended), None)
            cpu_s = None if cpu_ms is None else cpu_ms / 1000
            found.append(Question(event["detail"]["sent_at"], event["detail"]["received_at"],
                                  looked_up, ended, cpu_s))
    return found


def hops(results: Sequence[UserResult], sessions: Sessions) -> dict[str, list[float]]:
    """Each answered question's round trip in three hops: from the user's sending to the
    worker, at the worker (its turn, the model's time included), and the answer back to the
    user; and the hop at the worker in two: its lookup (until the turn's context was ready)
    and its answer (from there to the turn's end: the model call, the model's time
    included); beside them, the CPU time its session's loop thread spent on it (`loop_cpu`:
    what of the hop at the worker was that thread's own work rather than its waits for the
    GIL, the cores, the database or the model). A question is matched to the worker's record
    by room and sending time."""
    split: dict[str, list[float]] = {"to_worker": [], "at_worker": [], "back": [],
                                     "lookup": [], "answer": [], "loop_cpu": []}
    for result in results:
        handed = sessions.questions.get(result.room, [])
        for asked, arrived in result.answered_at:
            question = min(handed, key=lambda q: abs(q.sent - asked), default=None)
            if (question is None or question.ended is None
                    or abs(question.sent - asked) > MATCH_S):
                continue
            split["to_worker"].append(question.received - question.sent)
            split["at_worker"].append(question.ended - question.received)
            split["back"].append(arrived - question.ended)
            if question.looked_up is not None:
                split["lookup"].append(question.looked_up - question.received)
                split["answer"].append(question.ended - question.looked_up)
            if question.cpu_s is not None:
                split["loop_cpu"].append(question.cpu_s)
    return split


def steady_round_trips(results: Sequence[UserResult], since: float) -> list[float]:
    """The round trips of the questions asked from `since` (epoch seconds) on."""
    return [trip for r in results
            for (asked, _), trip in zip(r.answered_at, r.round_trips_s, strict=True)
            if asked >= since]


def wait_for_summaries(data_dirs: Sequence[Path], sessions: int, timeout_s: float) -> int:
    """Wait until `sessions` cost logs end with their summary; returns how many do."""
    deadline = time.monotonic() + timeout_s
    done = 0
    while time.monotonic() < deadline:
        done = 0
        for data_dir in data_dirs:
            for path in (data_dir / "costs").glob("live_*.jsonl"):
                lines = path.read_text().splitlines()
                done += bool(lines) and json.loads(lines[-1])["kind"] == "summary"
        if done >= sessions:
            break
        time.sleep(0.5)
    return done


def stop_worker(worker: Worker) -> str:
    """SIGTERM, as an orchestrator would; a worker that has not drained in 60 s is killed and
    the tail of its log printed."""
    try:
        return f"exit {worker.stop(60)}"
    except subprocess.TimeoutExpired:
        worker.proc.kill()
        worker.proc.wait()
        print(f"worker did not stop in 60 s; its log ends:\n{worker.log_text()[-3000:]}",
              file=sys.stderr)
        return "killed: no drain in 60 s"


def arrivals(n: int, t0: float, arrival: str, gap_s: float, rng: random.Random) -> list[float]:
    if arrival == "burst":
        return sorted(t0 + rng.uniform(0.0, 1.0) for _ in range(n))
    return [t0 + i * gap_s for i in range(n)]


@contextlib.contextmanager
def users_processes(plans: Sequence[Plan]) -> Iterator[list[tuple[Any, Any]]]:
    ctx = mp.get_context("spawn")
    running = []
    for plan in plans:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=run_users, args=(plan, child), daemon=True)
        proc.start()
        running.append((proc, parent))
    try:
        yield running
    finally:
        for proc, _ in running:
            proc.join(30)
            if proc.is_alive():
                proc.kill()


@dataclass
class ModelServer:
    """The scripted model server's process, shared by the levels."""

    url: str
    pid: int
    conn: Connection

    def service_times(self) -> list[float]:
        """Seconds each answering request took inside the server since the last call."""
        self.conn.send(SERVICE_TIMES)
        return self.conn.recv()


def run_level(n: int, opts: Options, livekit: LiveKitServer, models: ModelServer,
              database_url: str, pgdata: Path, workdir: Path, *, sightline: Path,
              soak_s: float | None = None) -> dict[str, Any]:
    level_dir = workdir / f"level-{n}-{sightline.parent.parent.name}-{time.time_ns()}"
    data_dirs = [level_dir / f"data-{i}" for i in range(opts.workers)]
    workers: list[Worker] = []
    meter = Meter()
    try:
        for i, data_dir in enumerate(data_dirs):
            level_dir.mkdir(parents=True, exist_ok=True)
            env = worker_env(livekit, models.url, database_url, data_dir, opts.capacity,
                             opts.processes)
            pinned = (["taskset", "-c", ",".join(map(str, sorted(opts.worker_cpus))),
                       str(sightline)] if opts.worker_cpus else [])
            workers.append(start_worker(level_dir, env, sightline, name=f"worker-{i}",
                                        launcher=pinned))
        time.sleep(SETTLE_S)
        worker_procs = [p for w in workers for p in worker_processes(w.proc.pid)]
        idle_rss = meter.rss_mb(worker_procs)

        rooms = [f"load-{n}-{i}-{random.randrange(10**6)}" for i in range(n)]
        shares = [rooms[i::opts.users_processes] for i in range(opts.users_processes)]
        plans = [Plan(livekit.ws_url, livekit.http_url, AGENT_NAME, str(VIDEO), share,
                      opts.ask_every_s, opts.fps, opts.change_every_s, seed=i,
                      publish=opts.publish)
                 for i, share in enumerate(shares) if share]
        with users_processes(plans) as running:
            for _, conn in running:
                if conn.recv() != "ready":
                    raise RuntimeError("a users process failed to start")
            t0 = time.time() + 1.0
            rng = random.Random(n)
            arrive = arrivals(n, t0, opts.arrival, opts.gap_s, rng)
            joined_by = arrive[-1] + 20.0  # the join window
            duration = soak_s if soak_s is not None else opts.seconds
            leave_at = joined_by + WARM_UP_S + duration
            by_room = dict(zip(rooms, arrive, strict=True))
            for plan, (_, conn) in zip(plans, running, strict=True):
                conn.send(([by_room[r] for r in plan.rooms], leave_at))
            meter.set("users", [psutil.Process(p.pid) for p, _ in running])
            meter.set("livekit", [psutil.Process(livekit.pid)])
            meter.set("models", [psutil.Process(models.pid)])  # the scripted model server

            steady = (joined_by + WARM_UP_S, leave_at - 5.0)
            time.sleep(max(0.0, steady[0] - time.time()))
            worker_procs = [p for w in workers for p in worker_processes(w.proc.pid)]
            meter.set("worker", worker_procs)
            meter.set_threads("worker_ocr", worker_procs, (OCR_THREAD_NAME,))
            meter.set_threads("worker_video_decode", worker_procs, VIDEO_DECODE_THREADS)
            meter.set("postgres", postgres_processes(pgdata))  # a backend per connection
            cpu0, wall0 = meter.cpu_s(), time.monotonic()
            rss, fds, sampled_at = [], [], []
            while time.time() < steady[1]:
                rss.append(meter.rss_mb(worker_procs))
                fds.append(meter.open_files(worker_procs))
                sampled_at.append(time.time())
                time.sleep(min(SAMPLE_EVERY_S, max(0.0, steady[1] - time.time())))
            cpu1, wall1 = meter.cpu_s(), time.monotonic()
            results = [UserResult(**r) for _, conn in running for r in conn.recv()]
            (level_dir / "users.json").write_text(json.dumps([vars(r) for r in results]))
        joined = sum(r.joined for r in results)
        finished = wait_for_summaries(data_dirs, joined, timeout_s=60)
        served = models.service_times()
    finally:
        stopped = [stop_worker(worker) for worker in workers]
    sessions = read_cost_logs(data_dirs, steady)
    cores = {k: round((cpu1[k] - cpu0[k]) / (wall1 - wall0), 3) for k in cpu1}
    round_trips = [t for r in results for t in r.round_trips_s]
    settled = steady_round_trips(results, steady[0])
    model_s = statistics.median(sessions.model_latency_s) if sessions.model_latency_s else 0.0
    served_s = statistics.median(served) if served else 0.0
    steady_rss = statistics.mean(rss) if rss else idle_rss
    level: dict[str, Any] = {
        "sessions": n,
        "arrival": opts.arrival,
        "joined": joined,
        "join_s_max": round(max((r.join_s for r in results if r.join_s), default=0.0), 2),
        "asked": sum(r.asked for r in results),
        "answered": sum(r.answered for r in results),
        "round_trip_ms_p50": _ms(quantile(round_trips, 0.5)),
        "round_trip_ms_p95": _ms(quantile(round_trips, 0.95)),
        "model_ms_p50": _ms(model_s),  # as the worker measured it: its waits included
        "model_served_ms_p50": _ms(served_s),
        "overhead_ms_p50": _ms(_minus(quantile(round_trips, 0.5), served_s)),
        "overhead_ms_p95": _ms(_minus(quantile(round_trips, 0.95), served_s)),
        "steady_answered": len(settled),
        "steady_overhead_ms_p50": _ms(_minus(quantile(settled, 0.5), served_s)),
        "steady_overhead_ms_p95": _ms(_minus(quantile(settled, 0.95), served_s)),
        **{f"{hop}_ms_p{p}": _ms(quantile(times, p / 100))
           for hop, times in hops(results, sessions).items() for p in (50, 95)},
        "fps_per_session_mean": _round(statistics.mean(sessions.frames_per_s)
                                       if sessions.frames_per_s else None, 3),
        "fps_per_session_min": _round(min(sessions.frames_per_s, default=None), 3),
        "fps_per_session_max": _round(max(sessions.frames_per_s, default=None), 3),
        "screen_reads": sessions.screen_reads_submitted,
        "screen_reads_folded": sessions.screen_reads_folded,
        "screen_read_wait_s": round(sessions.screen_read_wait_s, 1),
        "screen_reads_forced": sessions.screen_reads_forced,
        "shares_resubscribed": sessions.shares_resubscribed,
        "recalls_timed_out": sessions.recalls_timed_out,
        "screenshots": len(sessions.cover_waits_s),
        "cover_wait_ms_p50": _ms(quantile(sessions.cover_waits_s, 0.5)),
        "cover_wait_ms_p95": _ms(quantile(sessions.cover_waits_s, 0.95)),
        "screenshots_unread": sessions.screenshots_unread,
        "screen_reads_hurried": sessions.screen_reads_hurried,
        "worker_cores": cores["worker"],
        "worker_ocr_cores": cores["worker_ocr"],  # of worker_cores: reading screen text
        "worker_video_decode_cores": cores["worker_video_decode"],  # and decoding the shares
        "users_cores": cores["users"],
        "livekit_cores": cores["livekit"],
        "postgres_cores": cores["postgres"],
        "models_cores": cores["models"],
        "stolen_cores": cores["stolen"],  # of the machine's cores, lost to other guests
        "worker_rss_idle_mb": round(idle_rss, 1),
        "worker_rss_mb": round(steady_rss, 1),
        "worker_rss_per_session_mb": round((steady_rss - idle_rss) / joined, 1) if joined else None,
        "worker_processes": len(worker_procs),
        "sessions_logged": sessions.count,
        "sessions_finished": finished,
        "errors": sorted({r.error for r in results if r.error})[:5],
        "worker_exit": stopped,
    }
    if soak_s is not None:
        level["soak"] = soak_figures(sampled_at, rss, fds)
    return level


def soak_figures(at: Sequence[float], rss: Sequence[float], fds: Sequence[int]) -> dict[str, Any]:
    """Growth of RSS and open files from the first to the last fifth of the run (the run
    already started after its warm-up)."""
    fifth = max(1, len(rss) // 5)

    def growth(values: Sequence[float]) -> float:
        first, last = statistics.mean(values[:fifth]), statistics.mean(values[-fifth:])
        return round((last - first) / first, 4) if first else 0.0

    # sessions fill their bounded buffers (screen history, recent messages, the archive's
    # index) over their first minutes: growth is also given from SOAK_WARM_UP_S on
    settled = [v for t, v in zip(at, rss, strict=True) if at and t - at[0] >= SOAK_WARM_UP_S]
    return {
        "minutes": round((at[-1] - at[0]) / 60, 1) if at else 0,
        "rss_mb_first": round(statistics.mean(rss[:fifth]), 1),
        "rss_mb_last": round(statistics.mean(rss[-fifth:]), 1),
        "rss_growth": growth(rss),
        "rss_growth_after_warm_up": growth(settled) if len(settled) >= 2 * fifth else None,
        "open_files_first": round(statistics.mean(fds[:fifth]), 1),
        "open_files_last": round(statistics.mean(fds[-fifth:]), 1),
        "open_files_growth": growth([float(f) for f in fds]),
        "rss_mb_by_minute": [round(v, 1) for v in rss[:: max(1, int(60 / SAMPLE_EVERY_S))]],
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _minus(a: float | None, b: float) -> float | None:
    return None if a is None else a - b


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def print_level(tag: str, level: dict[str, Any]) -> None:
    print(f"\n[{tag}] {level['sessions']} sessions, {level['arrival']}", file=sys.stderr)
    for key, value in level.items():
        if key not in ("sessions", "arrival", "soak"):
            print(f"  {key:<28} {value}", file=sys.stderr)
    for key, value in level.get("soak", {}).items():
        print(f"  soak {key:<23} {value}", file=sys.stderr)


def ratios(ours: dict[str, Any], ref: dict[str, Any]) -> dict[str, float | None]:
    """Reference / ours for costs (higher is better for us), ours / reference for joins."""
    def div(a: Any, b: Any) -> float | None:
        return round(a / b, 2) if isinstance(a, int | float) and isinstance(b, int | float) \
            and b else None

    return {
        "joined": div(ours["joined"], ref["joined"]),
        "rss_per_session": div(ref["worker_rss_per_session_mb"],
                               ours["worker_rss_per_session_mb"]),
        "overhead_p95": div(ref["overhead_ms_p95"], ours["overhead_ms_p95"]),
    }


def pair_order(pair: int) -> tuple[str, str]:
    """Which build runs first in the `pair`-th pair of a level: this one in even pairs, the
    reference in odd ones."""
    return ("sightline", "reference") if pair % 2 == 0 else ("reference", "sightline")


def pairs_summary(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Over one level's pairs: each build's median overhead p50 / p95 (whole run and steady
    window), and the pairs whose whole-run p95 this build beat. A build that answered nothing
    in a pair has no p95 (None): this build wins that pair only if it answered (a lower p95,
    or the reference answered nothing) and never when it answered nothing itself, so a pair
    with nothing answered counts for neither (it raised a TypeError before)."""
    def median(tag: str, key: str) -> float | None:
        values = [e[tag][key] for e in entries if e[tag].get(key) is not None]
        return round(statistics.median(values), 1) if values else None

    def won(ours: float | None, theirs: float | None) -> bool:
        return ours is not None and (theirs is None or ours < theirs)

    keys = ("overhead_ms_p50", "overhead_ms_p95", "steady_overhead_ms_p50",
            "steady_overhead_ms_p95")
    return {
        "pairs": len(entries),
        **{f"{tag}_{key}": median(tag, key) for tag in ("sightline", "reference") for key in keys},
        "won_p95": sum(won(e["sightline"].get("overhead_ms_p95"),
                           e["reference"].get("overhead_ms_p95")) for e in entries),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="8,16,30",
                        help="concurrent sessions per level, comma-separated (default 8,16,30)")
    parser.add_argument("--arrival", choices=("burst", "stagger"), default="burst")
    parser.add_argument("--gap-s", type=float, default=4.0, help="seconds between staggered users")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="steady seconds per level, after everyone joined (default 60)")
    parser.add_argument("--ask-every", type=float, default=15.0)
    parser.add_argument("--fps", type=float, default=5.0, help="the users' screen-share rate")
    parser.add_argument("--change-every", type=float, default=5.0,
                        help="seconds between changes of a user's screen (default 5: the "
                             "real sessions of fixtures/vision_eval keep about 1 sample in 5)")
    parser.add_argument("--publish", choices=("encoded", "raw"), default="encoded",
                        help="encoded (default): each screen still encoded to VP8 once and sent "
                             "as it is, as a user's own machine would; raw: every user runs "
                             "libwebrtc's encoder on these cores (the figures before 2026-12-02)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--capacity", type=int, default=0,
                        help="SIGHTLINE_MAX_SESSIONS for the workers (default: the worker's own)")
    parser.add_argument("--processes", type=int, default=1,
                        help="SIGHTLINE_WORKER_PROCESSES for each worker: the processes it hosts "
                             "its sessions in (default 1, as the figures before 2026-12-02)")
    parser.add_argument("--users-processes", type=int, default=2)
    parser.add_argument("--sightline", type=Path,
                        default=Path(sys.executable).with_name("sightline"))
    parser.add_argument("--reference", type=Path,
                        help="another build's sightline executable to run the same levels on")
    parser.add_argument("--pairs", type=int, default=1,
                        help="with --reference: pairs of runs a level, alternating which build "
                             "runs first (default 1: this build first)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="work in DIR and keep it (logs, cost logs); default: a temporary "
                             "directory, removed")
    parser.add_argument("--soak", type=float, metavar="MINUTES",
                        help="one run of MINUTES at the highest level, sampling RSS and files")
    parser.add_argument("--split-cores", action="store_true",
                        help="the workers on the first core, the users, LiveKit, Postgres and "
                             "the models on the others: the worker measured as if its users "
                             "were on other machines")
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error(f"--pairs must be at least 1 (got {args.pairs})")
    worker_cpus: frozenset[int] = frozenset()
    if args.split_cores:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2 or shutil.which("taskset") is None:
            print(f"bench.load: --split-cores needs 2 cores (this process may use {len(cpus)})"
                  " and taskset (util-linux)", file=sys.stderr)
            return 2
        worker_cpus = frozenset(cpus[:1])
        os.sched_setaffinity(0, cpus[1:])  # inherited by everything started from here on
    opts = Options([int(x) for x in args.levels.split(",")], args.arrival, args.gap_s,
                   args.seconds, args.ask_every, args.fps, args.change_every, args.workers,
                   args.capacity, args.users_processes, args.sightline, worker_cpus,
                   args.publish, args.processes)
    result: dict[str, Any] = {"bench": "load", "arrival": opts.arrival, "publish": opts.publish,
                              "processes": opts.processes, "levels": [],
                              "worker_cpus": sorted(worker_cpus)}
    with (contextlib.nullcontext(str(args.keep)) if args.keep
          else tempfile.TemporaryDirectory()) as tmp:
        workdir = Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        pgdata = workdir / "pgdata"
        postgres = start_embedded(pgdata)
        ctx = mp.get_context("spawn")
        models_conn, child = ctx.Pipe()
        models = ctx.Process(target=serve_models, args=(child,), daemon=True)
        models.start()
        server = ModelServer(models_conn.recv(), models.pid, models_conn)
        try:
            with run_livekit_server(workdir) as livekit:
                common = (opts, livekit, server, postgres.get_uri(), pgdata, workdir)
                if args.soak:
                    level = run_level(max(opts.levels), *common, sightline=opts.sightline,
                                      soak_s=args.soak * 60)
                    print_level("sightline soak", level)
                    result["levels"].append(level)
                builds = {"sightline": opts.sightline, "reference": args.reference}
                for n in ([] if args.soak else opts.levels):
                    entries = []
                    for pair in range(args.pairs if args.reference else 1):
                        entry: dict[str, Any] = {}
                        for tag in pair_order(pair):
                            if builds[tag] is not None:
                                entry[tag] = run_level(n, *common, sightline=builds[tag])
                                print_level(tag, entry[tag])
                        if args.reference:
                            entry["first"] = pair_order(pair)[0]
                            entry["ratios"] = ratios(entry["sightline"], entry["reference"])
                            print(f"  ratios (better when > 1): {entry['ratios']}",
                                  file=sys.stderr)
                        result["levels"].append(entry)
                        entries.append(entry)
                    if args.reference and args.pairs > 1:
                        summary = {"sessions": n, **pairs_summary(entries)}
                        print(f"  over the pairs: {summary}", file=sys.stderr)
                        result.setdefault("pairs", []).append(summary)
        finally:
            models_conn.send("stop")
            models.join(10)
            postgres.cleanup()
    result["machine"] = {"cores": os.cpu_count(),
                         "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
