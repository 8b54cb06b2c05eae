"""When a live session's user left its room for good, recorded as it happens.

A session ends when its user leaves, but its row's `ended_at` is written only once it has
closed (livekit-agents takes the agent out of the room first, and the memory updates that
follow are model calls): the fleet's watcher (agent/redispatch.py) could not tell someone who
joined in those seconds from a bystander who was there while the session ran, nor an agent
that left with its user from one whose worker died. So the session writes when its user left
(`sessions.user_left_at`) the moment it sees them go, when theirs is a leave the session ends
on (livekit-agents' own list: they closed the page, the room was deleted, they were refused).
A connection that dropped otherwise keeps the session waiting for them, and writes nothing: a
worker that dies meanwhile has lost a session, not seen its user leave. Each leaving and
coming back is an event in the session's log (`left`, with LiveKit's reason, and `back`).
"""

from __future__ import annotations

import asyncio
import logging

from livekit import rtc
from livekit.agents.voice.room_io.types import DEFAULT_CLOSE_ON_DISCONNECT_REASONS

from memory.store import Store

from .event_log import EventLog

log = logging.getLogger("sightline.session")

WRITE_TRIES = 3  # a failed write of the leaving is tried again this many times in all ...
RETRY_S = 1.0  # ... after this long, doubling: a database blip must not lose it
CLOSE_WAIT_S = 5.0  # what the session's close waits for a write still under way


def _reason_name(reason: int) -> str:
    """LiveKit's name for a disconnect reason; its number for one this SDK does not know."""
    return (rtc.DisconnectReason.Name(reason)  # type: ignore[arg-type]
            if reason in rtc.DisconnectReason.values() else str(reason))


class UserPresence:
    """The session's user (`identity`) leaving `room` and coming back: each an event; the
    leave the session ends on, also on its row (once: after it nothing more is watched)."""

    def __init__(self, room: rtc.Room, identity: str, events: EventLog,
                 store: Store | None) -> None:
        self._room, self._identity = room, identity
        self._events, self._store = events, store
        self._writing: asyncio.Task[None] | None = None
        room.on("participant_disconnected", self._on_left)
        room.on("participant_connected", self._on_back)

    def _on_left(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity != self._identity:
            return
        reason = participant.disconnect_reason or rtc.DisconnectReason.UNKNOWN_REASON
        event = self._events.record("left", detail={"reason": _reason_name(reason)})
        if reason in DEFAULT_CLOSE_ON_DISCONNECT_REASONS:
            self._stop_watching()  # the session ends: one who comes back gets a new one
            if self._store is not None:
                self._writing = asyncio.create_task(self._write(self._store, event["ts"]),
                                                    name="user-left")

    def _on_back(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity == self._identity:
            self._events.record("back", detail={})

    async def _write(self, store: Store, left_at: float) -> None:
        wait_s = RETRY_S
        for attempt in range(1, WRITE_TRIES + 1):
            try:
                await store.mark_user_left(self._events.session_id, left_at)
                return
            except Exception as exc:  # the database away: tried again, then one line
                if attempt == WRITE_TRIES:
                    self._unwritten(f"{WRITE_TRIES} tries: {str(exc) or type(exc).__name__}")
                    return
            await asyncio.sleep(wait_s)
            wait_s *= 2

    def _unwritten(self, why: str) -> None:
        log.warning("session %s could not record in the database that its user left (%s); the "
                    "fleet takes its agent for lost should they come back while it closes",
                    self._events.session_id, why)

    def _stop_watching(self) -> None:
        self._room.off("participant_disconnected", self._on_left)
        self._room.off("participant_connected", self._on_back)

    async def aclose(self) -> None:
        """Stop watching, and wait for the write under way (before the session's row is
        ended), `CLOSE_WAIT_S` at most: a database that does not answer must not hold up the
        session's summary."""
        self._stop_watching()
        if self._writing is None:
            return
        try:
            await asyncio.wait_for(self._writing, CLOSE_WAIT_S)
        except TimeoutError:
            self._unwritten(f"still trying after {CLOSE_WAIT_S:g} s as the session closed")
