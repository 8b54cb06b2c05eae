-- The tenant's spend today, read by each session with a tenant budget when it opens and every
-- few seconds while it runs (agent/tenant_spend.py): only the priced events count, a few per
-- turn, while a session records a frame event a second at $0. This index holds the priced ones
-- alone, with what the sum needs, so the read stays small however many frames the day saw.
CREATE INDEX cost_events_priced ON cost_events (tenant, ts) INCLUDE (cost_usd, session_id)
    WHERE cost_usd <> 0;
