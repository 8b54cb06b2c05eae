-- Screen memory (issue 12): what appeared on the user's screen, read locally from the kept
-- frames' changed regions, one row per read that found new text. Searchable like messages (a
-- vector of the embedder named in `embed_model`, and a keyword tsvector); recall scans one
-- user's rows through the (tenant, user_id) index, so no HNSW index is needed here either.
CREATE TABLE screen_events (
    id           bigserial PRIMARY KEY,
    session_id   text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    tenant       text NOT NULL,
    user_id      text,
    t            double precision NOT NULL,  -- seconds into the screen share
    at           timestamptz NOT NULL,       -- when the frame was kept
    content_type text NOT NULL,
    reason       text NOT NULL,              -- why the change detector kept the frame
    region       integer[] NOT NULL,         -- x, y, width, height of what was read
    text         text NOT NULL,              -- the lines that appeared, one per line
    words        text NOT NULL,              -- the text split for search (see screen_timeline)
    is_error     boolean NOT NULL DEFAULT false,
    embed_model  text,
    embedding    vector,
    tsv          tsvector GENERATED ALWAYS AS (to_tsvector('english', words)) STORED
);
CREATE INDEX screen_events_user ON screen_events (tenant, user_id, at DESC);
CREATE INDEX screen_events_session ON screen_events (session_id, t);
CREATE INDEX screen_events_tsv ON screen_events USING gin (tsv);
CREATE INDEX screen_events_errors ON screen_events (tenant, user_id, at DESC) WHERE is_error;
