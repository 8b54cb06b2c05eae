"""The session's own connection to LiveKit lost and back, recorded as it happens.

LiveKit's SDK resumes or restarts a dropped connection by itself, and the session goes on
once it is back: its user, their share and the conversation are where they were (a network
blip, or a LiveKit server that crashed and restarted). Nothing else in the session sees the
gap, so a session that went quiet for seconds would leave ops guessing why. Each loss is a
`livekit_lost` event and one warning line; its end a `livekit_back` event with how long the
session was offline (`offline_s`) and one line. A connection the SDK gives up on ends the
session as LiveKit's disconnect does: its close reason says so.
"""

from __future__ import annotations

import logging
import time

from livekit import rtc

from .event_log import EventLog

log = logging.getLogger("sightline.session")


class LiveKitConnection:
    """`room`'s connection lost and back, as events of the session's log (`events`)."""

    def __init__(self, room: rtc.Room, events: EventLog) -> None:
        self._room, self._events = room, events
        self._lost_at: float | None = None  # monotonic, while the SDK reconnects
        room.on("reconnecting", self._on_lost)
        room.on("reconnected", self._on_back)

    def _on_lost(self) -> None:
        if self._lost_at is not None:
            return  # the SDK's next attempt of the same outage
        self._lost_at = time.monotonic()
        self._events.record("livekit_lost", detail={})
        log.warning("session %s lost its connection to LiveKit (room %s); LiveKit's SDK is "
                    "reconnecting, and the session goes on once it is back",
                    self._events.session_id, self._room.name)

    def _on_back(self) -> None:
        if self._lost_at is None:
            return
        offline_s = time.monotonic() - self._lost_at
        self._lost_at = None
        self._events.record("livekit_back", detail={"offline_s": round(offline_s, 1)})
        log.info("session %s is connected to LiveKit again after %.1f s offline",
                 self._events.session_id, offline_s)

    async def aclose(self) -> None:
        self._room.off("reconnecting", self._on_lost)
        self._room.off("reconnected", self._on_back)
