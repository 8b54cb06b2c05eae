-- A claim whose dispatch LiveKit took (agent/redispatch.py): only an agent that joins under such a
-- claim is removed as one given up for gone, so that a claimant that finds the agent there after
-- its claim, and keeps it, is not raced by a worker that heard it join. Claims taken before this
-- column are left as not dispatched: their late agents stay (two agents, not none).
ALTER TABLE redispatches ADD COLUMN dispatched boolean NOT NULL DEFAULT false;
