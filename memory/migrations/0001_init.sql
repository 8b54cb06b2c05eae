-- Sessions, the conversation log and the cost ledger: the state a worker must never keep only
-- in its own memory.
CREATE TABLE sessions (
    id            text PRIMARY KEY,
    tenant        text NOT NULL,
    user_id       text,
    room          text,
    source        text NOT NULL CHECK (source IN ('live', 'replay')),
    provider      text,
    model         text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    ended_at      timestamptz,
    total_cost_usd numeric(14, 8),
    summary       jsonb
);
CREATE INDEX sessions_tenant_started ON sessions (tenant, started_at DESC);

CREATE TABLE messages (
    id          bigserial PRIMARY KEY,
    session_id  text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    tenant      text NOT NULL,
    user_id     text NOT NULL,
    role        text NOT NULL CHECK (role IN ('user', 'assistant')),
    content     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_tenant_user_recent ON messages (tenant, user_id, id DESC);

CREATE TABLE cost_events (
    id                  bigserial PRIMARY KEY,
    session_id          text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    tenant              text NOT NULL,
    seq                 integer NOT NULL,
    ts                  timestamptz NOT NULL,
    kind                text NOT NULL,
    provider            text,
    model               text,
    input_tokens        integer NOT NULL DEFAULT 0,
    cached_input_tokens integer NOT NULL DEFAULT 0,
    cache_write_tokens  integer NOT NULL DEFAULT 0,
    output_tokens       integer NOT NULL DEFAULT 0,
    images              integer NOT NULL DEFAULT 0,
    latency_ms          double precision,
    cost_usd            numeric(14, 8),
    detail              jsonb NOT NULL DEFAULT '{}'::jsonb,
    UNIQUE (session_id, seq)
);
CREATE INDEX cost_events_tenant_ts ON cost_events (tenant, ts);
