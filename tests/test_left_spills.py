"""A stopping worker imports the spill files its sessions left (agent/left_spills.py): a
container scaled down takes its disk along. Real Postgres; the sessions are real sessions that
ran without the database (a pool on a port nothing listens on, as a worker keeps when it
cannot open the database)."""

from __future__ import annotations

import logging
from pathlib import Path

import asyncpg
import pytest

from agent.config import Settings
from agent.left_spills import import_left_spills
from agent.session import SessionRuntime
from memory.db import Database
from memory.spill_files import spill_files

NOWHERE = "postgresql://sightline@127.0.0.1:9/sightline"  # the discard port: refused


async def offline_session(settings: Settings) -> str:
    """A session that opens and closes without the database: its row waits in a spill file."""
    pool = await Database.unconnected(NOWHERE)
    try:
        runtime = await SessionRuntime.open(
            settings.with_overrides(database_url=NOWHERE), None, tenant="acme", user_id="u1",
            source="replay", down=pool)
        await runtime.close()
    finally:
        await pool.close()
    return runtime.session_id


def settings_on(url: str, tmp_path: Path) -> Settings:
    return Settings.from_env({"DATABASE_URL": url, "SIGHTLINE_DATA_DIR": str(tmp_path / "data"),
                              "GOOGLE_API_KEY": "test-key", "ANTHROPIC_API_KEY": "test-key",
                              "SIGHTLINE_EMBEDDINGS": "wordllama"})


async def test_what_sessions_left_is_imported_before_the_worker_exits(
    migrated_database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_on(migrated_database_url, tmp_path)
    session_id = await offline_session(settings)
    assert [p.name for p in spill_files(settings.costs_dir)] == [
        f"{session_id}.session-spill.jsonl"]
    with caplog.at_level(logging.INFO, logger="sightline"):
        await import_left_spills(settings)
    assert not spill_files(settings.costs_dir)
    conn = await asyncpg.connect(migrated_database_url)
    try:
        row = await conn.fetchrow("SELECT tenant, summary FROM sessions WHERE id = $1",
                                  session_id)
    finally:
        await conn.close()
    assert row is not None and row["tenant"] == "acme" and row["summary"] is not None
    assert "imported 1 rows from 1 spill files before exiting" in caplog.messages


async def test_what_stays_when_the_database_is_down_is_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_on(NOWHERE, tmp_path)
    await offline_session(settings)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sightline"):
        await import_left_spills(settings)
    [line] = [r.getMessage() for r in caplog.records if r.name == "sightline.worker"]
    assert line.startswith(f"1 spill files of sessions that ran without the database stay in "
                           f"{settings.costs_dir}: ")
    assert "next session opened with this data directory imports them" in line
    assert "\n" not in line
    assert len(spill_files(settings.costs_dir)) == 1


async def test_a_worker_with_nothing_left_does_not_touch_the_database(tmp_path: Path) -> None:
    await import_left_spills(settings_on(NOWHERE, tmp_path))  # would log a refusal if it tried
