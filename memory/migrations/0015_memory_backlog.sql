-- Exchanges waiting for the memory model (memory/backlog.py). A session that ran without the
-- database could not read what the user's memory held, so it asked the model nothing and kept
-- each exchange (a question and the answer to it) on disk; the spill import writes them here.
-- A session whose memory model failed on an exchange (down, or its answer unusable) writes it
-- here too, its first attempt counted. The user's next session with the database analyses
-- them against what is remembered by then, oldest first, before its own (memory/keeper.py). A
-- session claims a user's rows while it analyses them (`claimed_by`, `claimed_at`), so two
-- sessions of one user at once do not both; a claim older than ten minutes is taken to be a
-- session that died. A row whose analysis fails is tried again later, three times in all.
CREATE TABLE memory_backlog (
    id             bigserial PRIMARY KEY,
    tenant         text NOT NULL,
    user_id        text NOT NULL,
    -- the session the exchange was said in; like memory_facts', no foreign key: a row written
    -- with the keeper's memory rows must never fail their transaction
    session_id     text NOT NULL,
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
