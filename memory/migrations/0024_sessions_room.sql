-- Who a room's agent is for (agent/redispatch.py): the user of the room's latest session, looked
-- up by the fleet's re-dispatch watcher at each of its looks at a room where someone waits.
CREATE INDEX sessions_room_started ON sessions (room, started_at DESC);
