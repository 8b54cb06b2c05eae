-- When a live session's user left its room in a way the session ends on (they closed the page,
-- the room was deleted), written by the session the moment it sees them go. The session's own
-- `ended_at` comes only once it has closed (its memory updates are model calls): until then the
-- fleet's watcher (agent/redispatch.py) took someone who joined after the user left for a
-- bystander, and an agent that left with its user for a lost one.
ALTER TABLE sessions ADD COLUMN user_left_at timestamptz;
