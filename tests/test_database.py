"""The database layer: migrations, unreachable databases, and losing no record in an outage.

Protects: migrations are applied once and recorded, and re-opening is a no-op; concurrent first
starts are serialized; an unreachable DATABASE_URL is one `sightline:` line (exit 2) that never
shows the password; when Postgres goes away mid-session the event log and the conversation log keep
going without raising, every event stays in the JSONL log, and after close() every event is in
`cost_events` or in the spill file, none missing and none duplicated (a Postgres of our own is
stopped and restarted for this); a message or screen event sent twice (a batch retried after its
answer was lost, a spill file imported again after a cut between a batch's commit and the
file's rewrite) is stored once, and rows stored before their key column keep none.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import re
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from conftest import assert_bm25_statistics_exact, run_cli
from prometheus_client import REGISTRY
from test_screen_memory import ERROR_LINE, typed_desk
from waits import eventually

from agent.chat_inbox import stored_before
from agent.cli_costs import format_summary
from agent.config import Settings
from agent.pricing import PriceTable, Usage
from agent.session import SessionRuntime
from agent.session_record import SessionRecord
from agent.wire_format_server import CapturedRequest, ScriptedModelServer, ScriptedReply
from memory import spill_recovery
from memory.conversation import ConversationLog
from memory.db import (
    Database,
    DatabaseUnavailable,
    library_logs_in_one_line,
    masked_url,
    start_embedded,
    stop_embedded,
)
from memory.embeddings import WordLlamaEmbedder
from memory.knowledge import KnowledgeBase
from memory.migrate import apply_migrations, migration_files
from memory.screen_timeline import ScreenTimeline, event_row
from memory.spill_files import ROW_KEY, append_rows, spill_files
from memory.spill_recovery import SpillTargets, recover_spills
from memory.store import Store
from memory.user_memory import UserMemory
from memory.writer import BackgroundWriter, Written
from vision.screen import FrameDecision

PASSWORD = "s3cret-Pa55word"




# -- migrations ----------------------------------------------------------------------------


async def test_migrations_applied_once_and_idempotent(database_url: str, tmp_path: Path) -> None:
    versions = [p.stem for p in migration_files()]
    assert versions and versions == sorted(versions)
    first = await Database.open(database_url, tmp_path)
    try:
        rows = await first.pool.fetch(
            "SELECT version, applied_at FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == versions
        tables = {r["tablename"] for r in await first.pool.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"sessions", "messages", "cost_events", "schema_migrations"} <= tables

        second = await Database.open(database_url, tmp_path)
        try:
            again = await second.pool.fetch(
                "SELECT version, applied_at FROM schema_migrations ORDER BY version")
            assert again == rows  # same versions, same applied_at: nothing re-applied
            async with second.pool.acquire() as conn:
                assert await apply_migrations(conn) == []
        finally:
            await second.close()
    finally:
        await first.close()


async def test_open_without_migrate_leaves_database_untouched(
    database_url: str, tmp_path: Path
) -> None:
    db = await Database.open(database_url, tmp_path, migrate=False)
    try:
        assert await db.pool.fetchval("SELECT to_regclass('schema_migrations')") is None
    finally:
        await db.close()


async def test_a_connection_given_back_costs_no_reset_round_trip(
    database_url: str, tmp_path: Path
) -> None:
    """A pool's connection goes back without asyncpg's reset query (a round trip every statement
    waited for): the server's last statement on it is the caller's own. A transaction left
    open is still rolled back, so its row and its locks go with it."""
    db = await Database.open(database_url, tmp_path, migrate=False, connections=1)
    table = f"reset_{uuid.uuid4().hex[:8]}"
    try:
        await db.pool.execute(f"CREATE TABLE {table} (n int)")
        backend = await db.pool.fetchval("SELECT pg_backend_pid() /* mine */")
        watcher = await asyncpg.connect(database_url)
        try:
            last = await watcher.fetchval(
                "SELECT query FROM pg_stat_activity WHERE pid = $1", backend)
        finally:
            await watcher.close()
        assert last == "SELECT pg_backend_pid() /* mine */"
        async with db.pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()  # never committed nor rolled back by its user
            await conn.execute(f"INSERT INTO {table} VALUES (1)")
            await conn.execute("SELECT pg_advisory_xact_lock(4242)")
        assert await db.pool.fetchval(f"SELECT count(*) FROM {table}") == 0
        assert await db.pool.fetchval("SELECT pg_try_advisory_xact_lock(4242)")
    finally:
        await db.pool.execute(f"DROP TABLE IF EXISTS {table}")
        await db.close()


# what asyncpg's reset query would undo; a pool's connections skip it, so no code may leave it
SESSION_STATE = re.compile(
    r"""(?:\bSET\s+(?!LOCAL\b)(?:SESSION\s+)?[\w.]+\s*(?:=|TO\b)|\bRESET\s+[\w.]+"""
    r"""|\bLISTEN\s+\w|\bDECLARE\s+\w+\s+(?:\w+\s+)*CURSOR\b)"""
    r"""|(?i:set_config\(|pg_(?:try_)?advisory_lock\(|\.cursor\(|add_(?:log_)?listener\()""")


def test_no_code_leaves_state_in_a_pooled_connection() -> None:
    """The pools skip asyncpg's reset (memory/db.py): session-level settings, listeners, cursors
    and session advisory locks would then reach the next user of the connection. None of the
    code the worker and the CLI run, nor a migration, holds such a statement (`SET LOCAL`,
    transaction-scoped locks and `UPDATE … SET col = …` are fine)."""
    root = Path(__file__).resolve().parent.parent
    files = [*(path for folder in ("agent", "memory", "tools", "vision")
               for path in sorted((root / folder).rglob("*.py"))), *migration_files()]
    found = [f"{path}:{n}: {line.strip()}" for path in files
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if SESSION_STATE.search(line) and not re.search(r"\bUPDATE\b.*\bSET\b", line)]
    assert found == []
    for leaves_state in ('await conn.execute("SET work_mem = \'64MB\'")',
                         '"SET SESSION statement_timeout TO 0"', "LISTEN alerts;",
                         "pool.fetchval('select pg_advisory_lock(1)')", "conn.cursor(query)",
                         "DECLARE c NO SCROLL CURSOR FOR SELECT 1"):
        assert SESSION_STATE.search(leaves_state), leaves_state
    for fine in ("SET LOCAL hnsw.ef_search = 100", '"reset my password"', "DECLARE n int;"):
        assert not SESSION_STATE.search(fine), fine


@pytest.mark.parametrize("missing", ["0013", "0014"])
async def test_bm25_statistics_are_backfilled_for_rows_stored_before_them(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str,
) -> None:
    """Messages and screen events stored before migration 0013 get their BM25 statistics when
    it is applied, rows of all three searched tables stored before 0014 get their postings,
    and later writes keep both exact."""
    earlier = tmp_path / "migrations"
    earlier.mkdir()
    for path in migration_files():
        if path.stem < missing:
            (earlier / path.name).write_text(path.read_text())
    conn = await asyncpg.connect(database_url)
    try:
        monkeypatch.setattr("memory.migrate.MIGRATIONS_DIR", earlier)
        assert all(v < missing for v in await apply_migrations(conn))
        for session_id, tenant, user in (("s-1", "acme", "u-1"), ("s-2", "acme", "u-2"),
                                         ("s-3", "globex", None)):
            await conn.execute(
                "INSERT INTO sessions (id, tenant, user_id, source) VALUES ($1, $2, $3,"
                " 'replay')", session_id, tenant, user)
            await conn.executemany(
                "INSERT INTO screen_events (session_id, tenant, user_id, t, at, content_type,"
                " reason, region, text, words) VALUES ($1, $2, $3, $4, now(), 'terminal',"
                " 'local_change', '{0,0,1,1}', $5, $5)",
                [(session_id, tenant, user, float(n), f"KeyError port {n} port") for n in range(3)])
            if user is not None:
                await conn.executemany(
                    "INSERT INTO messages (session_id, tenant, user_id, role, content)"
                    " VALUES ($1, $2, $3, 'user', $4)",
                    [(session_id, tenant, user, f"router {n} resets, router") for n in range(3)])
            document = await conn.fetchval(
                "INSERT INTO kb_documents (tenant, source, content_hash) VALUES ($1, $2, 'h')"
                " RETURNING id", tenant, session_id)
            await conn.execute(
                "INSERT INTO kb_chunks (tenant, document_id, chunk_key, position, text,"
                " content_hash, embed_model, embedding) VALUES ($1, $2, $3, 0,"
                " 'the router router resets', 'h', 'm', '[1]')", tenant, document, session_id)
        monkeypatch.undo()
        assert await apply_migrations(conn) == [p.stem for p in migration_files()
                                                if p.stem >= missing]
        await conn.execute("INSERT INTO messages (session_id, tenant, user_id, role, content)"
                           " VALUES ('s-1', 'acme', 'u-1', 'user', 'a later router question')")
        await conn.execute("DELETE FROM screen_events WHERE t = 0")
        await conn.execute("DELETE FROM kb_documents WHERE source = 's-2'")
    finally:
        await conn.close()
    db = await Database.open(database_url, tmp_path)
    try:
        for prefix, table in (("messages_bm25", "messages"), ("screen_bm25", "screen_events")):
            await assert_bm25_statistics_exact(db.pool, prefix, table, "tenant, user_id")
        await assert_bm25_statistics_exact(db.pool, "kb_bm25", "kb_chunks", "tenant")
        assert await db.pool.fetchval(
            "SELECT docs FROM messages_bm25_terms WHERE tenant = 'acme' AND user_id = 'u-1'"
            " AND lexeme = 'router'") == 4
        assert await db.pool.fetchval(
            "SELECT tf FROM kb_bm25_postings WHERE tenant = 'globex' AND lexeme = 'router'") == 2
    finally:
        await db.close()


async def test_concurrent_first_starts_are_serialized(database_url: str) -> None:
    conns = [await asyncpg.connect(database_url) for _ in range(6)]
    try:
        for _ in range(3):
            await conns[0].execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
            results = await asyncio.gather(
                *(apply_migrations(c) for c in conns), return_exceptions=True
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            assert errors == []
            applied = [v for r in results if isinstance(r, list) for v in r]
            assert applied == [p.stem for p in migration_files()]
    finally:
        for conn in conns:
            await conn.close()


# -- an unreachable database ---------------------------------------------------------------


async def test_unreachable_database_is_one_line_without_password(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "SIGHTLINE_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/nope",
    }
    code, out, err = await run_cli("costs", env=env)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sightline: ")
    assert "cannot connect" in lines[0]
    assert "127.0.0.1:1" in lines[0]
    assert "Traceback" not in err
    assert PASSWORD not in out + err


def _as_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


async def test_a_refusing_database_says_why_and_what_to_do(
    database_url: str, tmp_path: Path,
) -> None:
    """A server that answers but refuses is not "Is it running?": an unknown user, a database
    that is not there and a user without the CREATE privilege each say what to fix."""
    with pytest.raises(DatabaseUnavailable) as info:
        await Database.open(_as_user(database_url, "nobody_here", PASSWORD), tmp_path)
    assert "refused the login" in str(info.value) and "nobody_here" in str(info.value)
    assert PASSWORD not in str(info.value)

    missing = database_url.replace(urlsplit(database_url).path, "/no_such_database", 1)
    with pytest.raises(DatabaseUnavailable) as info:
        await Database.open(missing, tmp_path)
    assert "does not exist" in str(info.value) and "createdb" in str(info.value)

    role = f"limited_{uuid.uuid4().hex[:8]}"
    await (await Database.open(database_url, tmp_path)).close()  # migrated, as its owner
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        with pytest.raises(DatabaseUnavailable) as info:
            await Database.open(_as_user(database_url, role, PASSWORD), tmp_path, scratch=True)
    finally:
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()
    message = str(info.value)
    assert "refused a privilege" in message and "grant CREATE on the database" in message
    assert "Is it running" not in message and PASSWORD not in message


async def test_unreachable_database_raises_database_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailable) as info:
        await Database.open(f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/nope", tmp_path)
    assert "cannot connect" in str(info.value)
    assert PASSWORD not in str(info.value)


async def test_unreachable_database_hides_query_string_password(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailable) as info:
        await Database.open(
            f"postgresql://postgres@127.0.0.1:1/nope?password={PASSWORD}", tmp_path
        )
    assert PASSWORD not in str(info.value)


async def test_unreachable_database_hides_its_ssl_key_password(tmp_path: Path) -> None:
    """libpq's sslpassword (the client key's passphrase) is a password too: the one line the
    CLI prints shows the host and the other parameters, never it."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "SIGHTLINE_DATA_DIR": str(tmp_path / "data"),
           "DATABASE_URL": f"postgresql://nobody@127.0.0.1:1/x?sslpassword={PASSWORD}"
                           "&sslmode=prefer"}
    code, out, err = await run_cli("costs", env=env)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("sightline: cannot connect to the database at postgresql://nobody@"
                          "127.0.0.1:1/x?sslpassword=***&sslmode=prefer: ")
    assert PASSWORD not in out + err


@pytest.mark.parametrize(("url", "reason"), [
    ("postgresql://postgres:{pw}@127.0.0.1:abc/x", "ValueError: invalid literal for int()"),
    ("postgresql://postgres:{pw}@127.0.0.1:99999/x", "OverflowError: "),
    ("postgresql://postgres:{pw}@127.0.0.1:1/x?sslmode=bogus",
     "ClientConfigurationError: `sslmode` parameter must be one of"),
])
async def test_a_url_asyncpg_cannot_use_is_a_configuration_error(
    tmp_path: Path, url: str, reason: str,
) -> None:
    """What `DATABASE_URL`'s check lets through to asyncpg (a URL not from the settings, or a
    PG* variable) is one line saying what to fix, not a traceback or "the database failed"."""
    with pytest.raises(DatabaseUnavailable) as info:
        await Database.open(url.format(pw=PASSWORD), tmp_path)
    message = str(info.value)
    assert message.startswith("the database at postgresql://postgres:***@127.0.0.1:")
    assert f"cannot be connected to as configured: {reason}" in message
    assert message.endswith("Fix DATABASE_URL (or the PG* environment variable it leaves to).")
    assert PASSWORD not in message and "\n" not in message


@pytest.mark.parametrize(("url", "shown"), [
    (f"wss://lk:{PASSWORD}@lk.example.com", "wss://lk:***@lk.example.com"),
    (f"https://proxy:{PASSWORD}@models.example.com:8443/v1?alt=sse",
     "https://proxy:***@models.example.com:8443/v1?alt=sse"),
    (f"postgresql://u@h/db?sslpassword={PASSWORD}&password={PASSWORD}&sslmode=require",
     "postgresql://u@h/db?sslpassword=***&password=***&sslmode=require"),
    (f"postgresql://u:p@ss:{PASSWORD}@h/db", "postgresql://u:***@h/db"),
    ("http://[::1", "***"),  # no telling where a password is
])
def test_masked_url_hides_every_password(url: str, shown: str) -> None:
    assert masked_url(url) == shown


# -- an outage in the middle of a session --------------------------------------------------


class OwnPostgres:
    """A Postgres server of this test's own, which it can stop and start again."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.server: Any = None
        self.url = ""  # the same after a restart: the socket lives in the data directory

    async def start(self) -> str:
        self.server = await asyncio.to_thread(start_embedded, self.pgdata)
        self.url = str(self.server.get_uri())
        return self.url

    async def stop(self) -> None:
        if self.server is not None:
            # this process holds the only handle, so pgserver stops the server (pg_ctl stop)
            await asyncio.to_thread(self.server.cleanup)
            self.server = None


@pytest.fixture
async def own_postgres(tmp_path: Path) -> AsyncIterator[OwnPostgres]:
    pg = OwnPostgres(tmp_path / "own-pgdata")
    try:
        yield pg
    finally:
        await pg.stop()


async def assert_down(url: str) -> None:
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await asyncpg.connect(url, timeout=5)


async def wait_for_count(url: str, sql: str, expected: int, deadline_s: float = 20.0) -> int:
    """Poll until the query returns `expected` (the writer retries with backoff)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    count = -1
    while loop.time() < end:
        try:
            conn = await asyncpg.connect(url, timeout=5)
            try:
                count = await conn.fetchval(sql)
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError):
            count = -1
        if count == expected:
            return count
        await asyncio.sleep(0.1)
    return count


def record(session: SessionRecord, n: int, start_t: float) -> None:
    for i in range(n):
        session.events.record(
            "frame", detail=FrameDecision(start_t + i, True, "sampled", 1280, 720).as_record())
        session.meter.model_call(
            provider="gemini", model="gemini-2.5-flash",
            usage=Usage(input_tokens=1000 + i, output_tokens=50), images=1, latency_ms=100 + i,
        )


async def open_session(
    url: str, tmp_path: Path, session_id: str
) -> tuple[Database, SessionRecord, ConversationLog]:
    db = await Database.open(url, tmp_path / "data")
    store = Store(db.pool)
    await store.start_session(
        session_id, tenant="acme", user_id="u-1", room="r", source="live", provider="gemini",
        model="gemini-2.5-flash",
    )
    costs_dir = tmp_path / "costs"
    session = SessionRecord.open(
        session_id=session_id, tenant="acme", source="live", costs_dir=costs_dir,
        prices=PriceTable.load(), store=store,
    )
    return db, session, ConversationLog(store, session_id, "acme", costs_dir)


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_outage_past_close_spills_every_unwritten_event(
    own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    url = await own_postgres.start()
    db, session, conversation = await open_session(url, tmp_path, "sess_outage_spill")
    record(session, 3, 0.0)  # 6 events while the database is up
    conversation.add("u-1", "user", "before the outage")
    assert await wait_for_count(url, "SELECT count(*) FROM cost_events", 6) == 6
    assert await wait_for_count(url, "SELECT count(*) FROM messages", 1) == 1

    await own_postgres.stop()
    await assert_down(url)

    # the database is gone: recording goes on, nothing raises
    record(session, 4, 10.0)  # 8 more events
    conversation.add("u-1", "user", "during the outage")
    conversation.add("u-1", "assistant", "still answering")
    await asyncio.sleep(0.5)  # let the writers try, and fail, in the background
    spilled_messages = await conversation.close()
    summary = await session.close()
    db.pool.terminate()

    assert summary["db_spilled_events"] == 8
    assert spilled_messages == 2
    events = jsonl(session.events.path)
    assert [e["seq"] for e in events] == list(range(1, 16))  # 14 events + the summary
    assert events[-1]["kind"] == "summary"
    assert events[-1]["detail"]["db_spilled_events"] == 8
    recorded = events[:-1]

    spill_path = tmp_path / "costs" / "sess_outage_spill.db-spill.jsonl"
    spilled = jsonl(spill_path)
    assert [e["seq"] for e in spilled] == list(range(7, 15))
    assert spilled == recorded[6:]  # exactly the rows the database never got, unchanged
    messages_spill = jsonl(tmp_path / "costs" / "sess_outage_spill.messages-spill.jsonl")
    assert [m["content"] for m in messages_spill] == ["during the outage", "still answering"]

    # back up: the database holds exactly the events written before the outage
    url = await own_postgres.start()
    conn = await asyncpg.connect(url)
    try:
        in_db = [r["seq"] for r in await conn.fetch(
            "SELECT seq FROM cost_events WHERE session_id = $1 ORDER BY seq",
            "sess_outage_spill",
        )]
        contents = [r["content"] for r in await conn.fetch(
            "SELECT content FROM messages ORDER BY id")]
        ended = await conn.fetchval(
            "SELECT ended_at FROM sessions WHERE id = $1", "sess_outage_spill")
    finally:
        await conn.close()
    assert in_db == [1, 2, 3, 4, 5, 6]
    assert not set(in_db) & {e["seq"] for e in spilled}  # none duplicated
    assert sorted(in_db + [e["seq"] for e in spilled]) == [e["seq"] for e in recorded]
    assert contents == ["before the outage"]
    assert ended is None  # the summary could not be stored; it is in the JSONL instead

    # the next session's import brings the spilled events in, then the summary
    db = await Database.open(url, tmp_path / "data")
    try:
        embedder = WordLlamaEmbedder()
        report = await recover_spills(tmp_path / "costs", SpillTargets(
            Store(db.pool), UserMemory(db.pool, embedder), ScreenTimeline(db.pool, embedder),
            embedder))
        stored = await Store(db.pool).get_session("sess_outage_spill")
    finally:
        await db.close()
    assert report.files == 2 and report.left == []
    assert stored is not None and stored["summary"] == events[-1]["detail"]
    assert [e["seq"] for e in stored["events"]] == [e["seq"] for e in recorded]


async def test_outage_then_recovery_loses_nothing(
    own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    url = await own_postgres.start()
    db, session, conversation = await open_session(url, tmp_path, "sess_outage_recover")
    record(session, 2, 0.0)  # 4 events
    assert await wait_for_count(url, "SELECT count(*) FROM cost_events", 4) == 4

    await own_postgres.stop()
    await assert_down(url)
    record(session, 3, 10.0)  # 6 events while down
    conversation.add("u-1", "user", "asked while the database was down")
    await asyncio.sleep(0.5)  # the writers fail at least once and back off

    url = await own_postgres.start()
    record(session, 1, 20.0)  # 2 events after the restart
    # the queued rows are retried and reach the database before the session ends
    assert await wait_for_count(url, "SELECT count(*) FROM cost_events", 12) == 12
    assert await conversation.close() == 0
    summary = await session.close()
    await db.pool.close()

    assert summary["db_spilled_events"] == 0
    assert not (tmp_path / "costs" / "sess_outage_recover.db-spill.jsonl").exists()
    events = jsonl(session.events.path)
    assert [e["seq"] for e in events] == list(range(1, 14))
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT seq, kind FROM cost_events WHERE session_id = $1 ORDER BY seq",
            "sess_outage_recover",
        )
        session_row = await conn.fetchrow(
            "SELECT ended_at, total_cost_usd FROM sessions WHERE id = $1",
            "sess_outage_recover",
        )
        contents = [r["content"] for r in await conn.fetch("SELECT content FROM messages")]
    finally:
        await conn.close()
    assert [(r["seq"], r["kind"]) for r in rows] == [
        (e["seq"], e["kind"]) for e in events[:-1]
    ]
    assert session_row is not None and session_row["ended_at"] is not None
    assert float(session_row["total_cost_usd"]) == pytest.approx(
        summary["total_cost_usd"], abs=1e-8)
    assert contents == ["asked while the database was down"]


async def test_a_long_outage_overflows_to_disk_and_every_turn_lands_in_order(
    own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    url = await own_postgres.start()
    db, session, _conversation = await open_session(url, tmp_path, "sess_long_outage")
    store = Store(db.pool)
    spill = tmp_path / "costs" / "sess_long_outage.messages-spill.jsonl"
    writer = BackgroundWriter(
        "messages",
        lambda rows: store.add_messages("sess_long_outage", "acme", rows),
        spill, max_batch=8, max_backoff_s=0.2, max_pending=12,
    )
    # memory updates (facts and summary) go through the same kind of writer
    memory_writer = BackgroundWriter(
        "memory", UserMemory(db.pool, WordLlamaEmbedder()).apply,
        tmp_path / "costs" / "sess_long_outage.memory-spill.jsonl",
        max_batch=8, max_backoff_s=0.2, max_pending=12,
    )
    # and so do the screen timeline's events
    screen_writer = BackgroundWriter(
        "screen_events", ScreenTimeline(db.pool, WordLlamaEmbedder()).write,
        tmp_path / "costs" / "sess_long_outage.screen-spill.jsonl",
        max_batch=8, max_backoff_s=0.2, max_pending=12,
    )

    def screen_event(n: int) -> dict[str, Any]:
        return event_row(session_id="sess_long_outage", tenant="acme", user_id="u-1",
                         t=float(n), wall_time=1.7e9 + n, content_type="code",
                         reason="local_change", region=(0, 20 * n, 640, 20),
                         lines=[f"screen line {n}"], is_error=n % 7 == 0)

    who = {"tenant": "acme", "user_id": "u-1", "session_id": "sess_long_outage"}
    writer.put({"user_id": "u-1", "role": "user", "content": "turn 0"})
    memory_writer.put({"op": "fact", "key": "progress", "text": "turn 0", **who})
    screen_writer.put(screen_event(0))
    assert await wait_for_count(url, "SELECT count(*) FROM messages", 1) == 1

    await own_postgres.stop()
    await assert_down(url)
    for n in range(1, 60):  # a long outage: far more turns than the queue holds in memory
        writer.put({"user_id": "u-1", "role": "user", "content": f"turn {n}"})
        memory_writer.put({"op": "fact", "key": "progress", "text": f"turn {n}", **who})
        memory_writer.put({"op": "fact", "key": f"turn_{n}", "text": f"seen {n}", **who})
        screen_writer.put(screen_event(n))
        if n % 10 == 0:
            memory_writer.put({"op": "forget", "key": f"turn_{n - 5}", **who})
            memory_writer.put({"op": "summary", "text": f"up to turn {n}", **who})
        assert len(writer._pending) <= 12
    await asyncio.sleep(0.3)
    assert spill.exists() and writer.pending == 59

    url = await own_postgres.start()
    assert await wait_for_count(url, "SELECT count(*) FROM messages", 60) == 60
    assert await writer.close() == 0
    assert await memory_writer.close() == 0
    assert await screen_writer.close() == 0
    assert not spill.exists()
    conn = await asyncpg.connect(url)
    try:
        contents = [r["content"] for r in await conn.fetch(
            "SELECT content FROM messages ORDER BY id")]
        facts = dict(await conn.fetch("SELECT key, text FROM memory_facts"))  # type: ignore[arg-type]
        summary = await conn.fetchval("SELECT text FROM memory_summaries")
        screen_lines = [r["text"] for r in await conn.fetch(
            "SELECT text FROM screen_events ORDER BY id")]
    finally:
        await conn.close()
    assert contents == [f"turn {n}" for n in range(60)]
    # every memory change landed, in the order it was made: the last update of a key wins
    assert facts.pop("progress") == "turn 59" and summary == "up to turn 50"
    assert facts == {f"turn_{n}": f"seen {n}" for n in range(1, 60) if n not in range(5, 50, 10)}
    assert screen_lines == [f"screen line {n}" for n in range(60)]  # every screen event, in order
    await session.close()
    await db.pool.close()


async def test_a_refused_migration_is_one_clear_error(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "migrations"
    bad.mkdir()
    for path in migration_files():
        (bad / path.name).write_text(path.read_text())
    (bad / "9999_needs_an_extension.sql").write_text(
        "CREATE EXTENSION no_such_vector_extension; CREATE TABLE never_made (id int);")
    monkeypatch.setattr("memory.migrate.MIGRATIONS_DIR", bad)
    with pytest.raises(DatabaseUnavailable, match="migration 9999_needs_an_extension failed"):
        await Database.open(database_url, tmp_path)
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('never_made')") is None
    finally:
        await conn.close()


def one_line_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Sightline's and the database libraries' log messages, each checked to be one line
    without a traceback (asyncio's own, about tasks an earlier test left, are not theirs)."""
    records = [r for r in caplog.records
               if r.name.split(".")[0] in ("sightline", "asyncpg", "pgserver")]
    for record in records:
        assert "\n" not in record.getMessage() and not record.exc_info, record.getMessage()
    return [record.getMessage() for record in records]


async def test_a_session_opened_while_postgres_is_down_goes_on_and_is_imported_later(
    own_postgres: OwnPostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Postgres went away after the pool opened (seen: a replay's second session after the
    embedded server was killed ended the replay with a traceback and printed nothing): the
    session opens without the database and answers; its row, cost log and conversation wait
    on disk, and the next session opened on the database imports them, nothing lost. Its
    memory model was not asked (what is remembered could not be read): its exchange waits, and
    the user's next session analyses it first, against what is remembered then."""
    url = await own_postgres.start()
    db = await Database.open(url, tmp_path / "data")
    await own_postgres.stop()
    await assert_down(url)
    def reply(request: CapturedRequest) -> ScriptedReply:
        if request.purpose == "memory":
            return ScriptedReply(text=json.dumps({  # scripted
                "facts": [{"key": "package_manager", "text": "The user moved to uv."}],
                "summary": "The user moved to uv and checked the assistant was there."}))
        return ScriptedReply(text="[[confidence: 0.95]] (scripted) Still here.")

    async with ScriptedModelServer(replies=reply) as server:
        settings = Settings.from_env({"DATABASE_URL": url,
                                      "SIGHTLINE_DATA_DIR": str(tmp_path / "data")})
        settings = settings.with_overrides(
            gemini_api_key="test-key", anthropic_api_key="test-key",
            gemini_base_url=server.base_url, anthropic_base_url=server.base_url,
            embeddings="offline", memory_updates=True)
        offline_before = REGISTRY.get_sample_value(
            "sightline_sessions_without_database_total", {"tenant": "acme"}) or 0.0
        with caplog.at_level(logging.WARNING):
            runtime = await SessionRuntime.open(settings, db, tenant="acme", user_id="u1",
                                                source="replay")
            for t, desk in enumerate(typed_desk()):  # what it saw: its screen timeline
                for second in (0, 1):
                    runtime.screen.offer(t * 10.0 + second, desk.frame())
                    await runtime.screen_settled()
            session = runtime.agent_session()
            await session.start(runtime.agent, record=False)
            run = await session.run(user_input="I moved to uv. Are you there?")
            await session.aclose()
            summary = await runtime.close()
            await db.close()
        reply = " ".join(ev.item.text_content or "" for ev in run.events
                         if ev.type == "message" and ev.item.role == "assistant")
        assert reply == "(scripted) Still here."
        assert runtime.memory is None
        assert sum(m["calls"] for m in summary["by_model"].values()) == 1
        events = jsonl(runtime.record.events.path)
        assert events[-1]["kind"] == "summary"
        assert events[-1]["detail"]["total_cost_usd"] == summary["total_cost_usd"] > 0
        # ops see it as it happens: the metric, and the event in the session's log
        assert [e["kind"] for e in events[:2]] == ["session", "no_database"]
        assert REGISTRY.get_sample_value("sightline_sessions_without_database_total",
                                         {"tenant": "acme"}) == offline_before + 1
        messages = one_line_records(caplog)
        assert any(m.startswith("the database does not answer (") for m in messages)
        assert f"session {runtime.session_id} goes on without the database" in " ".join(
            messages)
        spilled = sorted(p.name.removeprefix(runtime.session_id)
                         for p in settings.costs_dir.glob(f"{runtime.session_id}.*-spill.jsonl"))
        assert spilled == [".exchanges-spill.jsonl", ".messages-spill.jsonl",
                           ".screen-spill.jsonl", ".session-spill.jsonl"]
        assert not [r for r in server.requests if r.purpose == "memory"]
        assert summary["memory"]["deferred"] == 1 and summary["memory"]["updates"] == 0
        assert ("1 exchange kept for the user's next session with the database"
                in format_summary(summary))
        assert summary["database"] == {"down_at_open": True, "joined_after_s": None}
        assert ("database: down for the whole session (its rows wait on disk for the import)"
                in format_summary(summary))
        seen = [e["detail"]["lines"] for e in events if e["kind"] == "screen_text"
                and e["detail"]["lines"]]
        assert seen and summary["db_spilled_screen_events"] == len(seen)

        # the database is back: the next session imports the first, nothing lost
        url = await own_postgres.start()
        db = await Database.open(url, tmp_path / "data")
        later = await SessionRuntime.open(settings, db, tenant="acme", user_id="u1",
                                          source="replay")
        later_summary = await later.close()
    asked = [r.text for r in server.requests if r.purpose == "memory"]
    assert len(asked) == 1 and "User: I moved to uv. Are you there?" in asked[0]
    assert later_summary["memory"]["updates"] == 1
    assert later_summary["memory"]["earlier_sessions"] == 1
    assert ("1 update by tier 0 (1 for exchanges earlier sessions could not analyse)"
            in format_summary(later_summary))
    try:
        stored = await Store(db.pool).get_session(runtime.session_id)
        ledger = [r["seq"] for r in await db.pool.fetch(
            "SELECT seq FROM cost_events WHERE session_id = $1 ORDER BY seq",
            runtime.session_id)]
        said = [(r["role"], r["content"]) for r in await db.pool.fetch(
            "SELECT role, content FROM messages WHERE session_id = $1 ORDER BY id",
            runtime.session_id)]
        timeline = await ScreenTimeline(db.pool, WordLlamaEmbedder()).session_events(
            "acme", runtime.session_id)
        facts = [(r["key"], r["text"], r["session_id"]) for r in await db.pool.fetch(
            "SELECT key, text, session_id FROM memory_facts WHERE tenant = 'acme'")]
        backlog = await db.pool.fetchval("SELECT count(*) FROM memory_backlog")
    finally:
        await db.close()
    assert stored is not None and stored["tenant"] == "acme" and stored["user"] == "u1"
    assert stored["summary"] == events[-1]["detail"]
    assert datetime.fromisoformat(stored["ended_at"]).timestamp() == pytest.approx(
        events[-1]["ts"], abs=1e-3)
    assert datetime.fromisoformat(stored["started_at"]).timestamp() <= events[0]["ts"]
    assert ledger == [e["seq"] for e in events[:-1]]  # every event but the summary, once
    assert said == [("user", "I moved to uv. Are you there?"),
                    ("assistant", "(scripted) Still here.")]
    # the fact names the session it was said in; nothing waits any more
    assert facts == [("package_manager", "The user moved to uv.", runtime.session_id)]
    assert backlog == 0
    assert [e.text.splitlines() for e in timeline] == seen  # what it saw, searchable now
    assert any(ERROR_LINE in e.text for e in timeline)
    assert not list(settings.costs_dir.glob(f"{runtime.session_id}.*-spill.jsonl"))


async def test_a_session_opened_while_postgres_is_down_joins_it_once_it_answers(
    own_postgres: OwnPostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Postgres restarting just as a session opens (a managed database failing over) cost that
    session its knowledge, memory and earlier screens for the whole call. Now it asks again
    every SIGHTLINE_DATABASE_RETRY_S and, once Postgres answers, recalls from it, offers the
    knowledge and memory tools and live assist, the user's last messages join its
    conversation and the tenant's budget counts its other sessions' spend; what the session
    itself wrote to disk it imports as it closes. The
    database is handed over as a worker hands one it could not open: `down`, a pool that
    connects when used."""
    url = await own_postgres.start()
    db = await Database.open(url, tmp_path / "data")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "deploys.md").write_text(
        "# Deploys\n\nThe staging deploy key rotates every Friday at noon; ask #ops for it.\n")
    try:
        await KnowledgeBase(db.pool, WordLlamaEmbedder()).ingest([docs], "acme")
        await UserMemory(db.pool, WordLlamaEmbedder()).apply([{
            "op": "summary", "text": "The user is moving staging to the new deploy pipeline.",
            "tenant": "acme", "user_id": "u1", "session_id": "earlier"}])
        store = Store(db.pool)  # the user's last session, whose words a new one continues
        await store.start_session("replay_earlier", tenant="acme", user_id="u1", room=None,
                                  source="replay", provider="gemini", model="scripted")
        await store.add_messages("replay_earlier", "acme", [
            {"user_id": "u1", "role": "user", "content": "Our staging cluster is kestrel."},
            {"user_id": "u1", "role": "assistant", "content": "(scripted) Noted: kestrel."}])
        await db.pool.execute(  # what the tenant's other sessions spent today: 95% of its budget
            "INSERT INTO cost_events (session_id, tenant, seq, ts, kind, cost_usd)"
            " VALUES ('replay_earlier', 'acme', 1, now(), 'model_call', 0.0095)")
    finally:
        await db.close()
    await own_postgres.stop()
    await assert_down(url)
    question = "When does the staging deploy key rotate?"
    async with ScriptedModelServer(
            replies=lambda _: ScriptedReply(text="[[confidence: 0.95]] (scripted) Fridays.")
    ) as server:
        settings = Settings.from_env({"DATABASE_URL": url,
                                      "SIGHTLINE_DATA_DIR": str(tmp_path / "data"),
                                      "SIGHTLINE_DATABASE_RETRY_S": "0.2",
                                      "SIGHTLINE_TENANT_BUDGET_USD": "0.01"})
        settings = settings.with_overrides(
            gemini_api_key="test-key", anthropic_api_key="test-key",
            gemini_base_url=server.base_url, anthropic_base_url=server.base_url,
            embeddings="wordllama")
        joined_before = REGISTRY.get_sample_value(
            "sightline_sessions_joined_database_total", {"tenant": "acme"}) or 0.0
        pool = await Database.unconnected(url)
        with caplog.at_level(logging.INFO):
            runtime = await SessionRuntime.open(settings, None, tenant="acme", user_id="u1",
                                                source="replay", down=pool)
            session = runtime.agent_session()
            await session.start(runtime.agent, record=False)
            await session.run(user_input=question)
            await asyncio.sleep(1.0)  # the watch asks meanwhile, and is told no, quietly
            await own_postgres.start()
            for _ in range(200):
                if runtime.memory is not None:
                    break
                await asyncio.sleep(0.1)
            await session.run(user_input=question)
            await session.aclose()
            summary = await runtime.close()
            await pool.close()
    answers = [r for r in server.requests if r.purpose == "answer"]
    assert len(answers) == 2
    before, after = answers
    assert "rotates every Friday" not in before.text and "new deploy pipeline" not in before.text
    assert "rotates every Friday" in after.text and "new deploy pipeline" in after.text
    # the user's last messages join the conversation, after the instructions, before this
    # session's own, as a session opened on the database would have them
    assert "kestrel" not in before.text
    turns = [(c["role"], c["parts"][0].get("text", "")) for c in after.body["contents"]]
    assert turns[:3] == [("user", "Our staging cluster is kestrel."),
                         ("model", "(scripted) Noted: kestrel."), ("user", question)]
    tools = [json.dumps(r.body.get("tools", [])) for r in (before, after)]
    assert "search_knowledge" not in tools[0] and "remember" not in tools[0]
    assert "search_knowledge" in tools[1] and "remember" in tools[1]
    events = jsonl(runtime.record.events.path)
    contexts = [e["detail"] for e in events if e["kind"] == "context"]
    assert contexts[0]["knowledge"] == []
    assert [k["source"] for k in contexts[1]["knowledge"]] == ["docs/deploys.md"]
    # live assist too: nothing before the join (no embedder yet), the article after it
    [assisted] = [e["detail"] for e in events if e["kind"] == "assist"]
    assert assisted["text"] == question
    assert [a["source"] for a in assisted["suggestions"]] == ["docs/deploys.md"]
    joined = [e["detail"] for e in events if e["kind"] == "database_joined"]
    # the tenant's budget counted from $0 until the join, then with its other sessions' spend
    kinds = [e["kind"] for e in events]
    crossed = [(e["detail"]["scope"], e["detail"]["threshold"]) for e in events
               if e["kind"] == "budget"]
    assert crossed[:2] == [("tenant", 0.7), ("tenant", 0.9)]
    assert kinds.index("budget") > kinds.index("database_joined")
    assert summary["budget"]["tenant_spent_usd"] >= 0.0095
    assert len(joined) == 1 and joined[0]["offline_s"] >= 1.0
    assert summary["database"] == {"down_at_open": True,
                                   "joined_after_s": joined[0]["offline_s"]}
    assert (f"database: down when the session opened; answered after "
            f"{joined[0]['offline_s']:.0f} s, recalled from then on" in format_summary(summary))
    assert REGISTRY.get_sample_value("sightline_sessions_joined_database_total",
                                     {"tenant": "acme"}) == joined_before + 1
    messages = one_line_records(caplog)
    # one line when it opened without it, none while the watch was told no, one on joining
    assert sum(m.startswith(f"session {runtime.session_id} goes on without the database")
               for m in messages) == 1
    assert not any(m.startswith("the database does not answer (") for m in messages)
    assert any(m.startswith(f"session {runtime.session_id}: the database answers again after")
               for m in messages)
    # what the session wrote on disk it imported itself as it closed: its row with its
    # summary, its ledger, its messages and the exchanges for the user's next memory call
    assert not list(settings.costs_dir.glob(f"{runtime.session_id}.*-spill.jsonl"))
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow("SELECT tenant, user_id, summary FROM sessions WHERE id = $1",
                                  runtime.session_id)
        ledger = await conn.fetchval("SELECT count(*) FROM cost_events WHERE session_id = $1",
                                     runtime.session_id)
        said = await conn.fetchval("SELECT count(*) FROM messages WHERE session_id = $1",
                                   runtime.session_id)
        waiting = await conn.fetchval(
            "SELECT count(*) FROM memory_backlog WHERE session_id = $1", runtime.session_id)
    finally:
        await conn.close()
    assert row is not None and (row["tenant"], row["user_id"]) == ("acme", "u1")
    assert json.loads(row["summary"])["database"]["joined_after_s"] == joined[0]["offline_s"]
    assert ledger == len(events) - 1  # every event but the summary
    assert said == 4 and waiting == 2


async def test_an_embedded_postgres_killed_under_us_is_let_go_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """pgserver's stop of a server that was killed (seen: SIGKILL, as the OOM killer sends)
    raised NoSuchProcess after a dozen lines of pg_ctl output; now nothing raises and every
    line is one line."""
    db = await Database.open(None, tmp_path)
    pid = int((tmp_path / "pgdata" / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    with caplog.at_level(logging.INFO):
        # the pool's connections are gone with it: closing it, the schema untouched, and
        # letting go of the server all end without raising
        await db.close()
    one_line_records(caplog)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_library_log_records_are_cut_to_one_line(caplog: pytest.LogCaptureFixture) -> None:
    library_logs_in_one_line()
    stop_embedded(type("Gone", (), {"cleanup": lambda self: os.kill(2**22 + 1, 0)})())
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except ConnectionRefusedError:
        logging.getLogger("asyncpg.pool").warning(
            "Failed to restore the pool connection floor; retrying", exc_info=True)
    logging.getLogger("pgserver").error("Failed postgres command %s:\nerror:\n%s", "stop",
                                        "server does not shut down")
    assert one_line_records(caplog) == [
        "the embedded Postgres had already stopped (ProcessLookupError: [Errno 3] No such "
        "process)",
        "Failed to restore the pool connection floor; retrying: ConnectionRefusedError: "
        "[Errno 111] Connection refused",
        "Failed postgres command stop:",
    ]


def test_spill_files_come_in_the_order_their_sessions_started(tmp_path: Path) -> None:
    """Imported messages get ids in import order, and history reads them by id: a later
    session whose id sorts first must still come after the earlier one (seen: a replay's
    offline second session, `replay_04…`, imported before its first, `replay_42…`); within
    a session its own row comes first, since the others refer to it."""
    for session_id, started in (("s-b", 100.0), ("s-a", 200.0)):
        (tmp_path / f"{session_id}.jsonl").write_text(json.dumps({"seq": 1, "ts": started}))
    names = ["s-a.messages-spill.jsonl", "s-a.session-spill.jsonl", "s-b.messages-spill.jsonl",
             "s-b.db-spill.jsonl", "s-c.db-spill.jsonl", "s-b.jsonl.bak"]
    for name in names:
        (tmp_path / name).write_text("{}\n")
    assert [p.name for p in spill_files(tmp_path)] == [
        "s-b.db-spill.jsonl", "s-b.messages-spill.jsonl",
        "s-a.session-spill.jsonl", "s-a.messages-spill.jsonl",
        "s-c.db-spill.jsonl"]  # no cost log: last


async def test_a_full_disk_stops_the_cost_log_not_the_session(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The cost log's disk is full (seen on a 64 KB tmpfs: the replay died in tracebacks and
    printed nothing): recording goes on, the file stops with one line, every event still
    reaches Postgres, and the summary says what the file lacks. /dev/full refuses every
    write with ENOSPC, as a full disk does."""
    costs = tmp_path / "costs"
    costs.mkdir()
    (costs / "sess_disk_full.jsonl").symlink_to("/dev/full")
    with caplog.at_level(logging.WARNING):
        db, session, _ = await open_session(database_url, tmp_path, "sess_disk_full")
        record(session, 3, 0.0)  # 6 events
        summary = await session.close()
    try:
        assert await wait_for_count(database_url, "SELECT count(*) FROM cost_events", 6) == 6
        stored = await Store(db.pool).get_session("sess_disk_full")
    finally:
        await db.close()
    assert summary["cost_log_error"] == "No space left on device (from event 1 on)"
    assert stored is not None and stored["summary"] == summary
    assert "(incomplete: No space left on device (from event 1 on); the database has every " \
           "event)" in format_summary(summary)
    assert one_line_records(caplog) == [
        f"cost log {costs / 'sess_disk_full.jsonl'} cannot be written: No space left on device "
        "(from event 1 on); the session goes on, its events go to the database only"]


async def test_rows_neither_the_database_nor_the_disk_takes_are_counted_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    async def down(rows: list[dict[str, Any]]) -> None:
        raise ConnectionRefusedError(111, "Connection refused")
    spill = tmp_path / "s.db-spill.jsonl"
    spill.symlink_to("/dev/full")
    writer = BackgroundWriter("cost_events", down, spill, max_pending=8)
    with caplog.at_level(logging.WARNING):
        for n in range(12):
            writer.put({"seq": n})  # past 8 pending: 2 rows spill, and are refused
        assert await writer.close(timeout_s=0.5) == 0
    assert writer.lost == 12 and writer.spilled == 0
    lost = [m for m in one_line_records(caplog) if "could not be kept" in m]
    assert lost == [f"{n} rows could not be kept in {spill} (No space left on device): they are "
                    "lost" for n in (2, 2, 8)]  # each quarter the queue sheds, then the rest


# -- each spilled or retried row stored once -----------------------------------------------


def spilled_row(kind: str, session_id: str, n: int) -> dict[str, Any]:
    """Row `n` of a spill file of `kind` ("messages" or "screen"), as its session made it."""
    if kind == "messages":
        return {"tenant": "acme", "user_id": "u-1", "role": "user", "content": f"row {n}"}
    return event_row(session_id=session_id, tenant="acme", user_id="u-1", t=float(n),
                     wall_time=1.7e9 + n, content_type="code", reason="local_change",
                     region=(0, 0, 640, 20), lines=[f"row {n}"], is_error=False)


async def stored_rows(pool: asyncpg.Pool, kind: str, session_id: str) -> list[str]:
    table, column = ("messages", "content") if kind == "messages" else ("screen_events", "text")
    return [r[column] for r in await pool.fetch(
        f"SELECT {column} FROM {table} WHERE session_id = $1 ORDER BY id", session_id)]


@pytest.mark.parametrize("kind", ["messages", "screen"])
@pytest.mark.parametrize("made", ["by a session", "before row keys"])
async def test_an_import_cut_off_between_a_batch_and_the_files_rewrite_stores_each_row_once(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch, kind: str, made: str,
) -> None:
    """A closed session's spill file of 250 rows, imported 200 at a time: the first batch is
    stored, the database goes away before the second, and the rewrite of the file without the
    first fails (a full disk; a crash there is the same): the whole file stays, and the next
    import writes every row of it again. Each row is stored once, in order (seen: the
    conversation, the screen timeline, doubled). Rows of a file written before rows had keys
    (`before row keys`) get theirs at the import."""
    costs = settings.costs_dir
    costs.mkdir(parents=True, exist_ok=True)
    embedder = WordLlamaEmbedder()
    await Store(db.pool).start_session("s-cut", tenant="acme", user_id="u-1", room=None,
                                       source="replay", provider="gemini", model="m")
    (costs / "s-cut.jsonl").write_text(json.dumps({"kind": "summary"}) + "\n")
    path = costs / f"s-cut.{kind}-spill.jsonl"
    rows = [spilled_row(kind, "s-cut", n) for n in range(250)]
    if made == "by a session":  # as the session's writer, or a session without Postgres, does
        assert append_rows(path, rows) == 0
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    targets = SpillTargets(Store(db.pool), UserMemory(db.pool, embedder),
                           ScreenTimeline(db.pool, embedder), embedder)

    batches = 0
    write_or_set_aside = spill_recovery.write_or_set_aside

    async def gone_after_one_batch(write: Any, batch: list[dict[str, Any]]) -> Written:
        nonlocal batches
        batches += 1
        if batches > 1:
            return Written(error=ConnectionResetError("the database went away"))
        return await write_or_set_aside(write, batch)

    def disk_full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("memory.spill_recovery.write_or_set_aside", gone_after_one_batch)
    monkeypatch.setattr("memory.spill_recovery.replace_whole", disk_full)
    first = await recover_spills(costs, targets)
    assert first.rows == 200 and first.files == 0
    assert await stored_rows(db.pool, kind, "s-cut") == [f"row {n}" for n in range(200)]
    assert path.exists(), "the file could not be rewritten: it stays whole"

    monkeypatch.undo()
    again = await recover_spills(costs, targets)
    assert (again.files, again.rows, again.left) == (1, 250, [])
    assert not path.exists()
    assert await stored_rows(db.pool, kind, "s-cut") == [f"row {n}" for n in range(250)]


@pytest.mark.parametrize("kind", ["messages", "screen"])
async def test_a_writers_retries_store_each_row_once(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch, kind: str,
) -> None:
    """A writer's two ways of sending a row again, on Postgres: a batch stored whose answer
    was lost (the connection dropped after COMMIT) is retried; and at the close, spilled rows
    partly written stay in the spill file when it cannot be rewritten without them (a full
    disk), for the next import to write. Each row is stored once, in order."""
    store, embedder = Store(db.pool), WordLlamaEmbedder()
    screen = ScreenTimeline(db.pool, embedder)
    await store.start_session("s-retry", tenant="acme", user_id="u-1", room=None,
                              source="replay", provider="gemini", model="m")
    costs = settings.costs_dir
    costs.mkdir(parents=True, exist_ok=True)
    spill = costs / f"s-retry.{kind}-spill.jsonl"
    database = {"down": False, "acks_lost": 1, "batches_up": -1}

    async def write(rows: list[dict[str, Any]]) -> None:
        if database["batches_up"] == 0:
            database["down"] = True
        database["batches_up"] -= 1
        if database["down"]:
            raise ConnectionRefusedError(111, "Connection refused")
        if kind == "messages":
            await store.add_messages("s-retry", "acme", rows)
        else:
            await screen.write(rows)
        if database["acks_lost"]:
            database["acks_lost"] -= 1
            raise ConnectionResetError("connection lost after COMMIT")

    writer = BackgroundWriter(kind, write, spill, max_batch=5, max_backoff_s=0.05,
                              max_pending=12)
    for n in range(5):
        writer.put(spilled_row(kind, "s-retry", n))
    await eventually(lambda: writer.pending == 0, "stored, its answer lost, retried")
    assert await stored_rows(db.pool, kind, "s-retry") == [f"row {n}" for n in range(5)]

    database["down"] = True
    for n in range(5, 45):  # past 12 queued: the oldest spill
        writer.put(spilled_row(kind, "s-retry", n))
    await asyncio.sleep(0.2)
    assert spill.exists()
    # back for two writes: the first batch of the spilled rows, stored but its answer lost,
    # and its retry; then gone again, and at the close the file cannot be rewritten without
    # the rows written
    database.update(down=False, acks_lost=1, batches_up=2)
    await eventually(lambda: bool(database["down"]), "the database seen down")

    def disk_full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("memory.writer.replace_whole", disk_full)
    assert await writer.close(timeout_s=0.5) > 0
    monkeypatch.undo()
    assert await stored_rows(db.pool, kind, "s-retry") == [f"row {n}" for n in range(10)]

    (costs / "s-retry.jsonl").write_text(json.dumps({"kind": "summary"}) + "\n")
    report = await recover_spills(costs, SpillTargets(
        store, UserMemory(db.pool, embedder), screen, embedder))
    assert report.files == 1 and report.left == []
    assert await stored_rows(db.pool, kind, "s-retry") == [f"row {n}" for n in range(45)]


async def test_rows_stored_before_row_keys_migrate_and_keep_no_key(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A database whose messages and screen events were stored before migration 0018 (the
    same one twice, as the duplicating import left them) migrates: its rows keep a NULL key
    (stored already: nothing is to be skipped by it), and the rows written from then on are
    skipped by theirs when they come again."""
    earlier = tmp_path / "migrations"
    earlier.mkdir()
    for path in migration_files():
        if path.stem < "0018":
            (earlier / path.name).write_text(path.read_text())
    conn = await asyncpg.connect(database_url)
    try:
        monkeypatch.setattr("memory.migrate.MIGRATIONS_DIR", earlier)
        await apply_migrations(conn)
        await conn.execute("INSERT INTO sessions (id, tenant, user_id, source) VALUES"
                           " ('s-old', 'acme', 'u-1', 'replay')")
        for _ in range(2):
            await conn.execute("INSERT INTO messages (session_id, tenant, user_id, role, content)"
                               " VALUES ('s-old', 'acme', 'u-1', 'user', 'row 0')")
            await conn.execute(
                "INSERT INTO screen_events (session_id, tenant, user_id, t, at, content_type,"
                " reason, region, text, words) VALUES ('s-old', 'acme', 'u-1', 0, now(),"
                " 'code', 'local_change', '{0,0,1,1}', 'row 0', 'row 0')")
        monkeypatch.undo()
        assert await apply_migrations(conn) == [p.stem for p in migration_files()
                                                if p.stem >= "0018"]
        for table in ("messages", "screen_events"):
            assert await conn.fetchval(
                f"SELECT count(*) FROM {table} WHERE row_key IS NULL") == 2, table
    finally:
        await conn.close()
    db = await Database.open(database_url, tmp_path)
    try:
        row = spilled_row("messages", "s-old", 1)
        for _ in range(2):
            await Store(db.pool).add_messages("s-old", "acme", [
                {**row, "row_key": str(uuid.uuid4())}, row])
        keyed = {**row, "row_key": str(uuid.uuid4())}
        for _ in range(2):
            await Store(db.pool).add_messages("s-old", "acme", [keyed])
        assert await stored_rows(db.pool, "messages", "s-old") == ["row 0", "row 0", *(
            ["row 1"] * 5)]  # two keyless, two with keys of their own, and one key twice
        await assert_bm25_statistics_exact(db.pool, "messages_bm25", "messages",
                                           "tenant, user_id")
    finally:
        await db.close()


async def test_a_message_its_client_named_is_stored_once_per_room(
    settings: Settings, db: Database,
) -> None:
    """A question its client named (the console's `sightline.message`) is stored under a key
    made of the room and that id: the worker that died after storing it and the agent that
    replaced it (sent it again by the page) store it once. The same id in another room, or
    from another user, is another message. The next session's conversation carries each
    message's key, by which its chat inbox knows the question (agent/chat_inbox.py)."""
    store = Store(db.pool)
    logs = []
    for session_id, room in (("s-died", "room-1"), ("s-replacement", "room-1"),
                             ("s-elsewhere", "room-2")):
        await store.start_session(session_id, tenant="acme", user_id="u-1", room=room,
                                  source="live", provider="gemini", model="m")
        logs.append(ConversationLog(store, session_id, "acme", settings.costs_dir, room=room))
    died, replacement, elsewhere = logs
    died.add("u-1", "user", "Why does the VPN fail?", client_id="page-1")
    assert await died.close() == 0
    replacement.add("u-1", "user", "Why does the VPN fail?", client_id="page-1")
    replacement.add("u-1", "assistant", "Error 809: a blocked port.")
    replacement.add("u-1", "user", "Thanks.")  # not named: stored as said
    assert await replacement.close() == 0
    elsewhere.add("u-1", "user", "Why does the VPN fail?", client_id="page-1")
    elsewhere.add("u-2", "user", "Why does the VPN fail?", client_id="page-1")
    assert await elsewhere.close() == 0

    rows = await db.pool.fetch("SELECT session_id, user_id, content, row_key::text FROM messages"
                               " ORDER BY id")
    assert [(r["session_id"], r["user_id"], r["content"]) for r in rows] == [
        ("s-died", "u-1", "Why does the VPN fail?"),
        ("s-replacement", "u-1", "Error 809: a blocked port."),
        ("s-replacement", "u-1", "Thanks."),
        ("s-elsewhere", "u-1", "Why does the VPN fail?"),
        ("s-elsewhere", "u-2", "Why does the VPN fail?"),
    ]
    assert rows[0]["row_key"] == replacement.named_key("u-1", "page-1")
    assert len({r["row_key"] for r in rows}) == 5

    later = ConversationLog(store, "s-later", "acme", settings.costs_dir, room="room-1")
    history = await later.history("u-1", 10)
    keys = [item.extra.get(ROW_KEY) for item in history.items]
    assert keys == [r["row_key"] for r in rows if r["user_id"] == "u-1"]
    asked, answered = stored_before(history, later.named_key("u-1", "page-1"))
    assert asked is not None and asked.text_content == "Why does the VPN fail?" and answered
    assert stored_before(history, later.named_key("u-1", "page-2")) == (None, False)
    await later.close()
