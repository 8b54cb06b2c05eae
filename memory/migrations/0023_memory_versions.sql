-- Whether a user's memory changed since a keeper last read or wrote it (memory/keeper.py
-- `_refresh`): one row per user, its `version` set anew from one sequence by every change of
-- the user's facts or summary, whoever makes it (a keeper, the user's own `remember` and
-- `forget`, a spill import, a privacy request's deletion), so a keeper with nothing new to
-- read asks one indexed row instead of reading the user's whole memory before each exchange.
-- A version is never given twice, so one a keeper saw again means nothing changed since. A
-- user with no facts and no summary left has no row (no version: nothing to read), so a
-- privacy request's deletion (`Store.forget_user`) leaves nothing here that names them.
CREATE SEQUENCE memory_version_seq;

CREATE TABLE memory_versions (
    tenant  text NOT NULL,
    user_id text NOT NULL,
    version bigint NOT NULL,
    PRIMARY KEY (tenant, user_id)
);

CREATE FUNCTION memory_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    who_tenant text;
    who_user text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        who_tenant := OLD.tenant;
        who_user := OLD.user_id;
    ELSE
        who_tenant := NEW.tenant;
        who_user := NEW.user_id;
    END IF;
    IF TG_OP <> 'DELETE'
            OR EXISTS (SELECT 1 FROM memory_facts
                       WHERE tenant = who_tenant AND user_id = who_user)
            OR EXISTS (SELECT 1 FROM memory_summaries
                       WHERE tenant = who_tenant AND user_id = who_user) THEN
        INSERT INTO memory_versions AS v (tenant, user_id, version)
        VALUES (who_tenant, who_user, nextval('memory_version_seq'))
        ON CONFLICT (tenant, user_id) DO UPDATE SET version = excluded.version;
    ELSE
        DELETE FROM memory_versions WHERE tenant = who_tenant AND user_id = who_user;
    END IF;
    RETURN NULL;
END $$;

-- the tenant and user of a fact or summary are never updated: NEW's are OLD's
CREATE TRIGGER memory_facts_changed AFTER INSERT OR UPDATE OR DELETE ON memory_facts
    FOR EACH ROW EXECUTE FUNCTION memory_changed();
CREATE TRIGGER memory_summaries_changed AFTER INSERT OR UPDATE OR DELETE ON memory_summaries
    FOR EACH ROW EXECUTE FUNCTION memory_changed();

-- the users who have memory already: a version each, so a row is there exactly when memory is
INSERT INTO memory_versions (tenant, user_id, version)
SELECT tenant, user_id, nextval('memory_version_seq')
FROM (SELECT tenant, user_id FROM memory_facts
      UNION SELECT tenant, user_id FROM memory_summaries) AS users;
