-- Knowledge gaps (issue 16): questions the knowledge base failed (answered with low stated
-- confidence, climbed to the top tier, retried, said unhelpful, or unanswered), clustered by
-- meaning. One row per cluster: its questions, a canonical question and an article outline
-- written by tier 0, its score (frequency x mean severity), and its state: `open`, `dismissed`
-- by ops (a refresh never reopens it), or `resolved` (by ops, or when a document ingested after
-- the gap was found answers it: `resolved_by`). `embedding` is the cluster's centroid (the
-- embedder named in `embed_model`), matched against the next refresh's clusters.
CREATE TABLE knowledge_gaps (
    id                 bigserial PRIMARY KEY,
    tenant             text NOT NULL,
    status             text NOT NULL DEFAULT 'open'
                           CHECK (status IN ('open', 'dismissed', 'resolved')),
    canonical_question text NOT NULL,
    outline            jsonb NOT NULL DEFAULT '[]'::jsonb,
    questions          jsonb NOT NULL,   -- [{text, session_id, turn_no, severity, why}]
    frequency          integer NOT NULL,
    severity           double precision NOT NULL,
    score              double precision NOT NULL,
    embed_model        text NOT NULL,
    embedding          vector NOT NULL,
    resolved_by        text,             -- the document that answers it
    resolved_score     double precision,
    first_seen         timestamptz NOT NULL,
    last_seen          timestamptz NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX knowledge_gaps_tenant ON knowledge_gaps (tenant, status, score DESC);
