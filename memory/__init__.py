"""Postgres-backed state: the pool (embedded or external), migrations, sessions, messages, costs."""
