"""`sightline memory hide-secrets`: the secrets in what was stored before Sightline hid them.

Protects: rows and records written as said or read (messages, screen events, a fact, a summary,
an exchange waiting for the memory model, cost events quoting the screen, the user's words and a
hand-off's reason, a session's summary and a closed JSONL cost log) get each secret's value
hidden, the rest as it was, and a screenshot archived as shared has the secret's lines covered:
messages and screen events keep their ids and order, keyword search finds them by their other
words and never by the secret (the BM25 statistics follow), and they are embedded again; a fact
holding a secret is deleted; one tenant's pass leaves another's rows and screenshots alone, and
says what waits for a pass over every tenant (the screenshots of a session without a row),
which covers them; a second pass changes nothing; embedding again with Gemini is billed to
each tenant in turn, and sends no secret.
"""

from __future__ import annotations

import json

import pytest
from conftest import cli_env, run_cli
from test_archive_cover import SECRETS, archived, desk, text_of
from test_command_costs import billed, embedding_requests

from agent import cli_memory
from agent.config import Settings
from agent.wire_format_server import ScriptedModelServer
from memory.db import Database
from memory.secret_text import HIDDEN
from memory.store import Store

SAID = "my wifi password is hunter2, can you check the router page?"
SCREEN = "DB_PASSWORD=hunter2-staging\nrouter admin page"
REASON = "model's summary: The user's password hunter2 stopped working."
SUMMARY = {"total_cost_usd": 0.01, "handoff": {"reason": REASON, "user": "u1"}}
EVENTS = [
    ("screen_text", {"lines": ["DB_PASSWORD=hunter2-staging", "router admin page"]}),
    ("assist", {"text": SAID, "final": True}),
    ("handoff", {"reason": REASON, "user": "u1"}),
    ("turn", {"answered_tier": 0}),
    ("summary", SUMMARY),
]


async def _stored_before(db: Database, settings: Settings, tenant: str) -> str:
    """A closed session of `tenant`'s user u1, its rows and records as written before secrets
    were hidden; its id."""
    session = f"s-{tenant}"
    store = Store(db.pool)
    await store.start_session(session, tenant=tenant, user_id="u1", room=None,
                              source="replay", provider="gemini", model="scripted")
    await db.pool.execute(
        "UPDATE sessions SET ended_at = now(), summary = $2::jsonb, escalation_reason = $3"
        " WHERE id = $1", session, json.dumps(SUMMARY), REASON)
    await store.add_messages(session, tenant, [
        {"user_id": "u1", "role": "user", "content": "which router do I have?"},
        {"user_id": "u1", "role": "user", "content": SAID},
        {"user_id": "u1", "role": "assistant", "content": "The router page is up."}])
    await db.pool.execute(
        "INSERT INTO screen_events (session_id, tenant, user_id, t, at, content_type, reason,"
        " region, text, words) VALUES ($1, $2, 'u1', 1.0, now(), 'code', 'changed',"
        " '{0,0,10,10}', $3, $3)", session, tenant, SCREEN)
    await db.pool.execute(
        "INSERT INTO memory_facts (tenant, user_id, key, text) VALUES ($1, 'u1', 'wifi',"
        " 'The user''s wifi password is hunter2.'), ($1, 'u1', 'router',"
        " 'The user has a Fritzbox router.')", tenant)
    await db.pool.execute(
        "INSERT INTO memory_summaries (tenant, user_id, text) VALUES ($1, 'u1',"
        " 'The user gave their wifi password hunter2 and asked about the router.')", tenant)
    await db.pool.execute(
        "INSERT INTO memory_backlog (tenant, user_id, session_id, seq, user_text,"
        " assistant_text, said_at) VALUES ($1, 'u1', $2, 0, $3, 'Checking.', now())",
        tenant, session, SAID)
    await db.pool.executemany(
        "INSERT INTO cost_events (session_id, tenant, seq, ts, kind, detail)"
        " VALUES ($1, $2, $3, now(), $4, $5::jsonb)",
        [(session, tenant, seq, kind, json.dumps(detail))
         for seq, (kind, detail) in enumerate(EVENTS)])
    settings.costs_dir.mkdir(parents=True, exist_ok=True)
    (settings.costs_dir / f"{session}.jsonl").write_text("".join(
        json.dumps({"seq": seq, "kind": kind, "detail": detail}) + "\n"
        for seq, (kind, detail) in enumerate(EVENTS)))
    archived(settings.frames_dir / session, 1.0, desk(*SECRETS))  # as shared, uncovered
    return session


