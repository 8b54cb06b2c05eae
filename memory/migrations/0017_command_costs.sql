-- Spend no session made: a command's billed calls (`kb ingest` / `kb search` embedding with
-- Gemini or reranking, `gaps refresh` naming gaps; agent/command_ledger.py) are the tenant's
-- cost events with no session, named by `detail.command`.
ALTER TABLE cost_events ALTER COLUMN session_id DROP NOT NULL;
ALTER TABLE cost_events ADD CONSTRAINT cost_events_session_or_command
    CHECK (session_id IS NOT NULL OR detail ? 'command');
