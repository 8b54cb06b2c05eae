"""`sightline dev|start`: run the LiveKit worker."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import os
import sys
from typing import TYPE_CHECKING

from .config import DEFAULT_TIERS, LOG_LEVELS, ConfigError, Settings
from .ports import require_free_port, taken

if TYPE_CHECKING:
    from .worker_processes import ProcessSlot

# 1 ms rather than 5: two paired runs of bench.load (30 sessions, two processes), each first
# once, whole-run reply overhead p95 301 and 337 ms against 339 and 409 (README: Many sessions)
GIL_SWITCH_S = 0.001


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, help_text in (
        ("dev", "run the worker in development mode (colored logs)"),
        ("start", "run the worker in production mode (JSON logs, graceful drain on SIGTERM)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS,
                       help="DEBUG, INFO, WARNING or ERROR, in any case "
                            "(default: LIVEKIT_LOG_LEVEL or INFO)")
        if name == "start":  # how a worker of several processes starts each of them
            p.add_argument("--process", metavar="I/N", help=argparse.SUPPRESS)
            p.add_argument("--parent", type=int, default=0, help=argparse.SUPPRESS)


M_ARENA_MAX = -8  # glibc's malloc.h


def limit_malloc_arenas(arenas: int) -> None:
    """Cap glibc's malloc arenas before the sessions' threads start.

    glibc gives each thread that meets a locked arena a new one, up to 8 per core; with a
    thread per session, the rtc runtime's and the decoders' threads, the freed memory spread
    over those arenas is rarely handed back. Measured (bench/load.py, 16 sessions, 10 minutes):
    RSS grew 20% from the first two minutes to the last two with glibc's default, 11% with 2
    arenas, flat after the third minute. The environment's MALLOC_ARENA_MAX, when set, wins.
    """
    if arenas <= 0 or "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        set_ok = libc.mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):  # not glibc (musl has no arenas to cap)
        return
    if not set_ok:
        print(f"sightline: could not cap malloc arenas at {arenas}", file=sys.stderr)


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run livekit-agents' own worker loop (the one its CLI runs) with Sightline's server, in
    this process or, with `SIGHTLINE_WORKER_PROCESSES` above 1, in that many processes started
    from here (agent/worker_processes.py), each with its share of the sessions.

    The database is prepared here, once: migrations run, and an embedded Postgres is started
    and its URL handed to the sessions (and to the processes). What every session reads is
    loaded before the first job arrives, into the process that hosts them.
    """
    from memory.db import start_embedded, stop_embedded

    from .alerts import close_sinks
    from .capacity import Limits
    from .worker_processes import (
        PORT_TAKEN_EXIT,
        ProcessSlot,
        die_with_parent,
        metrics_ports,
        process_count,
        run_processes,
    )

    log_level = (args.log_level or settings.log_level).upper()  # as livekit-agents names them
    settings.require_worker()
    slot = None
    if getattr(args, "process", None):
        try:
            slot = ProcessSlot.parse(args.process)
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"--process {exc}") from None
        if args.parent:
            die_with_parent(args.parent)
    limits = Limits.for_host(settings.max_sessions, settings.worker_memory_mb)
    count = (1 if args.command == "dev" or slot is not None
             else process_count(settings, limits.sessions))
    if slot is None:
        tiers = settings.cascade_tiers()
        print("cascade: " + " > ".join(f"{t.model} ({t.provider})" for t in tiers),
              file=sys.stderr)
        skipped = [] if settings.tiers else [t for t in DEFAULT_TIERS if t not in tiers]
        for tier in skipped:
            print(f"  skipped {tier.model}: no {tier.provider} API key in the environment",
                  file=sys.stderr)
    metrics = [port for port in metrics_ports(settings, count) if port]
    if slot is not None and settings.health_port and (why := taken(settings.health_port)):
        # the parent picked this port free for this start, and someone bound it first
        print(f"sightline: worker process {slot}: its health port {settings.health_port} is "
              f"taken ({why}); the worker starts it again on another", file=sys.stderr)
        return PORT_TAKEN_EXIT
    for port, env in ((0 if slot else settings.health_port, "SIGHTLINE_HEALTH_PORT"),
                      (settings.webhook_port, "SIGHTLINE_WEBHOOK_PORT"),
                      *((port, "SIGHTLINE_METRICS_PORT") for port in metrics)):
        require_free_port(port, env)
    embedded = None
    if settings.database_url is None:
        embedded = start_embedded(settings.data_dir / "pgdata")
        os.environ["DATABASE_URL"] = embedded.get_uri()
        settings = settings.with_overrides(database_url=os.environ["DATABASE_URL"])
    try:
        asyncio.run(_migrate(os.environ["DATABASE_URL"], settings))
        if count > 1:
            print(f"this worker takes {limits.describe()}, in {count} processes",
                  file=sys.stderr, flush=True)
            return run_processes(settings, count, os.environ["DATABASE_URL"], log_level)
        return _host_sessions(settings, args, slot, log_level)
    finally:
        close_sinks()  # budget alerts still queued for the webhook
        if embedded is not None:
            stop_embedded(embedded)


