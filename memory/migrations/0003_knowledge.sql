-- Knowledge base (issue 5): documents and their chunks, per tenant. Vectors have no fixed
-- dimension here: each row records the embedder (`embed_model`, model and dimension), and the
-- store creates one HNSW index per embedder over `embedding::vector(dim)` when it first meets
-- it. Keyword search uses the generated tsvector and its GIN index.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE kb_documents (
    id           bigserial PRIMARY KEY,
    tenant       text NOT NULL,
    source       text NOT NULL,
    content_hash text NOT NULL,
    metadata     jsonb NOT NULL DEFAULT '{}'::jsonb,
    ingested_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, source)
);

CREATE TABLE kb_chunks (
    id           bigserial PRIMARY KEY,
    tenant       text NOT NULL,
    document_id  bigint NOT NULL REFERENCES kb_documents (id) ON DELETE CASCADE,
    chunk_key    text NOT NULL,
    position     integer NOT NULL,
    text         text NOT NULL,
    content_hash text NOT NULL,
    embed_model  text NOT NULL,
    embedding    vector NOT NULL,
    metadata     jsonb NOT NULL DEFAULT '{}'::jsonb,
    tsv          tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED
);
CREATE INDEX kb_chunks_tenant ON kb_chunks (tenant, embed_model);
CREATE INDEX kb_chunks_document ON kb_chunks (document_id);
CREATE INDEX kb_chunks_tsv ON kb_chunks USING gin (tsv);
CREATE UNIQUE INDEX kb_chunks_key ON kb_chunks (tenant, chunk_key);
