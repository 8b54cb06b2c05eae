-- Cost-aware images (issue 4): the billed image tokens of each model call, their cost at the
-- model's input rate (part of cost_usd, not on top of it), and what the same frames would have
-- cost at full resolution.
ALTER TABLE cost_events
    ADD COLUMN image_tokens                 integer NOT NULL DEFAULT 0,
    ADD COLUMN image_tokens_full_resolution integer NOT NULL DEFAULT 0,
    ADD COLUMN image_cost_usd               numeric(14, 8);
