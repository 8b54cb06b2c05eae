-- Quality signals (issue 16), per user turn and per session, as views over what sessions
-- already record: the `turn` events of cost_events (one per cascade round, with its start tier
-- and why, every tier tried with its stated confidence and outcome, the answering tier, and,
-- from this issue on, the round's first-words and end latency and whether the user cut it
-- short) and the sessions rows (how each ended). Views, not tables refreshed: the events are the
-- record, and a view can never drift from them. `sightline quality` aggregates a tenant's window
-- through `quality_turns_in` (one indexed range scan of cost_events (tenant, ts)).

-- One row per user turn: the round its question started plus the rounds that answered its
-- tools' results (agent-initiated replies and discarded rounds are not user turns). `quality_turns_in` reads one
-- tenant's rounds in [since, until) only (an index range scan, however long the history):
-- `turn_no` then counts from the window's first round, and a turn whose question came before
-- the window is left out (its first round there answers a tool). The `quality_turns` view is
-- every turn of every tenant, numbered from each session's start.
CREATE FUNCTION quality_turns_in(p_tenant text, p_since timestamptz, p_until timestamptz)
RETURNS TABLE (
    session_id text, tenant text, user_id text, turn_no bigint, ts timestamptz, rounds bigint,
    reason text, retry boolean, said_unhelpful boolean, start_tier int, answered_tier int,
    answered_model text, top_tier int, escalated boolean, interrupted boolean,
    budget_capped boolean, failed boolean, confidence float8, first_token_ms float8,
    latency_ms float8, cost_usd numeric, handed_off boolean
) LANGUAGE sql STABLE AS $$
WITH rounds AS (
    SELECT e.session_id, e.tenant, e.seq, e.ts, e.detail AS d,
           extract(epoch FROM e.ts) * 1000 - coalesce((e.detail->>'latency_ms')::float8, 0)
               AS started_ms,
           sum((e.detail->>'reason' NOT LIKE 'tool_result%')::int)
               OVER (PARTITION BY e.tenant, e.session_id ORDER BY e.seq) AS turn_no
    FROM cost_events e
    WHERE e.kind = 'turn' AND e.detail->>'reason' NOT LIKE 'agent_initiated%'
      AND (p_tenant IS NULL OR e.tenant = p_tenant) AND e.ts >= p_since AND e.ts < p_until
      -- a round whose reply was superseded unplayed (livekit-agents' preemptive generation on
      -- the first half of a question the user went on with) is no user turn: billed, not counted
      AND NOT EXISTS (SELECT 1 FROM cost_events x WHERE x.session_id = e.session_id
                        AND x.kind = 'round_discarded'
                        AND x.detail->>'request_id' = e.detail->>'request_id')
), turns AS (
    SELECT session_id, tenant, turn_no,
           min(ts) AS ts,
           min(seq) AS first_seq,
           lead(min(seq)) OVER (PARTITION BY session_id ORDER BY turn_no) AS next_seq,
           (array_agg(d ORDER BY seq))[1] AS first_round,
           (array_agg(d ORDER BY seq DESC))[1] AS last_round,
           count(*) AS rounds,
           bool_or(jsonb_array_length(coalesce(d->'tried', '[]')) > 1) AS escalated,
           bool_or(coalesce((d->>'interrupted')::boolean, false)) AS interrupted,
           bool_or(coalesce((d->>'budget_capped')::boolean, false)) AS budget_capped,
           -- from the turn's start to the first words of the first round that said any
           (array_agg(started_ms + (d->>'first_token_ms')::float8 ORDER BY seq)
                FILTER (WHERE d->>'first_token_ms' IS NOT NULL))[1] - min(started_ms)
               AS first_token_ms,
           -- from the turn's start to the end of its last round (null before this issue)
           CASE WHEN bool_and(d ? 'latency_ms')
                THEN max(extract(epoch FROM ts) * 1000) - min(started_ms) END AS latency_ms,
           sum(coalesce((d->>'cost_usd')::numeric, 0)) AS cost_usd
    FROM rounds
    GROUP BY session_id, tenant, turn_no
)
SELECT t.session_id, t.tenant, s.user_id, t.turn_no, t.ts, t.rounds,
       t.first_round->>'reason' AS reason,
       -- the user rephrased or repeated the question, or said the answer did not help
       (t.first_round->>'reason' ~ '^(question_repeated|answer_did_not_help)') AS retry,
       (t.first_round->>'reason' LIKE 'answer_did_not_help%') AS said_unhelpful,
       (t.first_round->>'start_tier')::int AS start_tier,
       (t.last_round->>'answered_tier')::int AS answered_tier,
       t.last_round->>'answered_model' AS answered_model,
       (t.last_round->>'top_tier')::int AS top_tier,
       t.escalated, t.interrupted, t.budget_capped,
       (t.last_round->>'answered_tier' IS NULL AND NOT t.interrupted AND NOT t.budget_capped)
           AS failed,
       -- the confidence the answering tier stated (null: it stated none, or nothing answered)
       (SELECT (a->>'confidence')::float8 FROM jsonb_array_elements(t.last_round->'tried') a
         WHERE a->>'outcome' IN ('answered', 'tool_call') ORDER BY (a->>'tier')::int DESC
         LIMIT 1) AS confidence,
       round(t.first_token_ms::numeric, 1)::float8 AS first_token_ms,
       round(t.latency_ms::numeric, 1)::float8 AS latency_ms,
       t.cost_usd,
       -- the model handed the user to a person during this turn (a `handoff` event between
       -- its first round and the next turn's)
       EXISTS (SELECT 1 FROM cost_events h WHERE h.session_id = t.session_id
                 AND h.kind = 'handoff' AND h.seq > t.first_seq
                 AND (t.next_seq IS NULL OR h.seq < t.next_seq)) AS handed_off
FROM turns t JOIN sessions s ON s.id = t.session_id
WHERE t.first_round->>'reason' NOT LIKE 'tool_result%'
$$;

CREATE VIEW quality_turns AS
SELECT * FROM quality_turns_in(NULL, '-infinity', 'infinity');

-- One row per session: how it ended, and its turns' counts. `completion`: `completed` (ended
-- normally), `left_mid_answer` (ended normally, but its last answer was cut short: the user
-- left while the agent spoke), `error` (failed, or its process died: `abandoned`), `stopped`
-- (the worker was asked to stop), `open` (not ended). `handoffs` counts `handoff` events (a
-- session escalated to a human, once the handoff tool records them).
CREATE VIEW quality_sessions AS
SELECT s.id AS session_id, s.tenant, s.user_id, s.source, s.started_at, s.ended_at,
       s.summary->>'outcome' AS outcome,
       CASE WHEN s.ended_at IS NULL THEN 'open'
            WHEN coalesce(s.summary->>'outcome', 'completed') IN ('failed', 'abandoned')
                THEN 'error'
            WHEN s.summary->>'outcome' = 'interrupted' THEN 'stopped'
            WHEN coalesce(last.interrupted, false) THEN 'left_mid_answer'
            ELSE 'completed' END AS completion,
       coalesce(counts.turns, 0) AS turns,
       coalesce(counts.retries, 0) AS retries,
       coalesce(counts.interruptions, 0) AS interruptions,
       (SELECT count(*) FROM cost_events h WHERE h.session_id = s.id AND h.kind = 'handoff')
           AS handoffs
FROM sessions s
LEFT JOIN LATERAL (
    SELECT t.interrupted FROM quality_turns t WHERE t.session_id = s.id
    ORDER BY t.turn_no DESC LIMIT 1
) last ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS turns, count(*) FILTER (WHERE t.retry) AS retries,
           count(*) FILTER (WHERE t.interrupted) AS interruptions
    FROM quality_turns t WHERE t.session_id = s.id
) counts ON true;
