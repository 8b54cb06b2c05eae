-- BM25 term frequencies kept per row and lexeme (issue 18, speed): `<prefix>_postings`, one row
-- per searched row and lexeme it holds, with the lexeme's occurrences there (`tf`, its positions
-- in `tsv`) and the row's length (`doc_len`, a copy of the row's own). Scoring used to unnest
-- the whole tsvector of every candidate row (up to bm25.CANDIDATES = 2,000 of them) to find the
-- question's few lexemes in it: most of a turn's lookup over 10,000 chunks. Now a search reads
-- only the question's lexemes' postings, from the index, and sums BM25 per row there; the
-- searched table is read for the best few rows alone.
--
-- The postings' index leads with the scope columns and the lexeme in the order of the
-- `<prefix>_terms` key (a screen search over all of a tenant's users finds a lexeme's rows by
-- tenant and lexeme), then the row id (recall reads only messages older than the current
-- session's). The row-id index is for deletions: a screen event's user may be NULL, which an
-- equality join on the scope would not match. The same statement triggers as the statistics'
-- (bm25_track, 0013) keep them exact: rows are only ever inserted and deleted, never updated in
-- their words or scope (refused since 0012 and 0013).

CREATE TABLE kb_bm25_postings (
    tenant  text NOT NULL,
    lexeme  text NOT NULL,
    row_id  bigint NOT NULL,
    tf      integer NOT NULL,
    doc_len integer NOT NULL
);
CREATE TABLE messages_bm25_postings (
    tenant  text NOT NULL,
    user_id text NOT NULL,
    lexeme  text NOT NULL,
    row_id  bigint NOT NULL,
    tf      integer NOT NULL,
    doc_len integer NOT NULL
);
CREATE TABLE screen_bm25_postings (
    tenant  text NOT NULL,
    user_id text,
    lexeme  text NOT NULL,
    row_id  bigint NOT NULL,
    tf      integer NOT NULL,
    doc_len integer NOT NULL
);

-- The statistics' trigger function of 0013, and the postings: deleted rows' postings out by
-- row id, inserted rows' in. TG_ARGV: the prefix, then the scope columns.
CREATE OR REPLACE FUNCTION bm25_track() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    prefix text := TG_ARGV[0];
    scope text := TG_ARGV[1];
    rel text;
    sign integer;
BEGIN
    FOR rel, sign IN SELECT * FROM (VALUES ('removed_rows', -1), ('added_rows', 1)) AS v (r, s)
                      WHERE (v.s < 0) = (TG_OP = 'DELETE')
    LOOP
        EXECUTE format(
            'INSERT INTO %1$I AS s (%2$s, docs, total_len)'
            ' SELECT %2$s, $1 * count(*), $1 * sum(doc_len) FROM %3$I GROUP BY %2$s'
            ' ORDER BY %2$s ON CONFLICT (%2$s) DO UPDATE SET'
            ' docs = s.docs + excluded.docs, total_len = s.total_len + excluded.total_len',
            prefix || '_stats', scope, rel) USING sign;
        EXECUTE format(
            'INSERT INTO %1$I AS t (%2$s, lexeme, docs)'
            ' SELECT %2$s, u.lexeme, $1 * count(*) FROM %3$I r, unnest(r.tsv) u'
            ' GROUP BY %2$s, u.lexeme ORDER BY %2$s, u.lexeme'
            ' ON CONFLICT (%2$s, lexeme) DO UPDATE SET docs = t.docs + excluded.docs',
            prefix || '_terms', scope, rel) USING sign;
    END LOOP;
    IF TG_OP = 'DELETE' THEN
        EXECUTE format('DELETE FROM %I WHERE row_id IN (SELECT id FROM removed_rows)',
                       prefix || '_postings');
    ELSE
        EXECUTE format(
            'INSERT INTO %1$I (%2$s, lexeme, row_id, tf, doc_len)'
            ' SELECT %2$s, u.lexeme, r.id, coalesce(array_length(u.positions, 1), 1), r.doc_len'
            ' FROM added_rows r, unnest(r.tsv) u',
            prefix || '_postings', scope);
    END IF;
    RETURN NULL;
END $$;

INSERT INTO kb_bm25_postings (tenant, lexeme, row_id, tf, doc_len)
    SELECT c.tenant, u.lexeme, c.id, coalesce(array_length(u.positions, 1), 1), c.doc_len
    FROM kb_chunks c, unnest(c.tsv) u;
INSERT INTO messages_bm25_postings (tenant, user_id, lexeme, row_id, tf, doc_len)
    SELECT m.tenant, m.user_id, u.lexeme, m.id, coalesce(array_length(u.positions, 1), 1),
           m.doc_len
    FROM messages m, unnest(m.tsv) u;
INSERT INTO screen_bm25_postings (tenant, user_id, lexeme, row_id, tf, doc_len)
    SELECT e.tenant, e.user_id, u.lexeme, e.id, coalesce(array_length(u.positions, 1), 1),
           e.doc_len
    FROM screen_events e, unnest(e.tsv) u;

-- Indexes after the back-fill: one sort each instead of an insert per posting.
CREATE INDEX kb_bm25_postings_lexeme ON kb_bm25_postings (tenant, lexeme, row_id)
    INCLUDE (tf, doc_len);
CREATE INDEX kb_bm25_postings_row ON kb_bm25_postings (row_id);
CREATE INDEX messages_bm25_postings_lexeme
    ON messages_bm25_postings (tenant, user_id, lexeme, row_id) INCLUDE (tf, doc_len);
CREATE INDEX messages_bm25_postings_row ON messages_bm25_postings (row_id);
CREATE INDEX screen_bm25_postings_lexeme
    ON screen_bm25_postings (tenant, lexeme, user_id, row_id) INCLUDE (tf, doc_len);
CREATE INDEX screen_bm25_postings_row ON screen_bm25_postings (row_id);
