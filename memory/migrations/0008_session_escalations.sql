-- Handoff to a human (issue 17): the model's `handoff_to_human` tool marks its session
-- escalated, once; the knowledge-gap report counts such sessions.
ALTER TABLE sessions ADD COLUMN escalated_at timestamptz;
ALTER TABLE sessions ADD COLUMN escalation_reason text;
CREATE INDEX sessions_escalated ON sessions (tenant, escalated_at) WHERE escalated_at IS NOT NULL;
