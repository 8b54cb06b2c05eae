"""JSON messages from a session to its user's apps, on a data topic.

Apps subscribe by topic (`room.on("data_received")` / `RoomEvent.DataReceived` filtered by topic):
`sightline.screen` (new errors on screen), `sightline.handoff` (handed to a person),
`sightline.assist` (live assist) and `sightline.cost` (the session's running cost). Each message
goes to the participant the session serves alone: they are built from that user's screen and
memory, and anyone else in the room (a second participant, a supervisor's page) must not read
them. Publishing is reliable and off the caller's path: a message is sent by a task, and a
failed publish (a room closing) is logged, never raised; while LiveKit is unreachable
(the session's connection lost, one line says so), one that fails is not said again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from livekit import rtc

log = logging.getLogger("sightline.worker")

# how long after a failed publish the room's state is read again: the rtc SDK fails a publish
# as soon as its engine closes, and reports the lost connection a moment later (a LiveKit killed
# under tests/test_fleet.py's sessions drew one warning per message in between)
STATE_SETTLE_S = 2.0


class RoomPublisher:
    """Publishes dicts as JSON on one topic of one room, to the participant `to`."""

    def __init__(self, room: rtc.Room, topic: str, *, to: str) -> None:
        self._room = room
        self.topic = topic
        self._to = [to]
        self._sending: set[asyncio.Task[None]] = set()

    def __call__(self, message: dict[str, Any]) -> None:
        task = asyncio.create_task(self._publish(json.dumps(message)), name=self.topic)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish(self, message: str) -> None:
        if not self._room.isconnected():
            log.debug("not published on %s: the room is disconnected", self.topic)
            return
        try:
            await self._room.local_participant.publish_data(
                message, reliable=True, topic=self.topic, destination_identities=self._to)
        except Exception as exc:  # the room may be closing; the event log has the message
            if self._room.connection_state == rtc.ConnectionState.CONN_CONNECTED:
                await asyncio.sleep(STATE_SETTLE_S)  # off the caller's path: a task
            if self._room.connection_state != rtc.ConnectionState.CONN_CONNECTED:
                # LiveKit unreachable (agent/livekit_connection.py said so in one line): a
                # warning per message would bury that line
                log.debug("not published on %s while LiveKit is unreachable: %r", self.topic,
                          exc)
                return
            log.warning("could not publish on %s to %s: %r", self.topic, self._to[0], exc)
