-- A key of the client's for each message and screen event (memory/spill_files.py, ROW_KEY): a
-- row can be written twice, by a batch retried after the database committed it but its answer
-- was lost, or by a spill file imported again after a crash between a batch's commit and the
-- file's rewrite. Cost events are skipped by (session_id, seq) then; these tables had no such
-- key, so the conversation and the screen timeline came out doubled. The key is a UUID made as
-- the row is put to its writer or kept on disk, and stored here; a row whose key is here
-- already is skipped (`ON CONFLICT (row_key) DO NOTHING`).
--
-- Rows stored before this migration keep a NULL key: they are in, and a NULL conflicts with
-- nothing. Adding a nullable column without a default rewrites no table; each index is built
-- over the rows there.
ALTER TABLE messages ADD COLUMN row_key uuid;
CREATE UNIQUE INDEX messages_row_key ON messages (row_key);

ALTER TABLE screen_events ADD COLUMN row_key uuid;
CREATE UNIQUE INDEX screen_events_row_key ON screen_events (row_key);
