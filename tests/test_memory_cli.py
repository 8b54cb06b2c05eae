"""`sightline memory show|forget` on a replayed session's memory, in real Postgres.

Protects: show lists what is remembered about one user of one tenant (summary, facts,
messages, screen events); forget deletes all of it (a privacy request), the screen timeline and
archived screenshots included, and rows a closed session left in a spill file (exchanges
waiting for the memory model among them), and nothing of
another user or tenant, and the sessions keep their costs without the user's id.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import pytest
from conftest import DEMO_FIXTURE, CountingEmbedder, cli_env, run_cli
from test_left_spills import offline_session, settings_on

from agent import cli_memory, components
from agent.config import Settings
from agent.replay import replay
from agent.replay_script import load_fixture
from memory.db import Database
from memory.embeddings import (
    Embedder,
    LazyEmbedder,
    LocalEmbedder,
    WordLlamaEmbedder,
    offline_embedder,
)
from memory.forget import FORGOTTEN, changed_detail, forgotten
from memory.store import Store
from memory.user_memory import UserMemory


async def test_show_then_forget_one_user(settings: Settings, db: Database) -> None:
    await replay(load_fixture(DEMO_FIXTURE), settings, db)
    store = Store(db.pool)
    await db.pool.execute(
        "INSERT INTO sessions (id, tenant, user_id, source, provider, model)"
        " VALUES ('s-other', 'acme', 'dev-1', 'replay', 'gemini', 'm')")
    await store.add_messages("s-other", "acme", [
        {"user_id": "dev-1", "role": "user", "content": "same user id, another tenant"}])
    env = cli_env(settings)

    code, out, err = await run_cli("memory", "show", "--tenant", "demo", "--user", "dev-1",
                                   env=env)
    assert code == 0, err
    assert "10 messages remembered" in out and "Which pip and Python version am I on?" in out
    assert "[python_setup] The user runs pyenv-managed Python 3.11.7" in out
    assert "summary: The user checked their tool versions" in out
    code, json_out, _ = await run_cli("memory", "show", "--tenant", "demo", "--user", "dev-1",
                                      "--json", env=env)
    shown = json.loads(json_out)
    assert shown["messages"] == 10
    assert [f["key"] for f in shown["facts"]] == ["config_format", "python_setup"]
    assert shown["summary"].startswith("The user checked their tool versions")

    # a closed session of the user left a message in a spill file (its database was down)
    ended = await db.pool.fetchval("SELECT id FROM sessions WHERE tenant = 'demo' LIMIT 1")
    spill = settings.costs_dir / f"{ended}.messages-spill.jsonl"
    row = {"tenant": "demo", "user_id": "dev-1", "role": "user",
           "content": "written while the database was down"}
    # and one the database refuses (a role it does not allow): set aside at the import
    spill.write_text(json.dumps(row) + "\n" + json.dumps({**row, "role": "narrator"}) + "\n")
    refused = settings.costs_dir / f"{ended}.messages-refused.jsonl"
    # and an exchange its memory model never saw; the other tenant's user has one waiting too
    exchanges = settings.costs_dir / f"{ended}.exchanges-spill.jsonl"
    exchanges.write_text(json.dumps({
        "tenant": "demo", "user_id": "dev-1", "session_id": ended, "seq": 0,
        "user": "I moved to uv.", "assistant": "Noted.", "said_at": 1.7e9}) + "\n")
    await UserMemory(db.pool, WordLlamaEmbedder()).defer([{
        "tenant": "acme", "user_id": "dev-1", "session_id": "s-other", "seq": 0,
        "user": "another tenant", "assistant": "kept", "said_at": 1.7e9}])
    code, out, err = await run_cli("memory", "show", "--tenant", "demo", "--user", "dev-1",
                                   env=env)
    assert code == 0, err
    assert "11 messages remembered" in out
    assert "note: set aside 1 spilled row the database refused" in out
    assert refused.exists()
    assert ("1 exchange waiting for the memory model (of sessions that ran without the database"
            in out)

    screen_events = await db.pool.fetchval(
        "SELECT count(*) FROM screen_events WHERE tenant = 'demo' AND user_id = 'dev-1'")
    frames = sorted(settings.frames_dir.glob("replay_*/*.jpg"))
    assert screen_events > 0 and frames, "the replay wrote a screen timeline and frames"
    assert f"{screen_events} screen events remembered" in out

    code, out, err = await run_cli("memory", "forget", "--tenant", "demo", "--user", "dev-1",
                                   "--json", env=env)
    assert code == 0, err
    forgot = json.loads(out)
    assert forgot.pop("events_forgotten") > 0
    assert forgot == {"messages": 11, "facts": 2, "summaries": 1,
                      "deferred_exchanges": 1, "screen_events": screen_events,
                      "archived_frames": len(frames), "refused_row_files": 1,
                      "cost_logs_rewritten": 2, "sessions_unlinked": 2, "gap_questions": 0,
                      "unimported_spill_files": [], "open_sessions": []}
    # the cost records keep their costs, not what they quoted: the user's words (live
    # assist's lookup) and their screen's text, in Postgres and in the JSONL logs alike
    quoted = ("Which pip", "JSONDecodeError", "pip 23.2.1")
    for needle in quoted:
        assert await db.pool.fetchval(
            "SELECT count(*) FROM cost_events WHERE tenant = 'demo' AND detail::text LIKE $1",
            f"%{needle}%") == 0
    logs = sorted(settings.costs_dir.glob("replay_*.jsonl"))
    assert len(logs) == 2
    for log in logs:
        assert not any(needle in log.read_text() for needle in quoted)
        assert json.loads(log.read_text().splitlines()[-1])["kind"] == "summary"
    assert await db.pool.fetchval(
        "SELECT count(*) FROM cost_events WHERE tenant = 'demo' AND kind = 'screen_text'"
        " AND detail->'lines' = '[]'::jsonb") > 0
    assert not spill.exists() and not exchanges.exists() and not refused.exists()
    assert await db.pool.fetchval("SELECT count(*) FROM memory_backlog WHERE tenant = 'demo'") == 0
    assert await db.pool.fetchval("SELECT count(*) FROM memory_backlog") == 1
    assert not any(settings.frames_dir.glob("replay_*/*.jpg"))
    assert await db.pool.fetchval("SELECT count(*) FROM screen_events") == 0
    assert await store.count_messages("demo", "dev-1") == 0
    assert await db.pool.fetchval("SELECT count(*) FROM memory_facts WHERE tenant = 'demo'") == 0
    assert await store.count_messages("acme", "dev-1") == 1, "another tenant's user is kept"
    row = await db.pool.fetchrow(
        "SELECT user_id, total_cost_usd FROM sessions WHERE tenant = 'demo'")
    assert row["user_id"] is None and row["total_cost_usd"] > 0
    code, out, _ = await run_cli("memory", "show", "--tenant", "demo", "--user", "dev-1",
                                 env=env)
    assert "Nothing is remembered about user dev-1 of tenant demo" in out


async def test_show_loads_an_embedder_only_for_spilled_messages(
    migrated_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Showing what is remembered embeds nothing: the model's load (1-7 s, ~400 MB) is paid
    only when a closed session's spilled messages need their vectors."""
    settings = settings_on(migrated_database_url, tmp_path).with_overrides(
        embeddings="wordllama")
    made: list[Embedder] = []

    def make(name: str) -> LocalEmbedder:
        made.append(offline_embedder(name))
        return made[-1]

    monkeypatch.setattr(components, "offline_embedder", make)
    show = argparse.Namespace(memory_command="show", tenant="acme", user="u1", json=True)
    assert await cli_memory.run(settings, show) == 0
    assert made == []
    assert json.loads(capsys.readouterr().out)["messages"] == 0

    session_id = await offline_session(settings)  # its row waits in a spill file: no vector
    assert await cli_memory.run(settings, show) == 0
    assert made == []
    (settings.costs_dir / f"{session_id}.messages-spill.jsonl").write_text(json.dumps(
        {"tenant": "acme", "user_id": "u1", "role": "user", "content": "spilled words"}) + "\n")
    capsys.readouterr()
    assert await cli_memory.run(settings, show) == 0
    assert len(made) == 1
    shown = json.loads(capsys.readouterr().out)
    assert shown["messages"] == 1 and shown["unimported_spill_files"] == []
    database = await Database.open(settings.database_url, settings.data_dir)
    try:
        assert await database.pool.fetchval(
            "SELECT embed_model FROM messages WHERE session_id = $1", session_id) == made[0].name
    finally:
        await database.close()


