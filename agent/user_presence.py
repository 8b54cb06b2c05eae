"""Whether a live session's user is in its room, recorded as it changes.

A session ends when its user leaves, but its row's `ended_at` is written only once it has
closed (livekit-agents takes the agent out of the room first, and the memory updates that
follow are model calls): the fleet's watcher (agent/redispatch.py) could not tell someone who
joined in those seconds from a bystander who was there while the session ran, nor an agent
that left with its user from one whose worker died. So the session writes when its user left
(`sessions.user_left_at`) the moment it sees them go, and clears it should they come back to
the same session (a connection dropped, not closed). Each change is also an event in the
session's log (`left`, with LiveKit's reason, and `back`).
"""

from __future__ import annotations

import asyncio
import logging

from livekit import rtc

from memory.store import Store

from .event_log import EventLog

log = logging.getLogger("sightline.session")


class UserPresence:
    """The session's user (`identity`) leaving `room` and coming back: each an event, and the
    latest on the row. Writes go one at a time, each the latest state, so a leave and a return
    in quick succession never leave the row saying the user is away while they are there."""

    def __init__(self, room: rtc.Room, identity: str, events: EventLog,
                 store: Store | None) -> None:
        self._room, self._identity = room, identity
        self._events, self._store = events, store
        self._left_at: float | None = None
        self._unwritten = False  # a change the row does not have yet
        self._writing: asyncio.Task[None] | None = None
        room.on("participant_disconnected", self._on_left)
        room.on("participant_connected", self._on_back)

    def _on_left(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity == self._identity:
            reason = participant.disconnect_reason or rtc.DisconnectReason.UNKNOWN_REASON
            event = self._events.record(
                "left", detail={"reason": rtc.DisconnectReason.Name(reason)})
            self._changed(event["ts"])

    def _on_back(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity == self._identity:
            self._events.record("back", detail={})
            self._changed(None)

    def _changed(self, left_at: float | None) -> None:
        self._left_at, self._unwritten = left_at, True
        if self._store is not None and (self._writing is None or self._writing.done()):
            self._writing = asyncio.create_task(self._write(self._store), name="user-presence")

    async def _write(self, store: Store) -> None:
        while self._unwritten:
            self._unwritten = False
            left_at = self._left_at
            try:
                await store.mark_user_left(self._events.session_id, left_at)
            except Exception as exc:  # the database away: the watcher reads `ended_at` instead
                log.warning("session %s could not record in the database that its user %s: "
                            "%s", self._events.session_id,
                            "left" if left_at is not None else "came back", exc)

    async def aclose(self) -> None:
        """Stop watching, and wait for the write under way (before the session's row is
        ended)."""
        self._room.off("participant_disconnected", self._on_left)
        self._room.off("participant_connected", self._on_back)
        if self._writing is not None:
            await self._writing
