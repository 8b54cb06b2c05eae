-- BM25 keyword ranking for the knowledge base (issue 18). The embedded Postgres carries no BM25
-- extension (pg_search, pg_textsearch), and `ts_rank_cd` has neither inverse document frequency
-- nor document-length normalisation, so the statistics BM25 needs are kept here, per tenant,
-- and the score is computed in SQL (memory/knowledge.py): each chunk's length in lexeme
-- occurrences (`doc_len`), and per tenant the chunk count and total length (`kb_bm25_stats`) and
-- each lexeme's document frequency (`kb_bm25_terms`). Statement-level triggers keep them exact
-- on every insert, update and delete of chunks, whichever code path writes them.

CREATE FUNCTION kb_lexeme_occurrences(tsv tsvector) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (SELECT coalesce(sum(coalesce(array_length(positions, 1), 1)), 0)::integer
            FROM unnest(tsv));

ALTER TABLE kb_chunks ADD COLUMN doc_len integer
    GENERATED ALWAYS AS (kb_lexeme_occurrences(to_tsvector('english', text))) STORED;

CREATE TABLE kb_bm25_stats (
    tenant    text PRIMARY KEY,
    chunks    bigint NOT NULL,
    total_len bigint NOT NULL
);

CREATE TABLE kb_bm25_terms (
    tenant text NOT NULL,
    lexeme text NOT NULL,
    docs   integer NOT NULL,
    PRIMARY KEY (tenant, lexeme)
);

-- Rows counted out (deleted ones) and in (inserted ones). Lexemes in a
-- fixed order, so two ingests that touch the same lexemes lock their rows in the same order (no
-- deadlock). A lexeme whose count falls to 0 keeps its row: it matches no chunk, so it never
-- scores.
CREATE FUNCTION kb_bm25_track() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    rel text;
    sign integer;
BEGIN
    FOR rel, sign IN SELECT * FROM (VALUES ('removed_rows', -1), ('added_rows', 1)) AS v (r, s)
                      WHERE (v.s < 0) = (TG_OP = 'DELETE')
    LOOP
        EXECUTE format(
            'INSERT INTO kb_bm25_stats AS s (tenant, chunks, total_len)'
            ' SELECT tenant, $1 * count(*), $1 * sum(doc_len) FROM %I GROUP BY tenant'
            ' ORDER BY tenant ON CONFLICT (tenant) DO UPDATE SET'
            ' chunks = s.chunks + excluded.chunks, total_len = s.total_len + excluded.total_len',
            rel) USING sign;
        EXECUTE format(
            'INSERT INTO kb_bm25_terms AS t (tenant, lexeme, docs)'
            ' SELECT r.tenant, u.lexeme, $1 * count(*) FROM %I r, unnest(r.tsv) u'
            ' GROUP BY r.tenant, u.lexeme ORDER BY r.tenant, u.lexeme'
            ' ON CONFLICT (tenant, lexeme) DO UPDATE SET docs = t.docs + excluded.docs',
            rel) USING sign;
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER kb_bm25_insert AFTER INSERT ON kb_chunks REFERENCING NEW TABLE AS added_rows
    FOR EACH STATEMENT EXECUTE FUNCTION kb_bm25_track();
CREATE TRIGGER kb_bm25_delete AFTER DELETE ON kb_chunks REFERENCING OLD TABLE AS removed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION kb_bm25_track();
-- A chunk's words change by delete + insert (its key and content hash are its identity), never
-- in place: a trigger on an update of `text` could not have transition tables (Postgres forbids
-- them with a column list) and would count every position update; this one says so instead.
CREATE FUNCTION kb_bm25_text_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'kb_chunks.text and tenant are not updated in place: delete and insert';
END $$;
CREATE TRIGGER kb_bm25_text_fixed BEFORE UPDATE OF text, tenant ON kb_chunks
    FOR EACH ROW EXECUTE FUNCTION kb_bm25_text_fixed();

INSERT INTO kb_bm25_stats (tenant, chunks, total_len)
    SELECT tenant, count(*), sum(doc_len) FROM kb_chunks GROUP BY tenant;
INSERT INTO kb_bm25_terms (tenant, lexeme, docs)
    SELECT c.tenant, u.lexeme, count(*) FROM kb_chunks c, unnest(c.tsv) u
    GROUP BY c.tenant, u.lexeme;