async def _postings(db: Database, lexeme: str) -> list[int]:
    return [r["row_id"] for r in await db.pool.fetch(
        "SELECT row_id FROM messages_bm25_postings WHERE lexeme = $1 ORDER BY row_id", lexeme)]


async def test_hide_secrets_rewrites_what_was_stored_as_said(
        settings: Settings, db: Database) -> None:
    session = await _stored_before(db, settings, "acme")
    other = await _stored_before(db, settings, "globex")
    # a session whose row was never written (its spill files lost): no tenant is known for it
    archived(settings.frames_dir / "replay_unrecorded", 1.0, desk(*SECRETS))
    ids = [r["id"] for r in await db.pool.fetch(
        "SELECT id FROM messages WHERE tenant = 'acme' ORDER BY id")]
    routers = await _postings(db, "router")
    env = cli_env(settings)

    code, out, err = await run_cli("memory", "hide-secrets", "--tenant", "acme", "--json",
                                   env=env)
    assert code == 0, err
    assert json.loads(out) == {"tenants": {"acme": {
        "messages": 1, "screen_events": 1, "facts_deleted": 1, "summaries": 1,
        "deferred_exchanges": 1, "events": 4, "cost_logs_rewritten": 1,
        "archived_frames_read": 1, "archived_frames_covered": 1, "cost_usd": 0.0}},
        "unrecorded_sessions": {"sessions": 0, "archived_frames_read": 0,
                                "archived_frames_covered": 0, "left": ["replay_unrecorded"]},
        "unimported_spill_files": [], "open_sessions": []}

    hidden = SAID.replace("hunter2", HIDDEN)
    messages = await db.pool.fetch(
        "SELECT id, content, embedding IS NOT NULL AS embedded FROM messages"
        " WHERE tenant = 'acme' ORDER BY id")
    assert [(m["id"], m["content"]) for m in messages] == [
        (ids[0], "which router do I have?"), (ids[1], hidden),
        (ids[2], "The router page is up.")]
    assert messages[1]["embedded"]
    assert await _postings(db, "router") == routers, "searched by its other words as before"
    assert len(await _postings(db, "hunter2")) == 1, "only the other tenant's message"
    assert await db.pool.fetchval(
        "SELECT docs FROM messages_bm25_stats WHERE tenant = 'acme'") == 3
    screen = await db.pool.fetchrow(
        "SELECT text, words FROM screen_events WHERE tenant = 'acme'")
    assert screen["text"] == f"DB_PASSWORD={HIDDEN}\nrouter admin page"
    assert "hunter2" not in screen["words"] and "router" in screen["words"]
    assert [r["text"] for r in await db.pool.fetch(
        "SELECT text FROM memory_facts WHERE tenant = 'acme'")] == [
        "The user has a Fritzbox router."]
    assert await db.pool.fetchval(
        "SELECT text FROM memory_summaries WHERE tenant = 'acme'") == (
        f"The user gave their wifi password {HIDDEN} and asked about the router.")
    assert await db.pool.fetchval(
        "SELECT user_text FROM memory_backlog WHERE tenant = 'acme'") == hidden
    records = await db.pool.fetchval(
        "SELECT string_agg(detail::text, ' ') FROM cost_events WHERE tenant = 'acme'")
    assert "hunter2" not in records and HIDDEN in records and "router admin page" in records
    row = await db.pool.fetchrow(
        "SELECT summary::text, escalation_reason FROM sessions WHERE id = $1", session)
    assert "hunter2" not in row["summary"] and HIDDEN in row["escalation_reason"]
    log = (settings.costs_dir / f"{session}.jsonl").read_text()
    assert "hunter2" not in log and f"lines\": [\"DB_PASSWORD={HIDDEN}\"" in log
    [frame] = (settings.frames_dir / session).glob("*.jpg")
    assert "hunter2" not in text_of(frame) and "import asyncio" in text_of(frame)
    # the other tenant's rows, records and frames are as they were
    [other_frame] = (settings.frames_dir / other).glob("*.jpg")
    assert "hunter2" in text_of(other_frame)
    assert "hunter2" in (settings.costs_dir / f"{other}.jsonl").read_text()
    assert await db.pool.fetchval(
        "SELECT count(*) FROM memory_facts WHERE tenant = 'globex'") == 2

    code, out, err = await run_cli("memory", "hide-secrets", "--tenant", "acme", "--json",
                                   env=env)
    assert code == 0, err
    assert set(json.loads(out)["tenants"]["acme"].values()) == {0}, "nothing left to hide"
    code, out, err = await run_cli("memory", "hide-secrets", "--tenant", "acme", env=env)
    assert code == 0 and out.splitlines()[-1] == (
        "note: 1 session without a session record (running without the database, or their "
        "spill files lost) left archived screenshots no tenant is known for: `sightline "
        "memory hide-secrets` without --tenant covers them too"), err
    [unrecorded] = (settings.frames_dir / "replay_unrecorded").glob("*.jpg")
    assert "hunter2" in text_of(unrecorded), "a tenant's pass leaves it"

    code, out, err = await run_cli("memory", "hide-secrets", env=env)
    assert code == 0, err
    assert "hunter2" not in text_of(unrecorded) and "import asyncio" in text_of(unrecorded)
    assert out.splitlines() == [
        "Tenant acme: secrets hidden in 0 messages, 0 screen events, 0 summaries, 0 exchanges "
        "waiting for the memory model, 0 cost events and 0 cost logs; 0 facts holding one "
        "deleted; 0 archived screenshots read, 0 with lines covered.",
        "Tenant globex: secrets hidden in 1 message, 1 screen event, 1 summary, 1 exchange "
        "waiting for the memory model, 4 cost events and 1 cost log; 1 fact holding one "
        "deleted; 1 archived screenshot read, 1 with lines covered.",
        "1 session without a session record: 1 archived screenshot read, 1 with lines "
        "covered."]
    assert await _postings(db, "hunter2") == []


