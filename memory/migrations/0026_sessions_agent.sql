-- The agent participant that served each live session (its LiveKit identity): the fleet's
-- re-dispatch watcher (agent/redispatch.py) tells by it a job whose agent came and went (it
-- served a session and is no longer in the room) from one whose agent is still on its way.
ALTER TABLE sessions ADD COLUMN agent text;
