-- Many sessions per worker (issue 13): a worker lost with its sessions leaves their users
-- without an agent; every worker of the fleet hears of it (LiveKit's webhook), and the one that
-- inserts the lost agent's row first dispatches the room again. The rows also bound how often
-- one room is re-dispatched.
CREATE TABLE redispatches (
    room_sid       text NOT NULL,
    lost_identity  text NOT NULL,  -- the agent participant that left the room
    room           text NOT NULL,
    at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_sid, lost_identity)
);