async def test_hide_secrets_bills_each_tenant_what_embedding_again_with_gemini_cost(
        settings: Settings, db: Database) -> None:
    """Messages and screen events whose secrets were hidden are embedded again: with Gemini a
    billed call, the tenant's own, in `cost_events` with no session (as `kb ingest`'s are);
    what is sent holds no secret."""
    for tenant in ("acme", "globex"):
        await _stored_before(db, settings, tenant)
    async with ScriptedModelServer() as server:
        env = {**cli_env(settings), "GOOGLE_API_KEY": "test-key",
               "SIGHTLINE_GEMINI_BASE_URL": server.base_url, "SIGHTLINE_EMBEDDINGS": "gemini"}
        code, out, err = await run_cli("memory", "hide-secrets", "--json", env=env)
        assert code == 0, err
    requests = embedding_requests(server)
    assert len(requests) == 4, "each tenant's message, then its screen event"
    assert not any("hunter2" in text for texts in requests for text in texts)
    rows = await db.pool.fetch(
        "SELECT tenant, input_tokens, cost_usd, detail FROM cost_events"
        " WHERE session_id IS NULL ORDER BY id")
    assert [(r["tenant"], json.loads(r["detail"])["command"], r["input_tokens"],
             json.loads(r["detail"])["texts"]) for r in rows] == [
        (tenant, "memory hide-secrets", billed(texts), len(texts))
        for tenant, texts in zip(("acme", "acme", "globex", "globex"), requests, strict=True)]
    spent = {tenant: counts["cost_usd"] for tenant, counts in json.loads(out)["tenants"].items()}
    assert spent["acme"] > 0 and spent == pytest.approx(
        {tenant: sum(float(r["cost_usd"]) for r in rows if r["tenant"] == tenant)
         for tenant in ("acme", "globex")}, abs=1e-8)


async def test_hide_secrets_says_how_far_it_is_and_refuses_absurd_threads(
        settings: Settings, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Reading a week of archived screenshots again takes hours: a pass says how far it is on
    stderr (at most every `PROGRESS_S`); `--threads` takes 1 to 64."""
    monkeypatch.setattr(cli_memory, "PROGRESS_S", 0.0)
    progress = cli_memory._Progress("Tenant acme")
    progress(1200, 5000)
    assert capsys.readouterr().err == (
        "Tenant acme: 1,200 of 5,000 archived screenshots read again\n")
    code, _, err = await run_cli("memory", "hide-secrets", "--threads", "0",
                                 env=cli_env(settings))
    assert code == 2 and "--threads: must be a whole number in [1, 64], got '0'" in err
