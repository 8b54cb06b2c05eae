-- The keys of the memory keeper's rows already applied (memory/user_memory.py `apply`): a fact,
-- forget or summary row can be written twice, by a batch retried after the database committed
-- it but its answer was lost, or by a spill file imported again after a crash before its
-- rewrite. Merged by content, such a row changed memory the second time once the session's
-- later rows had moved on from it (its replacement kept beside the newer fact under a new key,
-- its summary line appended again). Each keeper row carries a UUID made with it
-- (memory/spill_files.py ROW_KEY); `apply` records it here, in the transaction that applies the
-- row, and skips a row whose key is here already. Rows without a key (the user's own
-- `remember` and `forget`, rows kept on disk before keys) are applied as before. Deleted with
-- the user's memory (`Store.forget_user`), and past the newest `KEPT_ROW_KEYS` of a user
-- (`applied_at`): a row comes twice soon after it first did, not a thousand rows later.
CREATE TABLE memory_rows_applied (
    tenant     text NOT NULL,
    user_id    text NOT NULL,
    row_key    uuid NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, user_id, row_key)
);
CREATE INDEX memory_rows_applied_age ON memory_rows_applied (tenant, user_id, applied_at);
