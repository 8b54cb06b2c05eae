"""The live worker: a LiveKit AgentServer whose jobs run one Sightline session per room.

Dispatch is explicit, by agent name: a room gets Sightline when a dispatch names it (LiveKit API,
token room config, or `lk dispatch create`). Job metadata may name the tenant:
`{"tenant": "acme"}`, and its user: `{"user": "<identity>"}` (the fleet's re-dispatch names the
room's user so, agent/redispatch.py); the user is that participant, else the first to join
(within `SIGHTLINE_PARTICIPANT_WAIT_S`, else the job ends), and what the session sends goes to
that user alone: its data messages, its replies' transcript (spoken or not), its transcript of what
it heard them say, and its speech, which only they may subscribe to.

A worker hosts its sessions as threads of one process (livekit-agents' thread executor), so what
sessions only read — the embedder's weights, the OCR engines, the imported code — is loaded
once; a process per session cost 520-660 MB each. A session that raises is contained by its own
event loop, a session that stops running is ended by the watchdog, and a worker that dies is
covered by the fleet (agent/redispatch.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from functools import partial
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from livekit import rtc
from livekit.agents import AgentServer, JobContext, JobExecutorType, JobRequest, room_io
from livekit.agents.ipc.job_executor import JobExecutor
from livekit.agents.ipc.job_thread_executor import ThreadJobExecutor
from livekit.agents.ipc.proc_pool import ProcPool
from livekit.agents.utils.http_server import HttpServer
from livekit.agents.voice.transcription import TranscriptSynchronizer
from livekit.protocol import agent as agent_proto

from memory.db import Database, DatabaseUnavailable
from memory.store import Store
from tools.handoff import HANDOFF_TOPIC
from vision.screen_signals import ScreenError
from vision.screen_text import ScreenText
from vision.track_source import ScreenShareSubscriber

from .assist import ASSIST_TOPIC, DRAFT_TOPIC
from .audio_reception import MicReception
from .capacity import FULL_LOAD, Limits, LoadMeter, LoadReading, shared_read_gate
from .chat_inbox import ChatInbox
from .config import Settings
from .event_log import Event
from .left_open import close_left_open
from .livekit_connection import LiveKitConnection
from .metering import MODEL_KINDS
from .redispatch import Redispatcher
from .reply_transcript import ReplyTranscript, UserTranscript
from .room_publisher import RoomPublisher
from .rtc_events import route_room_events
from .session import CloseSteps, SessionRuntime
from .session_record import COMPLETED, describe_failure
from .speech import import_plugins
from .user_presence import UserPresence
from .watchdog import Watch, process_watchdog, where_thread_is
from .worker_processes import ProcessSlot

log = logging.getLogger("sightline.worker")

SCREEN_TOPIC = "sightline.screen"  # data messages for apps: new errors seen on the screen
SCREEN_MESSAGE_VERSION = 1
COST_TOPIC = "sightline.cost"  # the session's running cost, after each priced call
COST_MESSAGE_VERSION = 1
# the reading a job offer was refused by, set within the task answering that offer
_REFUSED_BY: ContextVar[LoadReading | None] = ContextVar("sightline_refused_by", default=None)
# Postgres connections of one session: each session runs on an event loop of its own, which
# an asyncpg pool cannot share, so a worker holds up to this many per session (README:
# Deployment, sizing Postgres); two let a write and a lookup run side by side
SESSION_CONNECTIONS = 2
# seconds from the worker closing (after its drain) to the process gone: livekit-agents waits
# up to 10 s for a job thread to acknowledge the shutdown and 10 s more for it to end
SHUTDOWN_DEADLINE_S = 40.0
SHUTDOWN_OVERDUE_STATUS = 1
# job threads kept started and initialized ahead of the jobs (livekit-agents' idle "processes"),
# to cut a job's start: a job takes one and the pool starts another within its next 0.1-s turn
# (ipc/proc_pool.py), in a few milliseconds (~0.1 MB each). A job of a burst that finds none
# waits those milliseconds for one started for it, and livekit-agents logs a warning for it.
# One per session slot was up to 10,000 threads (SIGHTLINE_MAX_SESSIONS), started at once
WARM_JOB_THREADS = 8


class ScreenSignalPublisher:
    """Publishes each new error seen on the user's screen to the user (`to`), as JSON on
    `sightline.screen`, for their apps to show."""

    def __init__(self, room: rtc.Room, *, to: str) -> None:
        self._publish = RoomPublisher(room, SCREEN_TOPIC, to=to)

    def __call__(self, error: ScreenError, read: ScreenText) -> None:
        self._publish({
            "type": "screen_error", "version": SCREEN_MESSAGE_VERSION, "t": read.t,
            "at": read.wall_time, "headline": error.headline, "lines": error.lines,
            "fingerprint": error.fingerprint, "region": list(read.region)})


def publish_costs(runtime: SessionRuntime, publish: Callable[[dict[str, Any]], None]) -> None:
    """After each model call and each other event that cost something (speech), the
    session's total so far on `sightline.cost` (the console's cost meter): `{"type": "cost",
    "version": 1, "total_usd", "model_calls", "last": {...}}`."""
    totals = runtime.record.totals  # subscribed first: already holds the event
    calls = [0]

    def on_event(event: Event) -> None:
        if event["kind"] in MODEL_KINDS:
            calls[0] += 1
        elif not event.get("cost_usd"):
            return
        publish({"type": "cost", "version": COST_MESSAGE_VERSION,
                 "total_usd": round(totals.total_cost_usd, 8), "model_calls": calls[0],
                 "last": {"kind": event["kind"], "model": event.get("model"),
                          "cost_usd": event.get("cost_usd"),
                          "purpose": event["detail"].get("purpose", "answer")}})
    runtime.record.events.subscribe(on_event)


def job_tenant(metadata: str, default: str) -> str:
    """The tenant named in the job's metadata, else the configured default: metadata that is
    no JSON object `json` reads (nested too deep, a number of more than 4,300 digits) is one
    line, not a traceback that ends the job."""
    try:
        tenant = json.loads(metadata).get("tenant") if metadata.strip() else None
    except (ValueError, RecursionError, AttributeError):
        log.warning("job metadata is not a JSON object, using tenant %r", default)
        tenant = None
    return str(tenant) if tenant else default


def job_user(metadata: str) -> str | None:
    """The identity of the user the job's metadata names (`"user"`), else None: the session
    serves whoever joins first. A name that is not a non-empty string is one line, and no
    name."""
    try:
        user = json.loads(metadata).get("user") if metadata.strip() else None
    except (ValueError, RecursionError, AttributeError):
        return None  # `job_tenant` said so
    if user is not None and not (isinstance(user, str) and user):
        log.warning("the job metadata's user is not an identity (%r): serving whoever joins "
                    "first", user)
        return None
    return user


class OpenedSession:
    """What a live session has opened so far, closed as one: its room parts (in the order they
    were opened), then its runtime (the summary), then its database pools, each step whatever
    the ones before it did (agent/session.py `CloseSteps`). Closes a session that failed or was
    cancelled as it opened as well as one that ran: either way nothing it opened is left open
    (a session left open in a live worker is closed by nothing: left_open and `costs --close`
    close only a dead worker's)."""

    def __init__(self, room: str) -> None:
        self.room = room
        self.parts: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        self.runtime: SessionRuntime | None = None
        self.databases: list[Database] = []
        self.watch: Watch | None = None

    def part(self, name: str, close: Callable[[], Awaitable[object]]) -> None:
        self.parts.append((name, close))

    async def close(self, outcome: str = COMPLETED,
                    error: str | None = None) -> dict[str, Any] | None:
        """The session's summary (None when it failed before its runtime opened). A part that
        fails to close is one log line and makes the session's outcome `failed`."""
        name = self.runtime.session_id if self.runtime is not None else f"in room {self.room}"
        steps = CloseSteps(name, outcome, error)
        summary = None
        try:
            for part, close in self.parts:
                await steps.run(part, close, None)
        finally:
            try:
                if self.runtime is not None:
                    summary = await self.runtime.close(steps.outcome, steps.error)
            finally:
                for database in self.databases:
                    await steps.run("database pool", database.close, None)
                if self.watch is not None:
                    self.watch.stop()
        return summary


async def _open_databases(settings: Settings, opened: OpenedSession,
                          ) -> tuple[Database | None, Database | None]:
    """The session's pool, or None and one that connects when used (`down`, joined once the
    database answers), each put on `opened` to be closed."""
    try:
        db = await Database.open(settings.database_url, settings.data_dir, migrate=False,
                                 connections=SESSION_CONNECTIONS)
    except DatabaseUnavailable as exc:
        log.error("%s", exc)  # the session goes on without it (SessionRuntime.open)
        # and joins it once it answers (a worker always has a URL: its embedded server's, when
        # it started one, agent/cli_worker.py)
        if not settings.database_url:
            return None, None
        down = await Database.unconnected(settings.database_url,
                                          connections=SESSION_CONNECTIONS)
        opened.databases.append(down)
        return None, down
    opened.databases.append(db)
    return db, None


async def _user_joins(ctx: JobContext, wait_s: float,
                      identity: str | None) -> rtc.RemoteParticipant | None:
    """The room's user, once they join: `identity`, when the job names it (`job_user`: a
    bystander in the room is not the one its agent was dispatched for), else the first to join;
    None, the job ended with one log line, when they did not join within `wait_s` (a page that
    never connected): the job would otherwise hold its session slot until LiveKit closes the
    empty room, minutes later."""
    try:
        async with asyncio.timeout(wait_s):
            return await ctx.wait_for_participant(identity=identity)
    except TimeoutError:
        log.warning("no user%s joined room %s within %g s (SIGHTLINE_PARTICIPANT_WAIT_S): "
                    "ending its job", f" {identity}" if identity else "", ctx.room.name, wait_s)
        ctx.shutdown(reason=f"no user joined within {wait_s:g} s")
        return None


def _failed_to_start(ctx: JobContext, session_id: str | None, error: str) -> None:
    """Ends the job of a session that failed as it started, with one log line naming the room:
    the error says what failed (a traceback would say where, to nobody who can act on it)."""
    session = f"session {session_id}" if session_id else "a session"
    log.error("%s (room %s) failed to start: %s", session, ctx.room.name, error)
    ctx.shutdown(reason=f"the session failed to start: {error}")


async def run_session(ctx: JobContext) -> None:
    settings = Settings.from_env()
    # Two peer connections, as LiveKit clients long had: the server offers each subscription
    # and the SDK answers it at once. With the rtc SDK's default single connection the agent
    # must send an offer of its own when the server asks for one, through a negotiation queue
    # that can drop the request; the share then never arrives (vision/track_source.py).
    await ctx.connect(single_peer_connection=False)
    route_room_events(ctx.room)
    inbox = ChatInbox(ctx.room)  # from the moment the user can see the agent
    opened = OpenedSession(ctx.room.name)
    opened.part("chat inbox", inbox.aclose)
    # until the shutdown callback closes it, whatever fails or is cancelled (livekit-agents
    # cancels an entrypoint still running 15 s after the job's shutdown) closes it here
    try:
        participant = await _user_joins(ctx, settings.participant_wait_s,
                                        job_user(ctx.job.metadata))
        if participant is None:
            await opened.close()
            return
        tenant = job_tenant(ctx.job.metadata, settings.tenant)
        db, down = await _open_databases(settings, opened)
        runtime = opened.runtime = await SessionRuntime.open(
            settings, db, tenant=tenant, user_id=participant.identity,
            source="live", room=ctx.room.name, agent=ctx.room.local_participant.identity,
            read_gate=shared_read_gate(settings), down=down,
        )
        # closed before the runtime: the row has the user's leaving before it is ended
        presence = UserPresence(ctx.room, participant.identity, runtime.record.events,
                                Store(db.pool) if db is not None else None)
        opened.part("user presence", presence.aclose)
        connection = LiveKitConnection(ctx.room, runtime.record.events)
        opened.part("livekit connection", connection.aclose)
        screen_share = ScreenShareSubscriber(ctx.room, participant.identity, runtime.screen)
        opened.part("screen share", screen_share.aclose)
        # what the session sends goes to its user alone (agent/room_publisher.py), and only
        # they may subscribe to its tracks: set before session.start publishes its speech, and
        # kept by the server for each track published after
        user = participant.identity
        ctx.room.local_participant.set_track_subscription_permissions(
            allow_all_participants=False, participant_permissions=[
                rtc.ParticipantTrackPermission(participant_identity=user, allow_all=True)])
        runtime.screen_memory.error_listeners.append(ScreenSignalPublisher(ctx.room, to=user))
        runtime.handoff.listeners.append(RoomPublisher(ctx.room, HANDOFF_TOPIC, to=user))
        runtime.assist.listeners.append(RoomPublisher(ctx.room, ASSIST_TOPIC, to=user))

        def on_draft(packet: rtc.DataPacket) -> None:
            sender = packet.participant.identity if packet.participant else None
            if packet.topic == DRAFT_TOPIC and sender == participant.identity:
                runtime.assist.drafted(packet.data.decode("utf-8", errors="replace"))
        ctx.room.on("data_received", on_draft)
        publish_costs(runtime, RoomPublisher(ctx.room, COST_TOPIC, to=user))
        session = runtime.agent_session()
        opened.part("agent session", session.aclose)
        # the replies' transcript, to the user alone, in as few room requests as each allows
        # (agent/reply_transcript.py). Set before session.start, so that a reply begun as it
        # starts is the user's alone too and livekit-agents' RoomIO makes no transcript output
        # of its own (it would send both the replies' and the user's speech's to the whole room)
        replies = ReplyTranscript(ctx.room, to=user)
        session.output.transcription = replies
        if runtime.speech_outages is not None:
            runtime.speech_outages.replies = replies  # what reached the chat, for a resend
        if settings.stt is not None:
            # what the agent heard them say, to them alone
            heard = UserTranscript(ctx.room, to=user)
            opened.part("user transcript", heard.aclose)  # after the session, which feeds it
            session.on("user_input_transcribed", heard.transcribed)
            # its microphone's WebRTC counts, read as the user starts and stops
            microphone = MicReception(ctx.room, participant.identity)
            opened.part("microphone reception", microphone.aclose)
            session.on("user_state_changed", lambda ev: microphone.read())
            runtime.heard_reception = microphone.take
        opened.watch = process_watchdog(settings.session_stall_s).watch(
            f"{runtime.session_id} (room {ctx.room.name})",
            lambda reason: ctx.shutdown(reason=reason))

        # how the session ended, as `finish` records it: completed, unless its start fails
        ending: tuple[str, str | None] = (COMPLETED, None)

        async def finish(reason: str) -> None:
            summary = await opened.close(*ending)
            log.info("session %s ended (%s); cost summary %s", runtime.session_id,
                     reason or "job done", json.dumps(summary))

        ctx.add_shutdown_callback(finish)
    except BaseException as exc:
        outcome, error = describe_failure(exc)
        await opened.close(outcome, error)
        if not isinstance(exc, Exception):
            raise
        _failed_to_start(ctx, opened.runtime.session_id if opened.runtime else None, error)
        return
    # the user left (or the session failed): end the job now rather than when the room empties
    session.on("close", lambda ev: ctx.shutdown(reason=f"session closed: {ev.reason}"))
    try:
        await session.start(
            agent=runtime.agent,
            room=ctx.room,
            room_options=room_io.RoomOptions(
                participant_identity=participant.identity,
                audio_input=settings.stt is not None,
                audio_output=settings.tts is not None,
                text_input=False,  # the inbox reads the chat
                text_output=False,  # `replies` and `heard`, above
            ),
            record=False,
            # livekit-agents would broadcast each of its session events (states, transcripts,
            # usage) as a byte stream on `lk.agent.session`, for a RemoteSession client
            # Sightline does not use; at 30 sessions on 2 cores those streams held up the
            # users' questions and the replies (bench.load: 110 of 150 answered with them,
            # 145 without)
            session_host=False,
        )
        if settings.tts is not None:
            # paced by the speech as livekit-agents' room output paces its own: word by word as
            # the audio plays, at once while it is off (agent/speech_outage.py). The speech
            # output is RoomIO's, made as the session starts: a reply begun before is not paced
            speech = session.output.audio
            assert speech is not None, "RoomIO made it (audio_output=True)"
            paced = TranscriptSynchronizer(next_in_chain_audio=speech, next_in_chain_text=replies)
            opened.part("transcript pacing", paced.aclose)
            session.output.audio = paced.audio_output
            session.output.transcription = paced.text_output
        inbox.attach(session, participant.identity,
                     lambda detail: runtime.record.events.record("chat", detail=detail),
                     on_text=runtime.turn_context.prefetch,
                     key=partial(runtime.conversation.named_key, participant.identity))
    except BaseException as exc:
        ending = describe_failure(exc)
        if not isinstance(exc, Exception):
            raise
        _failed_to_start(ctx, runtime.session_id, ending[1])
    finally:
        # after what feeds it, and also when the start failed: a reply begun as it started
        # is in `replies`
        opened.part("reply transcript", replies.aclose)


def initialize_before_closing(executor: JobExecutor) -> None:
    """Makes a job thread that the pool stops warming closable (livekit-agents 1.8.9).

    The pool warms idle job threads (`start()`, then `initialize()`, which sends the thread its
    `InitializeRequest` and waits for the answer); closing the pool cancels the warm-ups in
    flight and closes each executor. A thread must hear `InitializeRequest` first and then read
    its messages; cancelled part-way, two things went wrong:
    - cancelled as `start()` finished (or while it still ran, shielded), the executor's close
      sent `ShutdownRequest` as the thread's first message: the thread died on an assertion
      (a traceback on stderr), never acknowledged, and the close waited forever; seen at the
      end of a `bench.load` run, the worker then exiting with status 1 at its 40-s deadline;
    - cancelled while waiting for the thread's answer, the executor never settled its
      initialization (a cancellation is not an `Exception`), so nothing read the thread's
      answer to the shutdown request and the close waited forever.
    So here a warm-up's start and initialization run to their end once begun (the pool's
    cancellation still reaches the pool), and closing waits for them: a started thread is
    always initialized, then told to shut down, and answers both. A thread whose
    initialization fails or times out (`initialize_timeout`) is closed as before. (livekit-agents'
    process executor kills a process that never initialized; a thread cannot be killed.)"""
    if not isinstance(executor, ThreadJobExecutor):
        return
    start, initialize, close = executor.start, executor.initialize, executor.aclose
    steps: dict[str, asyncio.Future[None]] = {}

    def begun(name: str, step: Callable[[], Awaitable[None]]) -> asyncio.Future[None]:
        if name not in steps:
            steps[name] = asyncio.ensure_future(step())
        return steps[name]

    async def start_whole() -> None:
        await asyncio.shield(begun("start", start))

    async def initialize_whole() -> None:
        await asyncio.shield(begun("initialize", initialize))

    async def initialize_then_close() -> None:
        with contextlib.suppress(Exception):
            if "start" in steps:
                await steps["start"]
            if executor.started:
                await begun("initialize", initialize)
        await close()

    executor.start = start_whole  # type: ignore[method-assign]
    executor.initialize = initialize_whole  # type: ignore[method-assign]
    executor.aclose = initialize_then_close  # type: ignore[method-assign]


def exit_if_still_running(deadline_s: float) -> threading.Timer:
    """Ends the process `deadline_s` from now, with status SHUTDOWN_OVERDUE_STATUS and a log
    line saying where the threads still running are, unless it has exited by then.

    Job threads cannot be killed and are not daemons: a session stuck in native code, or a
    livekit-agents close that waits on something that never comes, would otherwise keep a
    stopped worker alive for good, holding its deploy or scale-down."""

    def overdue() -> None:
        threads = [f"{t.name} at {where_thread_is(t)}" for t in threading.enumerate()
                   if t is not threading.current_thread() and not t.daemon]
        log.critical("the worker did not exit within %g s of shutting down (threads still "
                     "running: %s): exiting with status %d", deadline_s,
                     "; ".join(threads) or "none", SHUTDOWN_OVERDUE_STATUS)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(SHUTDOWN_OVERDUE_STATUS)

    timer = threading.Timer(deadline_s, overdue)
    timer.daemon = True
    timer.name = "sightline-exit-deadline"
    timer.start()
    return timer


_GAVE_UP = "failed to connect to livekit after"  # livekit-agents' error, its retries used up


class _GaveUpSaidOnce(logging.Filter):
    """livekit-agents logs its retries used up with a traceback (`Error in _connection_task`)
    before raising it out of `run`; the worker says it in one line as it exits
    (agent/cli_worker.py), so the traceback is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, RuntimeError) and str(error).startswith(_GAVE_UP))


_GAVE_UP_SAID_ONCE = _GaveUpSaidOnce()  # one instance: addFilter adds it once per process


class SightlineServer(AgentServer):
    """livekit-agents' AgentServer with Sightline's hosting: sessions as threads, a load that
    is the fullest of sessions, memory and CPU (agent/capacity.py), a logged reason for each
    refused job, the webhook endpoint that re-dispatches a lost worker's rooms, and a close
    that ends: job threads whose warm-up the close cuts short close too, and with
    `exit_deadline_s` the process exits that long after the close began, whatever still runs."""

    def __init__(self, settings: Settings, limits: Limits,
                 exit_deadline_s: float | None = None) -> None:
        self.meter = LoadMeter(limits)
        self.reading: LoadReading | None = None  # the last one reported to LiveKit
        self.offer_reading = self.meter.read(0)  # the last one a job offer was answered by
        self._settings = settings
        self._exit_deadline_s = exit_deadline_s
        self._exit_timer: threading.Timer | None = None
        # whether the worker's connection to LiveKit is up (from its registration on), and
        # whether it is meant to be: the health check answers by them
        self._connected = False
        self._registers = True
        # why the worker stopped on its own: LiveKit unreachable once its retries were used up
        self.gave_up: str | None = None
        logging.getLogger("livekit.agents").addFilter(_GAVE_UP_SAID_ONCE)
        import_plugins(settings)
        super().__init__(
            ws_url=settings.livekit_url,
            api_key=settings.livekit_api_key,
            api_secret=settings.livekit_api_secret,
            port=settings.health_port,
            # livekit-agents' Prometheus server: its metrics and Sightline's (observability.py)
            prometheus_port=settings.metrics_port or None,
            job_executor_type=JobExecutorType.THREAD,
            # the load below reaches FULL_LOAD exactly when the worker is full; livekit-agents
            # offers jobs while load + (jobs accepted, not started) x load per job < threshold
            load_threshold=FULL_LOAD,
            # job threads started ahead of the jobs, however many sessions the worker takes
            # (jobs are admitted by `_get_effective_load` below, not by this count)
            num_idle_processes=min(limits.sessions, WARM_JOB_THREADS),
            load_fnc=self._load,
            drain_timeout=settings.drain_timeout_s,
            max_retry=settings.livekit_retries,
        )
        # jobs accepted and still starting: from their request to livekit-agents releasing
        # their reservation, which is after the job already runs (_sessions_taken)
        self._starting: set[str] = set()
        self.rtc_session(run_session, agent_name=settings.agent_name, on_request=self._take_job)

    @property
    def _proc_pool(self) -> ProcPool:
        return self._sightline_pool

    @_proc_pool.setter
    def _proc_pool(self, pool: ProcPool) -> None:
        # AgentServer.run creates the pool and starts it straight away: this is the one place
        # to see each executor it creates before it starts (a test's stand-in pool has none)
        if isinstance(pool, ProcPool):
            pool.on("process_created", initialize_before_closing)
        self._sightline_pool = pool

    @property
    def _http_server(self) -> HttpServer | None:
        return self._sightline_http

    @_http_server.setter
    def _http_server(self, server: HttpServer | None) -> None:
        # AgentServer.run creates its health server and adds its routes before starting it
        if server is not None:
            server.app.middlewares.append(self._health_middleware())
        self._sightline_http = server

    def _health_middleware(self) -> Middleware:
        """The health check: 503 while the worker is not connected to LiveKit (not
        registered yet, or its connection lost and being retried), else livekit-agents' own
        check. livekit-agents 1.8.9 says OK before registering and while it retries, and 503
        only once it gave up (about two minutes of retries); a worker that no job can reach
        is not healthy."""
        @web.middleware
        async def health(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path == "/" and self._registers and not self._connected:
                return web.Response(status=503, text=(
                    "connection to LiveKit lost, reconnecting" if self.id != "unregistered"
                    else "not registered with LiveKit yet"))
            return await handler(request)
        return health

    async def _run_ws(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        # livekit-agents runs the connection here from its registration until it ends
        self._connected = True
        try:
            await super()._run_ws(ws)
        finally:
            self._connected = False

    async def aclose(self) -> None:
        if self._exit_deadline_s is not None and self._exit_timer is None:
            self._exit_timer = exit_if_still_running(self._exit_deadline_s)
        await super().aclose()

    def _load(self) -> float:
        reading = self.meter.read(len(self.active_jobs))
        previous, self.reading = self.reading, reading
        if reading.fullness >= 1.0 and (previous is None or previous.fullness < 1.0):
            log.info("worker is full: %s", reading.describe())
        return reading.load

    async def _take_job(self, request: JobRequest) -> None:
        """Accepts the job (livekit-agents asks only when it counted room for it), marked as
        starting until livekit-agents has released its reservation.

        livekit-agents releases a reservation in a done callback of the task running this
        function, registered when it created the task; the one registered here runs right
        after it (asyncio runs a task's done callbacks in order, adjacent), so no offer is
        answered between the two."""
        self._starting.add(request.id)
        task = asyncio.current_task()
        assert task is not None, "livekit-agents runs the request function in a task"
        task.add_done_callback(lambda _: self._starting.discard(request.id))
        await request.accept()

    def _sessions_taken(self) -> int:
        """The jobs this worker runs or has accepted, each once.

        livekit-agents holds a reservation for an accepted job until launching it has
        returned, but the job counts as active from the moment its thread takes it: for
        those moments `active_jobs + _reserved_slots` counted it twice, and on a loaded
        machine the sixth job of a burst was refused at "6 of 6 sessions" with five taken.
        """
        active = {info.job.id for info in self.active_jobs}
        not_yet_requested = max(0, self._reserved_slots - len(self._starting))
        return len(active | self._starting) + not_yet_requested

    def _get_effective_load(self) -> float:
        # livekit-agents 1.8.9 estimates the jobs it accepted but has not started from the last
        # load reading, which its periodic update may overwrite with an older one: a burst then
        # overfilled a worker (8 sessions of 6). Here they count as sessions, from the jobs
        # themselves (a private hook of the pinned version, covered by tests/test_capacity.py
        # and tests/test_fleet.py).
        # It decides both the answer to an offer and the status (full or not) sent to LiveKit.
        self.offer_reading = self.meter.read(self._sessions_taken())
        return self.offer_reading.load

    def _is_available(self) -> bool:
        available = super()._is_available()
        if not available and not self.draining:
            _REFUSED_BY.set(self.offer_reading)  # what _get_effective_load just read
        return available

    async def _answer_availability(
        self, msg: agent_proto.AvailabilityRequest, *, received_at: float | None = None
    ) -> None:
        # livekit-agents refuses a job it has no room for without a word, by a load it reads
        # after the offer arrives; the reading it decided by goes to the log here
        _REFUSED_BY.set(None)
        await super()._answer_availability(msg, received_at=received_at)
        if (reading := _REFUSED_BY.get()) is not None:
            log.warning("refused the job for room %s: %s (LiveKit offers it to another worker; "
                        "if none has room, the fleet dispatches it again once one has)",
                        msg.job.room.name, reading.describe())

    async def run(self, *, devmode: bool = False, unregistered: bool = False) -> None:
        self._registers = not unregistered
        redispatcher = None
        if self._settings.webhook_port and not unregistered:
            redispatcher = Redispatcher(self._settings, self._settings.database_url or "")
            await redispatcher.start()
        # what a killed worker of this host left open, closed beside the registration
        sweep = None if unregistered else asyncio.create_task(
            close_left_open(self._settings), name="close-left-open")
        try:
            await super().run(devmode=devmode, unregistered=unregistered)
        except RuntimeError as exc:
            # livekit-agents' own flag for its connection retries used up; it raises out of
            # `run`, and its CLI logs that with a traceback and exits with status 0
            if not (self._connection_failed and str(exc).startswith(_GAVE_UP)):
                raise
            self.gave_up = (f"could not reach LiveKit at {self._settings.livekit_url} ({exc}; "
                            f"SIGHTLINE_LIVEKIT_RETRIES={self._settings.livekit_retries})")
        finally:
            if sweep is not None:
                sweep.cancel()
                await asyncio.gather(sweep, return_exceptions=True)
            if redispatcher is not None:
                await redispatcher.aclose()


def build_server(settings: Settings, exit_deadline_s: float | None = None,
                 slot: ProcessSlot | None = None) -> SightlineServer:
    """The worker's server; as one of the worker's processes (`slot`), with its share of the
    worker's limits."""
    limits = Limits.for_host(settings.max_sessions, settings.worker_memory_mb)
    if slot is not None:
        limits = limits.share(slot.index, slot.count)
    return SightlineServer(settings, limits, exit_deadline_s)
