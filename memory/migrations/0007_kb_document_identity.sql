-- Knowledge documents by a stable name (issue 14): `source` is the path from the ingested
-- folder's name down (`docs/setup.md`), or the file's name, so two clones of the same docs are
-- one document; `origin` is the file it was last read from, which decides what "gone from a
-- folder ingested again" means. Rows stored before keep their absolute path as `source` and
-- get it as `origin`: ingesting their folder (or the file) again replaces them under the new
-- name, embedding them once more. `page` is a chunk's PDF page (1-based), NULL for other files.
ALTER TABLE kb_documents ADD COLUMN origin text NOT NULL DEFAULT '';
UPDATE kb_documents SET origin = source WHERE starts_with(source, '/');
CREATE INDEX kb_documents_origin ON kb_documents (tenant, origin);
ALTER TABLE kb_chunks ADD COLUMN page integer;
