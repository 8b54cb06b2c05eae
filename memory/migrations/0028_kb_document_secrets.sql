-- What looks like a secret in each knowledge document (memory/secret_text.py), as its last ingest
-- found it, for `sightline kb list`: how many of each kind ({} none), and whether they were
-- stored hidden (`kb ingest --hide-secrets`) or as they are, where the agent may read them to any
-- of the tenant's users. NULL: not read yet (stored before documents were read for secrets, or
-- an ingest stopped between storing the text and its reading); the next ingest reads it.
ALTER TABLE kb_documents ADD COLUMN secrets jsonb, ADD COLUMN secrets_hidden boolean NOT NULL DEFAULT false;
