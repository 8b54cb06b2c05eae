-- A command's ledger rows (no session, agent/command_ledger.py) are written from its file when
-- it ends, together with any a run killed before its own write left there: each once, by its
-- run's id and its number in the run.
CREATE UNIQUE INDEX cost_events_command_run ON cost_events ((detail->>'run'), seq)
    WHERE session_id IS NULL;
