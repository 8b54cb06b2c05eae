-- Long-term memory per tenant and user (issue 5): past messages become searchable (a vector of
-- the embedder named in `embed_model`, and a keyword tsvector), facts extracted from the
-- conversation are kept one row per key (updated, never appended forever), and one rolling
-- summary per user. Recall is per user, a few thousand rows at most: it scans that user's rows
-- through the (tenant, user_id) indexes exactly, so no HNSW index is needed here.
ALTER TABLE messages
    ADD COLUMN embed_model text,
    ADD COLUMN embedding   vector,
    ADD COLUMN tsv         tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED;
CREATE INDEX messages_tsv ON messages USING gin (tsv);

CREATE TABLE memory_facts (
    id          bigserial PRIMARY KEY,
    tenant      text NOT NULL,
    user_id     text NOT NULL,
    key         text NOT NULL,
    text        text NOT NULL,
    embed_model text,
    embedding   vector,
    session_id  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, user_id, key)
);

CREATE TABLE memory_summaries (
    tenant      text NOT NULL,
    user_id     text NOT NULL,
    text        text NOT NULL,
    session_id  text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, user_id)
);