def _host_sessions(settings: Settings, args: argparse.Namespace, slot: ProcessSlot | None,
                   log_level: str) -> int:
    """Run the sessions in this process, as the worker or as one of its processes (`slot`);
    its exit status. What only this needs is imported here: a parent of several processes
    does without it."""
    from livekit.agents.cli import proto
    from livekit.agents.cli.cli import _run_worker

    from memory.db import masked_url

    from .left_spills import import_left_spills
    from .observability import configure_tracing
    from .rtc_events import route_media_events, rtc_logs_to_stderr
    from .worker import SHUTDOWN_DEADLINE_S, build_server

    limit_malloc_arenas(settings.malloc_arenas)
    # livekit-agents watches every event loop of the process for blocking, waking twice every
    # 20-50 ms per loop: with a loop per session and per idle slot, that is thousands of
    # wake-ups a second competing for the GIL. Sightline's own watchdog checks each session
    # once a second; set this variable (milliseconds) to have livekit's reports too.
    os.environ.setdefault("LIVEKIT_AGENTS_LOOP_BLOCK_WARN_MS", "0")
    _prepare_process(settings)
    rtc_logs_to_stderr()
    route_media_events()
    if configure_tracing(settings.otlp_endpoint):
        print(f"traces: OTLP to {masked_url(settings.otlp_endpoint)}", file=sys.stderr)
    # SIGTERM: livekit-agents drains (no new jobs, running sessions end), then closes; the
    # process is gone within SHUTDOWN_DEADLINE_S of the close, whatever still runs
    server = build_server(settings, exit_deadline_s=SHUTDOWN_DEADLINE_S, slot=slot)
    # printed, like the cascade: livekit-agents sets the log up only once it runs
    who = "this worker" if slot is None else f"worker process {slot} (pid {os.getpid()})"
    print(f"{who} takes {server.meter.limits.describe()}", file=sys.stderr, flush=True)
    _run_worker(
        server,
        proto.CliArgs(
            log_level=log_level,
            url=settings.livekit_url,
            api_key=settings.livekit_api_key,
            api_secret=settings.livekit_api_secret,
            dev=args.command == "dev",
            log_format="colored" if args.command == "dev" else "json",
        ),
    )
    asyncio.run(import_left_spills(settings))  # the disk may go with the worker
    if server.gave_up is not None:
        # status 1, for a supervisor to start the worker again (a parent of several
        # processes starts this one again)
        print(f"sightline: {server.gave_up}; the worker exits", file=sys.stderr, flush=True)
        return 1
    return 0


async def _migrate(url: str, settings: Settings) -> None:
    from memory.db import Database

    db = await Database.open(url, settings.data_dir)
    await db.close()


def _prepare_process(settings: Settings) -> None:
    """Load what sessions share once, here, rather than in the first session that needs it:
    the session code, the model SDKs of the tiers, the offline embedder's weights, the OCR
    engines (the hurry lane's too, when on), and what the first turn and the first kept frame
    import. An import holds the GIL: in a burst of 30 joining, the first session's import of
    genai-prices' model table (0.85 s) stalled every session's loop (measured with
    PYTHONPROFILEIMPORTTIME in bench.load). numpy imports `numpy.ma` on the first median of
    floats (the change detector's perceptual hash of a session's first frame): 53 ms on an idle
    process, and in a py-spy profile of a burst of 30 the one import left after registering
    (1.45 s of samples across two processes).

    What is loaded here lives as long as the process, so it is then frozen out of the garbage
    collector's sight (`gc.freeze`): each full collection walked all of it, ~370,000 objects,
    170 ms holding the GIL on an idle process and up to 434 ms in a burst of 30 (timed with
    `gc.callbacks` in bench.load), while every session of the process waited.

    A thread waiting for the GIL asks its holder to let go after `GIL_SWITCH_S` (Python's
    default 5 ms): a turn waits at each of its many wake-ups (a database reply, a model's
    chunk, a LiveKit message) behind the frame analysis of other sessions.

    OpenCV splits a call across threads of its own, as many as the cores; a worker's
    parallelism is its sessions, and the split costs CPU a loaded machine does not have: a
    screenshot's encode (vision/jpeg.py) took 4.0-4.4 ms of CPU on two threads against 3.2 on
    one for 720p, 8.9-9.2 against 6.9-7.1 for 1080p scaled to 1365×768 (the same frames,
    alternating, idle machine)."""
    import cv2
    import numpy.ma  # noqa: F401 - importing it is the point
    from genai_prices import data_snapshot

    from memory import marked_data
    from vision.ocr import thread_engine
    from vision.screen_text import hurry_pool, shared_pool

    from . import session  # noqa: F401 - importing it is the point
    from .components import make_embedder
    from .providers import prepare_sdks

    prepare_sdks(settings.cascade_tiers(),
                 gemini_embeddings=settings.embeddings_in_use() == "gemini")
    data_snapshot.get_snapshot()
    marked_data.prepare()  # the look-alike table a turn's first non-ASCII text needs: 50-90 ms
    make_embedder(settings)
    if settings.reranker == "cohere":
        import cohere  # noqa: F401 - what the first reranker made would import (memory/rerank.py)
    if settings.screen_text:
        pools = [shared_pool(settings.ocr_threads)] + ([hurry_pool()] if settings.cover_hurry
                                                       else [])
        for pool in pools:
            pool.submit(thread_engine).result()
    cv2.setNumThreads(1)
    gc.collect()  # what loading left as garbage is freed, not frozen
    gc.freeze()
    sys.setswitchinterval(GIL_SWITCH_S)
