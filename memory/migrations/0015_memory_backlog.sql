-- Exchanges waiting for the memory model: a session that ran without the database could not
-- read what the user's memory held, so it asked the model nothing and kept each exchange (a
-- question and the answer to it) on disk; the spill import writes them here, and the user's
-- next session with the database analyses them against what is remembered by then, oldest
-- first (memory/keeper.py, its catch-up). A session claims a user's rows while it analyses
-- them (`claimed_by`, `claimed_at`), so two sessions of one user at once do not both; a claim
-- older than ten minutes is taken to be a session that died. A row whose analysis failed
-- (the model down, an unusable reply) is tried again by a later session, three times in all.
CREATE TABLE memory_backlog (
    id             bigserial PRIMARY KEY,
    tenant         text NOT NULL,
    user_id        text NOT NULL,
    session_id     text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq            integer NOT NULL,
    user_text      text NOT NULL,
    assistant_text text NOT NULL,
    said_at        timestamptz NOT NULL,
    attempts       integer NOT NULL DEFAULT 0,
    claimed_by     text,
    claimed_at     timestamptz,
    UNIQUE (session_id, seq)
);
CREATE INDEX memory_backlog_user ON memory_backlog (tenant, user_id, id);
