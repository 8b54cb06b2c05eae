-- A user who comes back to their still-open room after their session ended (it ends when they
-- leave) is dispatched an agent again under reason `rejoin` (agent/redispatch.py): their own
-- comings and goings are not a session failing at every start, so they have their own, higher
-- bound per room instead of using up the 3 restarts in 10 minutes of `lost`; nor does their
-- claim hand back the memory exchanges of the session that ended, which may still be closing.
ALTER TABLE redispatches DROP CONSTRAINT redispatches_reason_check;
ALTER TABLE redispatches ADD CONSTRAINT redispatches_reason_check
    CHECK (reason IN ('lost', 'unplaced', 'rejoin'));
