-- BM25 keyword ranking for earlier-message recall and screen search (issue 18), as 0012 gave the
-- knowledge base. Both search one user's rows (`UserMemory.recall`: tenant and user;
-- `ScreenTimeline.recall`, and `search` for one user), so the statistics are kept per tenant
-- AND user: what makes a word rare is how few of that user's messages (or screens) hold it, and
-- per-tenant figures would let every other user's conversations move one user's scores and
-- would hide a word one user says all the time behind the rest of the tenant. `sightline screen
-- search` without a user sums the tenant's users' rows at query time, which is exact too.
-- Recall looks below `before_id` (the turns already in the conversation are left out), while
-- the statistics count all of the user's rows: the few turns of the current session shift
-- them by a few rows out of the user's history, and filtering them out would need statistics
-- per message id.
--
-- One trigger function keeps all three tables' statistics (this one's and 0012's): its
-- arguments name the statistics (`<prefix>_stats`: documents and total length per scope;
-- `<prefix>_terms`: each lexeme's document frequency per scope) and the scope columns.
-- Every write is covered: rows are inserted in batches by the background writer (and spill
-- imports), deleted by `sightline memory forget` (`forget_user`) and by cascade when a session
-- is deleted; no code updates them, and an update of the searched text or of the scope is
-- refused (the statistics would need position-by-position rework), as for chunks.

ALTER TABLE kb_bm25_stats RENAME COLUMN chunks TO docs;

ALTER TABLE messages ADD COLUMN doc_len integer
    GENERATED ALWAYS AS (kb_lexeme_occurrences(to_tsvector('english', content))) STORED;
ALTER TABLE screen_events ADD COLUMN doc_len integer
    GENERATED ALWAYS AS (kb_lexeme_occurrences(to_tsvector('english', words))) STORED;

CREATE TABLE messages_bm25_stats (
    tenant    text NOT NULL,
    user_id   text NOT NULL,
    docs      bigint NOT NULL,
    total_len bigint NOT NULL,
    PRIMARY KEY (tenant, user_id)
);
CREATE TABLE messages_bm25_terms (
    tenant  text NOT NULL,
    user_id text NOT NULL,
    lexeme  text NOT NULL,
    docs    integer NOT NULL,
    PRIMARY KEY (tenant, user_id, lexeme)
);
-- A screen event's user may be unknown (NULL): one scope of its own, hence NULLS NOT DISTINCT.
-- The lexeme before the user, so a search over all the tenant's users finds a lexeme's rows.
CREATE TABLE screen_bm25_stats (
    tenant    text NOT NULL,
    user_id   text,
    docs      bigint NOT NULL,
    total_len bigint NOT NULL,
    UNIQUE NULLS NOT DISTINCT (tenant, user_id)
);
CREATE TABLE screen_bm25_terms (
    tenant  text NOT NULL,
    user_id text,
    lexeme  text NOT NULL,
    docs    integer NOT NULL,
    UNIQUE NULLS NOT DISTINCT (tenant, lexeme, user_id)
);

-- TG_ARGV: the statistics' prefix, then the scope columns. Rows counted out (deleted ones) and
-- in (inserted ones), scopes and lexemes in a fixed order, so two writers that touch the same
-- ones lock them in the same order (no deadlock). A lexeme or scope whose count falls to 0
-- keeps its row: it matches nothing, so it never scores.
CREATE FUNCTION bm25_track() RETURNS trigger LANGUAGE plpgsql AS $$
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
    RETURN NULL;
END $$;

-- TG_ARGV[0]: the columns that are never updated in place, as the refusal names them.
CREATE FUNCTION bm25_words_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%.% are not updated in place: delete and insert', TG_TABLE_NAME, TG_ARGV[0];
END $$;

DROP TRIGGER kb_bm25_insert ON kb_chunks;
DROP TRIGGER kb_bm25_delete ON kb_chunks;
DROP TRIGGER kb_bm25_text_fixed ON kb_chunks;
DROP FUNCTION kb_bm25_track();
DROP FUNCTION kb_bm25_text_fixed();

CREATE TRIGGER kb_bm25_insert AFTER INSERT ON kb_chunks REFERENCING NEW TABLE AS added_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bm25_track('kb_bm25', 'tenant');
CREATE TRIGGER kb_bm25_delete AFTER DELETE ON kb_chunks REFERENCING OLD TABLE AS removed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bm25_track('kb_bm25', 'tenant');
CREATE TRIGGER kb_bm25_text_fixed BEFORE UPDATE OF text, tenant ON kb_chunks
    FOR EACH ROW EXECUTE FUNCTION bm25_words_fixed('text and tenant');

-- Messages and screen events alike: the triggers, then the statistics of the rows already
-- there. The searched text (`content`, `words`), the tenant and the user are never updated.
DO $$
DECLARE
    tbl text;
    prefix text;
    words text;
BEGIN
    FOR tbl, prefix, words IN VALUES ('messages', 'messages_bm25', 'content'),
                                     ('screen_events', 'screen_bm25', 'words')
    LOOP
        EXECUTE format(
            'CREATE TRIGGER %1$s_insert AFTER INSERT ON %2$I REFERENCING NEW TABLE AS added_rows'
            ' FOR EACH STATEMENT EXECUTE FUNCTION bm25_track(%1$L, ''tenant, user_id'')',
            prefix, tbl);
        EXECUTE format(
            'CREATE TRIGGER %1$s_delete AFTER DELETE ON %2$I REFERENCING OLD TABLE AS removed_rows'
            ' FOR EACH STATEMENT EXECUTE FUNCTION bm25_track(%1$L, ''tenant, user_id'')',
            prefix, tbl);
        EXECUTE format(
            'CREATE TRIGGER %1$s_words_fixed BEFORE UPDATE OF %3$I, tenant, user_id ON %2$I'
            ' FOR EACH ROW EXECUTE FUNCTION bm25_words_fixed(%4$L)',
            prefix, tbl, words, words || ', tenant and user_id');
        EXECUTE format(
            'INSERT INTO %1$I (tenant, user_id, docs, total_len)'
            ' SELECT tenant, user_id, count(*), sum(doc_len) FROM %2$I GROUP BY tenant, user_id',
            prefix || '_stats', tbl);
        EXECUTE format(
            'INSERT INTO %1$I (tenant, user_id, lexeme, docs)'
            ' SELECT r.tenant, r.user_id, u.lexeme, count(*) FROM %2$I r, unnest(r.tsv) u'
            ' GROUP BY r.tenant, r.user_id, u.lexeme',
            prefix || '_terms', tbl);
    END LOOP;
END $$;
