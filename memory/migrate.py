"""Versioned SQL migrations: `migrations/NNNN_name.sql`, applied in order, each in a transaction.

Applied versions are recorded in `schema_migrations`. An advisory lock serializes workers that
start at the same time against the same database.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
LOCK_KEY = 0x5160_7117  # arbitrary constant shared by every Sightline process
# A migration that back-fills (0014's postings: 6 s for 12,000 chunks on a loaded 2-core
# machine) grows with the data, so it gets far longer than a query's 30 s
MIGRATION_TIMEOUT_S = 3600.0


class MigrationFailed(RuntimeError):
    """A migration the database refused; nothing of it was applied."""


def migration_files() -> list[Path]:
    return sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql"))


async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply every migration not yet recorded; return the versions applied now."""
    applied_now: list[str] = []
    async with conn.transaction():
        # lock first: even CREATE TABLE IF NOT EXISTS races in the catalog between processes
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for path in migration_files():
            version = path.stem
            if version in done:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(path.read_text(), timeout=MIGRATION_TIMEOUT_S)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version) VALUES ($1)", version)
            except asyncpg.PostgresError as exc:
                hint = (" (the knowledge base needs the pgvector extension installed on the "
                        "server)" if "vector" in str(exc) else "")
                raise MigrationFailed(f"migration {version} failed: {exc}{hint}") from None
            applied_now.append(version)
    return applied_now
