"""The live worker: a LiveKit AgentServer whose jobs run one Sightline session per room.

Dispatch is explicit, by agent name: a room gets Sightline when a dispatch names it (LiveKit API,
token room config, or `lk dispatch create`). Job metadata may name the tenant:
`{"tenant": "acme"}`; the user is the first participant to join.
"""

from __future__ import annotations

import asyncio
import json
import logging

from livekit import rtc
from livekit.agents import AgentServer, JobContext, room_io

from memory.db import Database, DatabaseUnavailable
from vision.screen_signals import ScreenError
from vision.screen_text import ScreenText
from vision.track_source import ScreenShareSubscriber

from .config import Settings
from .session import SessionRuntime

log = logging.getLogger("sightline.worker")

SCREEN_TOPIC = "sightline.screen"  # data messages for apps: new errors seen on the screen
SCREEN_MESSAGE_VERSION = 1


class ScreenSignalPublisher:
    """Publishes each new error seen on the user's screen to the room, as JSON on
    `sightline.screen`, for apps to show; a failed publish is logged, never raised."""

    def __init__(self, room: rtc.Room) -> None:
        self._room = room
        self._sending: set[asyncio.Task[None]] = set()

    def __call__(self, error: ScreenError, read: ScreenText) -> None:
        message = json.dumps({
            "type": "screen_error", "version": SCREEN_MESSAGE_VERSION, "t": read.t,
            "at": read.wall_time, "headline": error.headline, "lines": error.lines,
            "fingerprint": error.fingerprint, "region": list(read.region)})
        task = asyncio.create_task(self._publish(message), name="screen-signal")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish(self, message: str) -> None:
        try:
            await self._room.local_participant.publish_data(
                message, reliable=True, topic=SCREEN_TOPIC)
        except Exception as exc:  # the room may be closing; the error is in the ledger anyway
            log.warning("could not publish a screen signal to the room: %r", exc)


def job_tenant(metadata: str, default: str) -> str:
    """The tenant named in the job's metadata, else the configured default."""
    try:
        tenant = json.loads(metadata).get("tenant") if metadata.strip() else None
    except (json.JSONDecodeError, AttributeError):
        log.warning("job metadata is not a JSON object, using tenant %r", default)
        tenant = None
    return str(tenant) if tenant else default


async def run_session(ctx: JobContext) -> None:
    settings = Settings.from_env()
    await ctx.connect()
    participant = await ctx.wait_for_participant()
    tenant = job_tenant(ctx.job.metadata, settings.tenant)

    db: Database | None
    try:
        db = await Database.open(settings.database_url, settings.data_dir, migrate=False)
    except DatabaseUnavailable as exc:
        log.error("%s; this session keeps going, costs are written to JSONL only", exc)
        db = None

    runtime = await SessionRuntime.open(
        settings, db, tenant=tenant, user_id=participant.identity,
        source="live", room=ctx.room.name,
    )
    screen_share = ScreenShareSubscriber(ctx.room, participant.identity, runtime.screen)
    runtime.screen_memory.error_listeners.append(ScreenSignalPublisher(ctx.room))
    session = runtime.agent_session()

    async def finish() -> None:
        await screen_share.aclose()
        await session.aclose()
        summary = await runtime.close()
        log.info("cost summary %s", json.dumps(summary))
        if db is not None:
            await db.close()

    ctx.add_shutdown_callback(finish)
    # the user left (or the session failed): end the job now rather than when the room empties
    session.on("close", lambda ev: ctx.shutdown(reason=f"session closed: {ev.reason}"))
    await session.start(
        agent=runtime.agent,
        room=ctx.room,
        room_options=room_io.RoomOptions(
            participant_identity=participant.identity,
            audio_input=bool(settings.stt),
            audio_output=bool(settings.tts),
            text_output=room_io.TextOutputOptions(sync_transcription=bool(settings.tts)),
        ),
        record=False,
    )


def build_server(settings: Settings) -> AgentServer:
    """The LiveKit worker. By default it reports LiveKit's CPU-based load, so a busy machine
    stops taking jobs; with SIGHTLINE_MAX_SESSIONS it reports its share of that many sessions,
    for hosts whose CPU is shared with other work (a session needs little: ~1 ms of frame
    analysis per second)."""
    limit = settings.max_sessions
    server = AgentServer(
        ws_url=settings.livekit_url,
        api_key=settings.livekit_api_key,
        api_secret=settings.livekit_api_secret,
        port=settings.health_port,
        **({"load_fnc": lambda srv: len(srv.active_jobs) / limit} if limit else {}),
    )
    server.rtc_session(run_session, agent_name=settings.agent_name)
    return server
