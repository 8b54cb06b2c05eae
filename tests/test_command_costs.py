"""Billed calls outside the cascade: Gemini embeddings and what commands spend.

Protects: each Gemini embedding request a session makes (its questions, its messages) is in
the session's ledger, billed its texts' estimated tokens; one a command makes (`kb ingest`,
`gaps refresh`: tests/test_gaps.py) is the tenant's, in `cost_events` with no session and in
the command ledger's file; a failed request is billed its estimate when it may have reached
Gemini (timed out, or dropped, after it went out), nothing when it was refused or never left;
a ledger the database refuses is one line, its events kept on disk; a command that fails part
way records what it spent before it failed. Through the real google-genai client against
the wire-format server (and a socket nobody listens on).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import cli_env, run_cli

from agent.command_ledger import CommandLedger
from agent.config import Settings
from agent.event_log import EventLog
from agent.left_spills import import_left_spills
from agent.metering import CostMeter
from agent.pricing import PriceTable
from agent.session import SessionRuntime
from agent.wire_format_server import CapturedRequest, ScriptedModelServer, ScriptedReply
from memory.db import Database
from memory.embeddings import EmbeddingCall, EmbeddingError, GeminiEmbedder
from memory.spill_files import SpillKind, append_rows, event_log_path, spill_path
from memory.store import Store

SPILLED_SESSION = "globex_spilled"  # a closed session whose messages waited in a spill file
SPILLED = [f"globex's spilled message {i}: the billing export to S3 fails" for i in range(6)]


def embedding_requests(server: ScriptedModelServer) -> list[list[str]]:
    """The texts of each `batchEmbedContents` request the server answered."""
    return [[" ".join(p["text"] for p in item["content"]["parts"])
             for item in r.body["requests"]]
            for r in server.requests if r.model == "gemini-embedding-001"]


def billed(texts: list[str]) -> int:
    """The tokens an embedding request is billed: its characters at ~4 a token."""
    return math.ceil(sum(map(len, texts)) / 4)


async def spilled(settings: Settings, db: Database, session_id: str) -> None:
    """A closed session of globex whose messages (`SPILLED`) wait in a spill file."""
    await Store(db.pool).start_session(session_id, tenant="globex", user_id="g1",
                                       room=None, source="live", provider="gemini", model="m")
    settings.costs_dir.mkdir(parents=True, exist_ok=True)
    event_log_path(settings.costs_dir, session_id).write_text(json.dumps(
        {"session_id": session_id, "tenant": "globex", "seq": 1, "ts": time.time(),
         "kind": "summary", "cost_usd": 0.0, "detail": {"total_cost_usd": 0.0}}) + "\n")
    append_rows(spill_path(settings.costs_dir, session_id, SpillKind.MESSAGES),
                [{"tenant": "globex", "user_id": "g1", "role": "user", "content": text}
                 for text in SPILLED])


async def spill_imports(db: Database) -> list[tuple[str, int, str, int]]:
    """The billed calls recorded with no session: (tenant, tokens, command, texts)."""
    rows = await db.pool.fetch("SELECT tenant, input_tokens, detail::jsonb->>'command' AS"
                               " command, (detail::jsonb->>'texts')::int AS texts FROM"
                               " cost_events WHERE session_id IS NULL ORDER BY id")
    return [(r["tenant"], r["input_tokens"], r["command"], r["texts"]) for r in rows]


async def test_a_sessions_gemini_embeddings_are_in_its_ledger(
    settings: Settings, db: Database,
) -> None:
    """The session's own calls are its spend; the rows it imports from other sessions' spill
    files (of any tenant: globex's here) are not: their embedding is their tenant's, recorded
    as the command `spill import` with no session."""
    await spilled(settings, db, SPILLED_SESSION)

    def reply(_request: CapturedRequest) -> ScriptedReply:
        return ScriptedReply(text="[[confidence: 0.95]] The VPN listens on UDP port 51821.")

    async with ScriptedModelServer(replies=reply) as server:
        settings = settings.with_overrides(
            gemini_api_key="test-key", anthropic_api_key="test-key",
            gemini_base_url=server.base_url, anthropic_base_url=server.base_url,
            embeddings="gemini", memory_updates=False)
        runtime = await SessionRuntime.open(settings, db, tenant="acme", user_id="u1",
                                            source="replay")
        session = runtime.agent_session()
        await session.start(runtime.agent, record=False)
        try:
            await session.run(user_input="Which port does the office VPN use?")
        finally:
            await session.aclose()
            summary = await runtime.close()
    requests = [texts for texts in embedding_requests(server) if texts != SPILLED]
    assert SPILLED in embedding_requests(server)  # imported, with their vectors
    assert await db.pool.fetchval("SELECT count(*) FROM messages WHERE session_id = $1"
                                  " AND embedding IS NOT NULL", SPILLED_SESSION) == len(SPILLED)
    events = [json.loads(line) for line in
              runtime.record.events.path.read_text().splitlines()]
    embedded = [e for e in events if e["kind"] == "model_call"
                and e["detail"].get("purpose") == "embedding"]
    # the question (recall and live assist share one call) and the exchange's messages; the
    # ledger has each call as it ends, and calls made together may end in either order
    assert requests and len(embedded) == len(requests)
    assert sorted((e["input_tokens"], e["detail"]["texts"]) for e in embedded) == sorted(
        (billed(texts), len(texts)) for texts in requests)
    assert all(e["detail"]["usage"] == "estimated" and e["model"] == "gemini-embedding-001"
               and e["cost_usd"] == pytest.approx(e["input_tokens"] * 0.15 / 1e6, abs=1e-12)
               for e in embedded)
    # counted in the session's total like every other call, and in its rows
    assert summary["by_model"]["gemini-embedding-001"]["calls"] == len(embedded)
    assert summary["total_cost_usd"] == pytest.approx(
        sum(e["cost_usd"] for e in events if e["kind"] in ("model_call", "model_error")),
        abs=1e-8)
    rows = await db.pool.fetchval(
        "SELECT count(*) FROM cost_events WHERE session_id = $1 AND model = $2",
        runtime.record.events.session_id, "gemini-embedding-001")
    assert rows == len(embedded)
    # the spilled rows' embedding is globex's, as a command's spend (no session)
    assert await spill_imports(db) == [("globex", billed(SPILLED), "spill import", len(SPILLED))]


async def test_spilled_rows_a_command_or_a_stopping_worker_imports_bill_their_tenant(
    settings: Settings, db: Database,
) -> None:
    """`sightline memory show` (of another tenant's user) and a worker on its way out import
    spill files too: what embedding their rows costs is the spilled session's tenant's."""
    await spilled(settings, db, "globex_spilled_1")
    async with ScriptedModelServer() as server:
        env = {**cli_env(settings), "GOOGLE_API_KEY": "test-key",
               "SIGHTLINE_GEMINI_BASE_URL": server.base_url, "SIGHTLINE_EMBEDDINGS": "gemini"}
        code, _, err = await run_cli("memory", "show", "--tenant", "acme", "--user", "u1",
                                     env=env)
        assert code == 0, err
        await spilled(settings, db, "globex_spilled_2")
        await import_left_spills(settings.with_overrides(
            gemini_api_key="test-key", gemini_base_url=server.base_url, embeddings="gemini"))
    assert embedding_requests(server) == [SPILLED, SPILLED]
    assert await spill_imports(db) == [
        ("globex", billed(SPILLED), "spill import", len(SPILLED))] * 2
    assert await db.pool.fetchval("SELECT count(*) FROM messages WHERE tenant = 'globex'"
                                  " AND embedding IS NOT NULL") == 2 * len(SPILLED)


async def test_commands_embedding_with_gemini_bill_the_tenant_outside_any_session(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "vpn.md").write_text("# VPN\n\nThe VPN listens on UDP port 51821.\n")
    (docs / "router.md").write_text("# Router\n\nReboot the router by holding reset.\n")
    async with ScriptedModelServer() as server:
        env = {**cli_env(settings), "GOOGLE_API_KEY": "test-key",
               "SIGHTLINE_GEMINI_BASE_URL": server.base_url, "SIGHTLINE_EMBEDDINGS": "gemini"}
        code, _, err = await run_cli("kb", "ingest", str(docs), "--tenant", "acme", env=env)
        assert code == 0, err
        code, _, err = await run_cli("kb", "search", "which port for the VPN", "--tenant",
                                     "acme", env=env)
        assert code == 0, err
        code, _, err = await run_cli("screen", "search", "VPN error", "--tenant", "acme",
                                     env=env)
        assert code == 0, err
    requests = embedding_requests(server)
    rows = [(r["input_tokens"], json.loads(r["detail"])) for r in await db.pool.fetch(
        "SELECT input_tokens, detail FROM cost_events WHERE session_id IS NULL"
        " AND tenant = 'acme' ORDER BY id")]
    # each document's chunks in a request of their own, then each search's question
    assert [d["command"] for _, d in rows] == ["kb ingest", "kb ingest", "kb search",
                                                "screen search"]
    assert [(tokens, d["texts"]) for tokens, d in rows] == [
        (billed(texts), len(texts)) for texts in requests]


async def test_a_ledger_the_database_refuses_is_one_line_and_kept_on_disk(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = CommandLedger(tenant="acme", command="kb ingest", costs_dir=tmp_path)
    meter = CostMeter(ledger, PriceTable.load())
    meter.embedding_call(EmbeddingCall("gemini", "gemini-embedding-001", 3, 4000, 12.0))
    meter.embedding_call(EmbeddingCall("gemini", "gemini-embedding-001", 1, 40, 9.0,
                                       error="Gemini embeddings failed: 503", billed=False))
    refusing = Store(db.pool)
    await db.close()  # the database goes away before the command's end
    with caplog.at_level(logging.ERROR, logger="sightline.costs"):
        await ledger.save(refusing)
    assert ledger.cost_usd == pytest.approx(1000 * 0.15 / 1e6)
    [line] = [r.getMessage() for r in caplog.records]
    assert "could not record kb ingest's 2 billed calls ($0.000150)" in line
    assert str(tmp_path / "commands.jsonl") in line and "\n" not in line
    kept: list[dict[str, Any]] = [json.loads(x) for x in
                                  (tmp_path / "commands.jsonl").read_text().splitlines()]
    assert [(e["input_tokens"], e["kind"], e["detail"]["usage"]) for e in kept] == [
        (1000, "model_call", "estimated"), (0, "model_error", "unbilled")]


async def test_a_run_stopped_before_its_save_is_recorded_by_the_next_command(
    db: Database, tmp_path: Path,
) -> None:
    """A command killed before its end (SIGKILL, a deadline) wrote its billed calls to the
    command ledger's file alone: the next command's save writes them too, each once, and
    empties the file."""
    prices = PriceTable.load()
    killed = CommandLedger(tenant="acme", command="kb ingest", costs_dir=tmp_path)
    for chars in (4000, 800):
        CostMeter(killed, prices).embedding_call(
            EmbeddingCall("gemini", "gemini-embedding-001", 2, chars, 10.0))
    left = (tmp_path / "commands.jsonl").read_text()
    next_run = CommandLedger(tenant="globex", command="gaps refresh", costs_dir=tmp_path)
    CostMeter(next_run, prices).embedding_call(
        EmbeddingCall("gemini", "gemini-embedding-001", 1, 40, 5.0))
    store = Store(db.pool)
    await next_run.save(store)
    assert (tmp_path / "commands.jsonl").read_text() == ""

    async def rows() -> list[tuple[str, str, int]]:
        return [(r["tenant"], json.loads(r["detail"])["command"], r["input_tokens"])
                for r in await db.pool.fetch("SELECT tenant, detail, input_tokens FROM"
                                             " cost_events WHERE session_id IS NULL ORDER BY id")]
    assert sorted(await rows()) == [("acme", "kb ingest", 200), ("acme", "kb ingest", 1000),
                                    ("globex", "gaps refresh", 10)]
    # the file written again (an earlier save stopped between the insert and the emptying)
    (tmp_path / "commands.jsonl").write_text(left)
    await CommandLedger(tenant="acme", command="kb search", costs_dir=tmp_path).save(store)
    assert len(await rows()) == 3 and (tmp_path / "commands.jsonl").read_text() == ""


async def test_an_event_after_the_cost_log_closed_is_one_line_not_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A call that ends after the session's summary (a spill import, a late embedding) once
    raised "I/O operation on closed file" into its caller, which lost the vectors it had."""
    events = EventLog(session_id="s1", tenant="acme", costs_dir=tmp_path, store=None)
    await events.close({"total_cost_usd": 0.0})
    with caplog.at_level(logging.WARNING, logger="sightline.costs"):
        CostMeter(events, PriceTable.load()).embedding_call(
            EmbeddingCall("gemini", "gemini-embedding-001", 1, 40, 5.0))
    [line] = [r.getMessage() for r in caplog.records]
    assert "a late model_call event" in line and "not recorded" in line
    assert json.loads(events.path.read_text().splitlines()[-1])["kind"] == "summary"


QUESTION = "Why does the VPN drop every hour?"


class FailingEmbeddings(ScriptedModelServer):
    """Fails every embedding request the way `mode` says, once it has received it whole:
    `slow` answers after the client gave up, `drop` closes the connection unanswered,
    `refuse` answers 403 (a key Gemini refuses)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.received = 0

    async def _gemini_embed(self, request: web.Request, model: str) -> web.Response:
        await request.read()
        self.received += 1
        if self.mode == "refuse":
            return self._gemini_error(403, "API key not valid. Please pass a valid API key.")
        if self.mode == "drop":
            assert request.transport is not None
            request.transport.close()
        await asyncio.sleep(60)  # cancelled when the client leaves (`handler_cancellation`)
        raise AssertionError("the client waited a minute")


async def embed_failing(base_url: str, meter: CostMeter) -> str:
    """Embeds QUESTION through the real client with a short timeout and no retry; the one
    line the failure says."""
    embedder = GeminiEmbedder(api_key="test-key", base_url=base_url, timeout_s=0.5,
                              retries=0, record=meter.embedding_call)
    try:
        with pytest.raises(EmbeddingError) as failed:
            await embedder.embed_query(QUESTION)
    finally:
        await embedder.aclose()
    return str(failed.value)


@pytest.fixture
def meter(tmp_path: Path) -> CostMeter:
    return CostMeter(EventLog(session_id="s1", tenant="acme", costs_dir=tmp_path, store=None),
                     PriceTable.load())


def logged(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in event_log_path(tmp_path, "s1").read_text().splitlines()]


@pytest.fixture
def unheard() -> Iterator[str]:
    """The URL of a port bound by nobody's listener: a connection there is refused."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{bound.getsockname()[1]}"


@pytest.mark.parametrize("mode", ["slow", "drop"])
async def test_an_embedding_request_that_reached_gemini_is_billed_though_it_failed(
    meter: CostMeter, tmp_path: Path, mode: str,
) -> None:
    """Gemini bills a request it received, answered or not: one that timed out, or whose
    connection dropped, after it went out is billed its texts' estimate, with its error."""
    async with FailingEmbeddings(mode) as server:
        line = await embed_failing(server.base_url, meter)
        assert server.received == 1
    assert "\n" not in line and "Gemini embeddings" in line
    (event,) = logged(tmp_path)
    assert event["kind"] == "model_error" and event["detail"]["usage"] == "estimated"
    assert event["detail"]["error"] and event["detail"]["error"] in line
    assert event["input_tokens"] == billed([QUESTION]) > 0
    assert event["cost_usd"] == pytest.approx(billed([QUESTION]) * 0.15 / 1e6, abs=1e-12)


async def test_an_embedding_request_refused_or_never_sent_is_billed_nothing(
    meter: CostMeter, tmp_path: Path, unheard: str,
) -> None:
    """Refused with an HTTP error (a key Gemini refuses), or never sent (the connection
    refused): nothing is billed, and the error is kept."""
    async with FailingEmbeddings("refuse") as server:
        await embed_failing(server.base_url, meter)
    await embed_failing(unheard, meter)
    events = logged(tmp_path)
    assert ["403" in e["detail"]["error"] for e in events] == [True, False]
    assert "Cannot connect" in events[1]["detail"]["error"]
    for event in events:
        assert event["kind"] == "model_error" and event["detail"]["usage"] == "unbilled"
        assert (event["input_tokens"], event["cost_usd"]) == (0, 0.0)


class RefusingSecond(ScriptedModelServer):
    """Embeds the first request, refuses every later one (403: a key Gemini stops taking)."""

    async def _gemini_embed(self, request: web.Request, model: str) -> web.Response:
        if embedding_requests(self):
            self._capture(request, "gemini", model, False,
                          await self._read_json(request) or {}, [], 0)
            return self._gemini_error(403, "API key not valid. Please pass a valid API key.")
        return await super()._gemini_embed(request, model)


async def test_a_command_that_fails_part_way_records_what_it_spent(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    """`kb ingest` stopped by its second document's embedding: the first one's billed call
    is the tenant's all the same, saved on the way out, and the ledger's file is emptied."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a-vpn.md").write_text("# VPN\n\nThe VPN listens on UDP port 51821.\n")
    (docs / "b-router.md").write_text("# Router\n\nReboot the router by holding reset.\n")
    async with RefusingSecond() as server:
        env = {**cli_env(settings), "GOOGLE_API_KEY": "test-key",
               "SIGHTLINE_GEMINI_BASE_URL": server.base_url, "SIGHTLINE_EMBEDDINGS": "gemini"}
        code, _, err = await run_cli("kb", "ingest", str(docs), "--tenant", "acme", env=env)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "API key not valid" in err and "1 documents were ingested before it" in err
    [first, _] = embedding_requests(server)
    rows = [(r["kind"], r["input_tokens"], json.loads(r["detail"])["command"])
            for r in await db.pool.fetch("SELECT kind, input_tokens, detail FROM cost_events"
                                         " WHERE session_id IS NULL ORDER BY id")]
    assert rows[0] == ("model_call", billed(first), "kb ingest")
    assert [kind for kind, _, _ in rows] == ["model_call", "model_error"]
    assert (settings.costs_dir / "commands.jsonl").read_text() == ""


async def test_a_save_the_database_refuses_does_not_hide_the_commands_failure(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The ledger is saved when the command's block fails; when that save fails too, it is
    one line and the events stay on disk, and the failure that goes up is the command's own,
    not the database's."""
    ledger = CommandLedger(tenant="acme", command="gaps refresh", costs_dir=tmp_path)
    store = Store(db.pool)
    await db.close()  # the database went away: what stopped the command, and its save
    with caplog.at_level(logging.ERROR, logger="sightline.costs"), \
            pytest.raises(RuntimeError, match="the command's own failure"):
        async with ledger.saving(store):
            CostMeter(ledger, PriceTable.load()).embedding_call(
                EmbeddingCall("gemini", "gemini-embedding-001", 1, 400, 5.0))
            raise RuntimeError("the command's own failure, after a billed call")
    [line] = [r.getMessage() for r in caplog.records]
    assert "could not record gaps refresh's 1 billed calls" in line and "\n" not in line
    [kept] = (tmp_path / "commands.jsonl").read_text().splitlines()
    assert json.loads(kept)["input_tokens"] == 100
