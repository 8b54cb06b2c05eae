-- Why a room was dispatched again (agent/redispatch.py): `lost`, its agent left while its user
-- stayed (a worker died); `unplaced`, no worker had room for its dispatch when the user came
-- (the whole fleet full), so it is dispatched again once one may. Each reason has its own
-- bound per room: a session that fails at every start is restarted 3 times in 10 minutes, while
-- a user waiting for a full fleet is retried for as long as they stay.
ALTER TABLE redispatches ADD COLUMN reason text NOT NULL DEFAULT 'lost'
    CHECK (reason IN ('lost', 'unplaced'));