async def test_a_lazy_embedder_is_made_once_by_its_first_use_and_never_unused() -> None:
    made: list[CountingEmbedder] = []

    def make() -> CountingEmbedder:
        time.sleep(0.05)  # a model's load, long enough for the second embedding to wait on it
        made.append(CountingEmbedder())
        return made[-1]

    unused = LazyEmbedder(make)
    await unused.aclose()
    assert made == [] and not unused.loaded
    lazy = LazyEmbedder(make)
    query, documents = await asyncio.gather(lazy.embed_query("q"), lazy.embed_documents(["d"]))
    assert len(made) == 1 and lazy.loaded
    assert made[0].queries == ["q"] and made[0].embedded == ["d"]
    assert query.shape == (made[0].dim,) and documents.shape == (1, made[0].dim)
    assert (lazy.name, lazy.dim, lazy.fusion) == (made[0].name, made[0].dim, made[0].fusion)
    named_first = LazyEmbedder(make)
    assert named_first.name == made[0].name and len(made) == 2  # read before any embedding
    declared = LazyEmbedder(make, WordLlamaEmbedder)  # its class says them: nothing loads
    assert (declared.name, declared.dim, declared.fusion) == (
        "wordllama-l2-supercat-256", 256, "rrf") and len(made) == 2


def test_a_hand_off_forgets_its_reason_and_user_and_a_second_pass_changes_nothing() -> None:
    handoff = {"session_id": "s1", "user": "dev-1", "reason": "cannot log in to the VPN",
               "stored": True}
    gone = changed_detail("handoff", handoff, forgotten)
    assert gone == {"session_id": "s1", "user": None, "reason": FORGOTTEN, "stored": True}
    assert changed_detail("handoff", gone, forgotten) is None
    summary = changed_detail("summary", {"total_cost_usd": 0.1, "handoff": handoff}, forgotten)
    assert summary == {"total_cost_usd": 0.1, "handoff": gone}
    assert changed_detail("summary", summary, forgotten) is None
    # nothing quoted: untouched
    assert changed_detail("turn", {"answered_tier": 0}, forgotten) is None
