-- Alerts sent (issue 16): one row per alert and window, so a cron job that checks a tenant's
-- quality every few minutes, on any host, sends each alert once per window. `key` is the
-- tenant, the alert and the window's bucket; `delivered_at` stays NULL when the webhook never
-- took it (or none is configured).
CREATE TABLE alerts (
    key          text PRIMARY KEY,
    tenant       text NOT NULL,
    name         text NOT NULL,
    severity     text NOT NULL,
    payload      jsonb NOT NULL,
    raised_at    timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
);
CREATE INDEX alerts_tenant ON alerts (tenant, raised_at DESC);
