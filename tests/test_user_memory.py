"""Long-term memory: the keeper that writes it, recall that reads it, and spill files imported.

Protects: tier 0's memory update becomes facts keyed by subject (an update replaces, a repeat is
not stored twice, a forget removes) and a rolling summary, through the real google-genai client;
a broken or failing memory call costs a recorded model call and no memory; recall gives a turn the
summary, the facts nearest the question and matching earlier messages outside the conversation,
of this tenant and user only; a turn with nothing to recall costs no embedding; rows a closed
session spilled are imported once, and a live session's are left to it; a NUL in any writer's
memory row (the user's `remember` too) is stored without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
from conftest import CountingEmbedder, assert_bm25_statistics_exact, bm25_score, lexemes

from agent.config import Settings, Tier
from agent.pricing import PriceTable
from agent.providers import make_provider
from agent.session_record import SessionRecord
from agent.tier_call import MeteredTierCall
from agent.wire_format_server import CapturedRequest, ScriptedModelServer, ScriptedReply
from memory import keeper as keeper_module
from memory.backlog import release_lost
from memory.conversation import store_messages
from memory.db import Database
from memory.embeddings import EmbeddingError, WordLlamaEmbedder
from memory.keeper import MemoryKeeper, MemoryReplyError, parse_update
from memory.knowledge import KnowledgeBase
from memory.recall import TurnRecall
from memory.screen_timeline import ScreenTimeline, event_row
from memory.spill_recovery import SpillTargets, recover_spills
from memory.store import Store
from memory.user_memory import Recollection, UserMemory

LITE = Tier("gemini", "gemini-2.5-flash-lite", 0.7, 512)


def update(facts: list[tuple[str, str]] = (), forget: list[str] = (),  # type: ignore[assignment]
           summary: str | None = None) -> ScriptedReply:
    """A memory model's reply (scripted)."""
    return ScriptedReply(text="```json\n" + json.dumps({
        "facts": [{"key": k, "text": t} for k, t in facts], "forget": list(forget),
        "summary": summary}) + "\n```")


def test_parse_update_takes_the_json_object_and_drops_what_is_malformed() -> None:
    parsed = parse_update('Sure! {"facts": [{"key": "Editor Choice", "text": " Uses  vim. "},'
                          ' {"key": "", "text": "no key"}, "not a fact", {"key": "k"}],'
                          ' "forget": ["Old Key", 3], "summary": "  short  "} bye')
    assert [(f.key, f.text) for f in parsed.facts] == [("editor_choice", "Uses vim.")]
    assert parsed.forget == ["old_key"] and parsed.summary == "short"
    for broken in ("no json here", "{not json}", "[1, 2]"):
        with pytest.raises(MemoryReplyError):
            parse_update(broken)


async def _session(db: Database, session_id: str, tenant: str, user: str) -> None:
    await Store(db.pool).start_session(session_id, tenant=tenant, user_id=user, room=None,
                                       source="replay", provider="gemini", model="m")


def _record(tmp_path: Path, session_id: str) -> SessionRecord:
    return SessionRecord.open(session_id=session_id, tenant="acme", source="replay",
                              costs_dir=tmp_path / "costs", prices=PriceTable.load(None),
                              store=None)


async def test_keeper_updates_dedupes_and_forgets_facts_and_keeps_a_summary(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    memory = UserMemory(db.pool, WordLlamaEmbedder())
    script = [
        update([("python_version", "The user runs Python 3.11.")], summary="Asked about pip."),
        update([("python_version", "The user upgraded to Python 3.12."),
                ("editor", "The user edits in VS Code."),
                ("python_again", "The user upgraded to Python 3.12.")],  # a repeat, new key
               summary="Asked about pip, then upgraded Python."),
        ScriptedReply(text="I cannot help with memory today."),  # not JSON: nothing changes
        update(forget=["editor"]),
    ]
    seen: list[CapturedRequest] = []

    def serve(request: CapturedRequest) -> ScriptedReply:
        seen.append(request)
        return script[len(seen) - 1]

    async with ScriptedModelServer(serve) as server:
        provider = make_provider(settings.with_overrides(
            gemini_api_key="k", gemini_base_url=server.base_url), LITE)
        record = _record(tmp_path, "s-keep")
        keeper = MemoryKeeper(
            memory=memory, model=MeteredTierCall(provider, LITE, record.meter, timeout_s=5),
            tenant="acme", user_id="u-1", session_id="s-keep", spill_dir=tmp_path, timeout_s=5,
            facts=[], summary=None)
        # the last asks, in the user's own words, for what its update forgets (memory/keeper.py
        # applies a forget only then)
        asked = ["question 0", "question 1", "question 2", "Please forget my editor."]
        for n, question in enumerate(asked):
            keeper.exchange(question, f"answer {n}")
        await keeper.settled()
        assert await keeper.close() == 0
        await provider.aclose()

    assert all(r.purpose == "memory" for r in seen)  # told apart by its header, not its text
    assert "User: question 1" in seen[1].text
    assert "- python_version: The user runs Python 3.11." in seen[1].text  # what it knew
    facts = await memory.facts("acme", "u-1")
    assert [(f.key, f.text) for f in facts] == [
        ("python_version", "The user upgraded to Python 3.12.")]
    assert await memory.summary("acme", "u-1") == "Asked about pip, then upgraded Python."
    summary = await record.close()
    assert summary["memory"] == {"recalled": 0, "updates": 3, "failed_updates": 1,
                                 "earlier_sessions": 0, "deferred": 0,
                                 "cost_usd": summary["total_cost_usd"]}
    log_text = await asyncio.to_thread(Path(summary["cost_log"]).read_text)
    events = [json.loads(line) for line in log_text.splitlines()]
    failed = [e for e in events if e["kind"] == "model_error"]
    assert len(failed) == 1 and "unusable memory reply" in failed[0]["detail"]["error"]
    assert failed[0]["detail"]["purpose"] == "memory"


async def test_a_nul_or_lone_surrogate_in_the_keepers_reply_is_stored_without_it(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    """The memory model's reply escapes a NUL and a lone surrogate (half a UTF-16 pair) into
    its facts and summary, as text read off a screen can make it: each is stored without
    them, and the keeper's next request shows what is stored. Before, Postgres refused the
    row with a NUL (set aside, the fact lost) and a lone surrogate could not be sent."""
    memory = UserMemory(db.pool, WordLlamaEmbedder())
    script = [update([("laptop", "The user's laptop runs Ubu\x00ntu 24.04."),
                      ("editor", "The user edits code in \ud800vim.")],
                     summary="Asked about the\x00 laptop."),
              update()]
    seen: list[CapturedRequest] = []

    def serve(request: CapturedRequest) -> ScriptedReply:
        seen.append(request)
        return script[len(seen) - 1]

    async with ScriptedModelServer(serve) as server:
        provider = make_provider(settings.with_overrides(
            gemini_api_key="k", gemini_base_url=server.base_url), LITE)
        keeper = MemoryKeeper(
            memory=memory, model=MeteredTierCall(provider, LITE, _record(tmp_path, "s-nul").meter,
                                                 timeout_s=5),
            tenant="acme", user_id="u-1", session_id="s-nul", spill_dir=tmp_path, timeout_s=5,
            facts=[], summary=None)
        for question in ("My laptop runs Ubuntu 24.04 and I edit code in vim.", "Thanks."):
            keeper.exchange(question, "(answered)")
        await keeper.settled()
        assert await keeper.close() == 0
        await provider.aclose()

    stored = {f.key: f.text for f in await memory.facts("acme", "u-1")}
    assert stored == {"laptop": "The user's laptop runs Ubuntu 24.04.",
                      "editor": "The user edits code in vim."}
    assert await memory.summary("acme", "u-1") == "Asked about the laptop."
    assert not await asyncio.to_thread((tmp_path / "s-nul.memory-refused.jsonl").exists)
    assert "- laptop: The user's laptop runs Ubuntu 24.04." in seen[1].text


async def test_a_nul_in_any_writers_row_is_stored_without_it(db: Database) -> None:
    """The user's `remember` writes its fact as a row without `seen` (tools/memory_tools.py),
    holding the words as heard; a spill file's rows and kept exchanges are what was written
    then: a NUL in any of them is stored without it, and a keeper's row that saw the fact with
    its NUL replaces it. Only the keeper's own rows were cleaned: Postgres refused the batch,
    and the user's `remember` failed."""
    await _session(db, "s-nul", "acme", "u-1")
    memory = UserMemory(db.pool, WordLlamaEmbedder())
    who = {"tenant": "acme", "user_id": "u-1", "session_id": "s-nul"}
    heard = "The user edits code in vi\x00m."
    await memory.apply([{"op": "fact", "key": "editor", "text": heard, **who},
                        {"op": "summary", "text": "Asked about\x00 vim.", **who}])
    await memory.defer([_deferred("acme", "u-1", "s-nul", 0, "Is vi\x00m installed?")])
    assert [(f.key, f.text) for f in await memory.facts("acme", "u-1")] == [
        ("editor", "The user edits code in vim.")]
    assert await memory.summary("acme", "u-1") == "Asked about vim."
    assert await _backlog(db) == [("acme", "Is vim installed?", 0, None)]

    await memory.apply([{"op": "fact", "key": "editor", "text": "The user edits code in emacs.",
                         "seen": heard, **who}])
    assert [(f.key, f.text) for f in await memory.facts("acme", "u-1")] == [
        ("editor", "The user edits code in emacs.")]


async def test_a_failing_memory_model_loses_nothing_else(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    """The model down: the call is recorded as failed, and the exchange waits for the user's
    next session, whose keeper analyses it."""
    await _session(db, "s-fail", "acme", "u-1")
    memory = UserMemory(db.pool, WordLlamaEmbedder())
    async with ScriptedModelServer([ScriptedReply(status=500)]) as server:
        provider = make_provider(settings.with_overrides(
            gemini_api_key="k", gemini_base_url=server.base_url, model_retries=0), LITE)
        record = _record(tmp_path, "s-fail")
        keeper = MemoryKeeper(
            memory=memory, model=MeteredTierCall(provider, LITE, record.meter, timeout_s=5),
            tenant="acme", user_id="u-1", session_id="s-fail", spill_dir=tmp_path, timeout_s=5,
            facts=[], summary=None)
        keeper.exchange("question", "answer")
        assert await keeper.close() == 0
        await provider.aclose()
    summary = await record.close()
    assert summary["memory"]["failed_updates"] == 1 and summary["memory"]["updates"] == 0
    assert await memory.facts("acme", "u-1") == []
    assert await _backlog(db) == [("acme", "question", 1, None)]

    async with ScriptedModelServer([update([("os", "The user runs Debian.")])]) as server:
        provider = make_provider(settings.with_overrides(
            gemini_api_key="k", gemini_base_url=server.base_url), LITE)
        keeper = MemoryKeeper(
            memory=memory, model=MeteredTierCall(provider, LITE,
                                                 _record(tmp_path, "s-next").meter, timeout_s=5),
            tenant="acme", user_id="u-1", session_id="s-next", spill_dir=tmp_path, timeout_s=5,
            facts=[], summary=None,
            deferred=lambda: memory.claim_deferred("acme", "u-1", "s-next"))
        await keeper.settled()
        assert await keeper.close() == 0
        await provider.aclose()
    assert "User: question" in server.requests[0].text
    assert [(f.key, f.text) for f in await memory.facts("acme", "u-1")] == [
        ("os", "The user runs Debian.")]
    assert await _backlog(db) == []


def _deferred(tenant: str, user: str, session_id: str, seq: int, text: str) -> dict[str, Any]:
    return {"tenant": tenant, "user_id": user, "session_id": session_id, "seq": seq,
            "user": text, "assistant": f"answer to {text}", "said_at": 1.7e9 + seq}


async def _backlog(db: Database) -> list[tuple[str, str, int, str | None]]:
    return [(r["tenant"], r["user_text"], r["attempts"], r["claimed_by"]) for r in await
            db.pool.fetch("SELECT * FROM memory_backlog ORDER BY id")]


async def test_deferred_exchanges_are_analysed_first_once_and_tried_again_when_they_fail(
    settings: Settings, db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Exchanges a session without the database kept: the user's next session claims them
    (only that tenant's and user's, oldest first; a second session of the user at once gets
    none), analyses them before its own, and writes their facts under the session they were
    said in; one whose analysis failed is tried again later, three times in all; one the
    session closed before reaching is handed back as it was."""
    for session_id, tenant, user in (("s-off", "acme", "u-1"), ("s-u2", "acme", "u-2"),
                                     ("s-beta", "beta", "u-1"), ("s-now", "acme", "u-1")):
        await _session(db, session_id, tenant, user)
    memory = UserMemory(db.pool, WordLlamaEmbedder())
    rows = [_deferred("acme", "u-1", "s-off", n, f"deferred {n}") for n in range(3)]
    await memory.defer([*rows, _deferred("acme", "u-2", "s-u2", 0, "other user"),
                        _deferred("beta", "u-1", "s-beta", 0, "other tenant")])
    await memory.defer(rows[:1])  # an import retried: not stored twice

    def serve(request: CapturedRequest) -> ScriptedReply:
        if "User: deferred 0" in request.text:
            return update([("shell", "The user uses fish.")])
        if "User: deferred 1" in request.text:
            return ScriptedReply(status=500)
        return update()

    async with ScriptedModelServer(serve) as server:
        provider = make_provider(settings.with_overrides(
            gemini_api_key="k", gemini_base_url=server.base_url, model_retries=0), LITE)
        record = _record(tmp_path, "s-now")
        claimed: list[list[str]] = []

        async def deferred() -> list[Any]:
            items = await memory.claim_deferred("acme", "u-1", "s-now")
            claimed.append([d.user for d in items])
            claimed.append([d.user for d in await memory.claim_deferred("acme", "u-1", "s-x")])
            return items

        keeper = MemoryKeeper(
            memory=memory, model=MeteredTierCall(provider, LITE, record.meter, timeout_s=5),
            tenant="acme", user_id="u-1", session_id="s-now", spill_dir=tmp_path, timeout_s=5,
            facts=[], summary=None, deferred=deferred)
        keeper.exchange("said now", "answered now")
        await keeper.settled()
        assert await keeper.close() == 0
        await provider.aclose()
    asked = [re.search(r"User: (.*)", r.text).group(1) for r in server.requests]  # type: ignore[union-attr]
    assert asked == ["deferred 0", "deferred 1", "deferred 2", "said now"]
    assert claimed == [["deferred 0", "deferred 1", "deferred 2"], []]
    assert [(r["key"], r["session_id"]) for r in await db.pool.fetch(
        "SELECT key, session_id FROM memory_facts")] == [("shell", "s-off")]
    assert await _backlog(db) == [("acme", "deferred 1", 1, None), ("acme", "other user", 0, None),
                                  ("beta", "other tenant", 0, None)]
    summary = await record.close()
    assert summary["memory"]["updates"] == 3 and summary["memory"]["failed_updates"] == 1
    assert summary["memory"]["earlier_sessions"] == 2  # the failed one is not an update

    # the failed one: two more attempts, then it is given up (a model that never answers it)
    for attempt in (2, 3):
        assert [d.user for d in await memory.claim_deferred("acme", "u-1", "s-now")] == [
            "deferred 1"]
        await memory.apply([{"op": "backlog_failed", "tenant": "acme", "user_id": "u-1",
                             "id": (await db.pool.fetchval(
                                 "SELECT id FROM memory_backlog WHERE user_text = 'deferred 1'"
                             ))}])
        assert len(await _backlog(db)) == (3 if attempt == 2 else 2)
    assert ("memory: an exchange of session s-off could not be analysed in 3 attempts; given up "
            "(its messages stay in the log)") in caplog.messages
    # another tenant's row is not touched by an operation naming this one's user
    other = await db.pool.fetchval("SELECT id FROM memory_backlog WHERE tenant = 'beta'")
    await memory.apply([{"op": "backlog_done", "tenant": "acme", "user_id": "u-1", "id": other}])
    assert len(await _backlog(db)) == 2


async def test_a_keeper_at_work_on_what_it_claimed_keeps_it(
    settings: Settings, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A claim expires after 10 minutes (its session died), and a session claims up to 200
    exchanges of a few seconds each: without a word from the keeper, the user's next session
    took and analysed again what this one had not reached yet. The keeper renews its claims as
    it goes (here after every exchange, its claim already 10.5 minutes old)."""
    monkeypatch.setattr(keeper_module, "CLAIM_RENEW_S", 0.0)
    for session_id in ("s-off", "s-now", "s-next"):
        await _session(db, session_id, "acme", "u-1")
    memory = UserMemory(db.pool, WordLlamaEmbedder())
    await memory.defer([_deferred("acme", "u-1", "s-off", n, f"deferred {n}") for n in range(3)])

    async def claimed_long_ago() -> list[Any]:
        items = await memory.claim_deferred("acme", "u-1", "s-now")
        await db.pool.execute(
            "UPDATE memory_backlog SET claimed_at = now() - interval '10 minutes 30 seconds'")
        return items

    def serve(request: CapturedRequest) -> ScriptedReply:
        return ScriptedReply(text=update().text, delay_s=0 if "deferred 0" in request.text
                             else 3.0)

    async with ScriptedModelServer(serve) as server:
        provider = make_provider(settings.with_overrides(
            gemini_api_key="k", gemini_base_url=server.base_url, model_retries=0), LITE)
        keeper = MemoryKeeper(
            memory=memory, model=MeteredTierCall(provider, LITE,
                                                 _record(tmp_path, "s-now").meter, timeout_s=5),
            tenant="acme", user_id="u-1", session_id="s-now", spill_dir=tmp_path, timeout_s=5,
            facts=[], summary=None, deferred=claimed_long_ago)
        for _ in range(40):  # deferred 0 analysed; deferred 1 being analysed (3 s)
            renewed = await db.pool.fetchval(
                "SELECT count(*) FROM memory_backlog WHERE claimed_by = 's-now'"
                " AND claimed_at > now() - interval '1 minute'")
            if renewed == 2:
                break
            await asyncio.sleep(0.05)
        assert await memory.claim_deferred("acme", "u-1", "s-next") == []
        await keeper.settled()
        assert await keeper.close() == 0
        await provider.aclose()
    assert len(server.requests) == 3 and await _backlog(db) == []


async def test_a_session_closing_mid_catch_up_hands_the_rest_back(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    """The claimed exchanges it did not reach are free again, and its own exchange still
    queued is kept for the next session (never attempted)."""
    await _session(db, "s-off", "acme", "u-1")
    memory = UserMemory(db.pool, WordLlamaEmbedder())
    await memory.defer([_deferred("acme", "u-1", "s-off", n, f"deferred {n}") for n in range(2)])
    asked = asyncio.Event()

    def serve(request: CapturedRequest) -> ScriptedReply:
        asked.set()
        return ScriptedReply(text="{}", delay_s=30)  # the session closes before it answers

    async with ScriptedModelServer(serve) as server:
        provider = make_provider(settings.with_overrides(
            gemini_api_key="k", gemini_base_url=server.base_url), LITE)
        keeper = MemoryKeeper(
            memory=memory, model=MeteredTierCall(provider, LITE,
                                                 _record(tmp_path, "s-now").meter, timeout_s=60),
            tenant="acme", user_id="u-1", session_id="s-now", spill_dir=tmp_path,
            timeout_s=0.5, facts=[], summary=None,
            deferred=lambda: memory.claim_deferred("acme", "u-1", "s-now"))
        await asyncio.wait_for(asked.wait(), timeout=30)
        assert await _backlog(db) == [("acme", "deferred 0", 0, "s-now"),
                                      ("acme", "deferred 1", 0, "s-now")]
        keeper.exchange("said now", "answered now")  # queued behind them
        assert await keeper.close() == 0
        await provider.aclose()
    assert len(server.requests) == 1
    assert await _backlog(db) == [("acme", "deferred 0", 0, None), ("acme", "deferred 1", 0, None),
                                  ("acme", "said now", 0, None)]
    assert await db.pool.fetchval(
        "SELECT session_id FROM memory_backlog WHERE user_text = 'said now'") == "s-now"


async def test_an_exchange_a_dead_worker_was_analysing_waits_for_a_later_session(
    settings: Settings, db: Database, tmp_path: Path,
) -> None:
    """The keeper writes each exchange to the backlog, claimed, as it queues it: a worker
    killed while the model thinks (nothing runs after SIGKILL) leaves it there, not lost;
    once the claim expires the user's next session analyses it, and what the dead session
    would have settled later changes nothing."""
    await _session(db, "s-dead", "acme", "u-1")
    await _session(db, "s-next", "acme", "u-1")
    memory = UserMemory(db.pool, WordLlamaEmbedder())
    thinking = asyncio.Event()

    def serve(request: CapturedRequest) -> ScriptedReply:
        if not thinking.is_set():
            thinking.set()
            return ScriptedReply(text="{}", delay_s=30)  # the worker dies before the answer
        return update([("editor", "The user edits in Helix.")])

    async with ScriptedModelServer(serve) as server:
        provider = make_provider(settings.with_overrides(
            gemini_api_key="k", gemini_base_url=server.base_url), LITE)

        def keeper(session_id: str, timeout_s: float) -> MemoryKeeper:
            return MemoryKeeper(
                memory=memory, model=MeteredTierCall(
                    provider, LITE, _record(tmp_path, session_id).meter, timeout_s=60),
                tenant="acme", user_id="u-1", session_id=session_id, spill_dir=tmp_path,
                timeout_s=timeout_s, facts=[], summary=None,
                deferred=lambda: memory.claim_deferred("acme", "u-1", session_id))

        dead = keeper("s-dead", timeout_s=0.1)
        dead.exchange("my editor is Helix", "Noted.")
        await asyncio.wait_for(thinking.wait(), timeout=30)
        deadline = asyncio.get_running_loop().time() + 10
        while await _backlog(db) != [("acme", "my editor is Helix", 0, "s-dead")]:
            assert asyncio.get_running_loop().time() < deadline, await _backlog(db)
            await asyncio.sleep(0.05)

        early = keeper("s-early", timeout_s=5)  # while the claim holds: not taken
        await early.settled()
        assert await early.close() == 0
        assert len(server.requests) == 1

        await db.pool.execute("UPDATE memory_backlog SET claimed_at = now() - interval '11 min'")
        later = keeper("s-next", timeout_s=5)
        await later.settled()
        assert await later.close() == 0
        assert "User: my editor is Helix" in server.requests[-1].text
        assert [(f.key, f.text) for f in await memory.facts("acme", "u-1")] == [
            ("editor", "The user edits in Helix.")]
        assert await _backlog(db) == []

        assert await dead.close() == 0  # here only to end the test's tasks
        await provider.aclose()
    assert await _backlog(db) == []
    assert [f.key for f in await memory.facts("acme", "u-1")] == ["editor"]
    assert await db.pool.fetchval("SELECT session_id FROM memory_facts") == "s-dead"


async def test_a_lost_rooms_claims_are_handed_back_and_no_others(db: Database) -> None:
    """When a room's agent is lost (the fleet's re-dispatch claim), what its sessions that
    never ended had claimed is free at once; an ended session's, another room's and a row of
    another tenant under the same session id are not touched."""
    store = Store(db.pool)
    for session_id, room in (("s-lost", "r1"), ("s-ended", "r1"), ("s-r2", "r2")):
        await store.start_session(session_id, tenant="acme", user_id="u-1", room=room,
                                  source="live", provider="gemini", model="m")
    await store.end_session("s-ended", 0.0, {})
    memory = UserMemory(db.pool, WordLlamaEmbedder())
    await memory.apply([
        {"op": "backlog_add", **_deferred(tenant, "u-1", session_id, seq, text), "claimed": True}
        for tenant, session_id, seq, text in (("acme", "s-lost", 0, "lost"),
                                              ("acme", "s-ended", 0, "ended"),
                                              ("acme", "s-r2", 0, "other room"),
                                              ("beta", "s-lost", 1, "other tenant"))])
    async with db.pool.acquire() as conn:
        assert await release_lost(conn, "r1") == 1
    assert await _backlog(db) == [("acme", "lost", 0, None), ("acme", "ended", 0, "s-ended"),
                                  ("acme", "other room", 0, "s-r2"),
                                  ("beta", "other tenant", 0, "s-lost")]


async def test_recall_gives_summary_related_facts_and_older_matching_messages(
    db: Database,
) -> None:
    embedder = CountingEmbedder()
    memory = UserMemory(db.pool, embedder)
    store = Store(db.pool)
    for tenant, user in (("acme", "u-1"), ("acme", "u-2"), ("globex", "u-1")):
        session_id = f"s-{tenant}-{user}"
        await _session(db, session_id, tenant, user)
        await store_messages(store, embedder, session_id, tenant, [
            {"user_id": user, "role": "user",
             "content": f"How do I rotate the vpn token? ({tenant}/{user}) {n}"}
            for n in range(2)] + [
            {"user_id": user, "role": "assistant",
             "content": f"Printers live on floor 3. ({tenant}/{user})"}])
        await memory.apply([
            {"op": "fact", "tenant": tenant, "user_id": user, "key": "vpn",
             "text": f"The user's vpn client is WireGuard ({tenant}/{user})."},
            {"op": "fact", "tenant": tenant, "user_id": user, "key": "lunch",
             "text": f"The user likes noodles ({tenant}/{user})."},
            {"op": "summary", "tenant": tenant, "user_id": user,
             "text": f"Talked about vpn tokens ({tenant}/{user})."},
        ])
    newest = await store.next_message_id()
    question = "my vpn token expired again"
    vector = await embedder.embed_query(question)
    got = await memory.recall("acme", "u-1", question, vector, before_id=newest, facts=1)
    assert got.summary == "Talked about vpn tokens (acme/u-1)."
    assert [f.key for f in got.facts] == ["vpn"]  # the nearest fact first
    assert len(got.turns) == 2
    assert all("vpn" in h.text and "(acme/u-1)" in h.text for h in got.turns)
    assert all(h.source == "user" and h.at is not None for h in got.turns)
    # messages already in the conversation (ids from before_id on) are not recalled again
    first_id = min(h.id for h in got.turns)
    assert (await memory.recall("acme", "u-1", question, vector, before_id=first_id)).turns == []

    recall = TurnRecall(KnowledgeBase(db.pool, embedder), memory, tenant="acme",
                        user_id="nobody", before_id=newest)
    embedder.queries.clear()
    nothing = await recall(question)
    assert not nothing.memory and nothing.knowledge == []
    assert embedder.queries == [], "nothing to recall: the question is not embedded"
    recall = TurnRecall(KnowledgeBase(db.pool, embedder), memory, tenant="acme",
                        user_id="u-1", before_id=newest)
    assert (await recall(question)).memory.summary is not None and len(embedder.queries) == 1


async def test_a_part_found_to_hold_something_is_not_probed_again(db: Database) -> None:
    """The probes that spare an empty part its search are asked until the part has
    something: a memory the keeper writes mid-session is found on the next turn, and from then
    on the turn goes straight to its searches."""
    embedder = CountingEmbedder()
    memory = UserMemory(db.pool, embedder)
    probes: list[str] = []
    probe = memory.has_any

    async def counted(tenant: str, user_id: str, before_id: int) -> bool:
        probes.append(user_id)
        return await probe(tenant, user_id, before_id)

    memory.has_any = counted  # type: ignore[method-assign]
    recall = TurnRecall(KnowledgeBase(db.pool, embedder), memory, tenant="acme",
                        user_id="u-probe", before_id=await Store(db.pool).next_message_id())
    assert not (await recall("where is the printer")).memory
    assert not (await recall("where is the printer")).memory
    assert len(probes) == 2  # nothing yet: asked each turn
    await memory.apply([{"op": "fact", "tenant": "acme", "user_id": "u-probe", "key": "printer",
                         "text": "The user's printer is on floor 3."}])
    assert [f.key for f in (await recall("where is the printer")).memory.facts] == ["printer"]
    assert [f.key for f in (await recall("where is the printer")).memory.facts] == ["printer"]
    assert len(probes) == 3  # found on the third turn, not asked on the fourth


# one user's earlier messages, each a property of BM25 that ts_rank_cd lacks
BM25_MESSAGES = {
    "short": "The modem lights blink.",  # stored before "long": ts_rank_cd ties, newest first
    "rare": "Can the zyxel box do that?",
    "common": "The printer printer printer is jammed, the printer again.",
    "long": "The modem lights blink. " + " ".join(f"filler{n} words" for n in range(30)),
    **{f"printer{n}": f"Printer note {n}: the printer on floor {n}." for n in range(6)},
}


async def _keyword_scores(db: Database, tenant: str, user: str, question: str,
                          ) -> dict[str, float]:
    async with db.pool.acquire() as conn:
        rows = await UserMemory._keyword_rows(conn, tenant, user, question, 10**9)
    return {r["content"]: r["score"] for r in rows}


async def test_recall_ranks_earlier_messages_by_bm25_over_the_users_own_messages(
    db: Database,
) -> None:
    """A rare word outranks a common one repeated (idf), a short message one with the same
    match and more words (length), and the scores are BM25's over this user's messages:
    another user's or tenant's messages full of the same words change none of them."""
    embedder = WordLlamaEmbedder()
    store, memory = Store(db.pool), UserMemory(db.pool, embedder)
    await _session(db, "s-1", "acme", "u-1")
    await store_messages(store, embedder, "s-1", "acme", [
        {"user_id": "u-1", "role": "user", "content": text} for text in BM25_MESSAGES.values()])
    question = "zyxel printer modem blink"
    vector = await embedder.embed_query(question)
    got = await memory.recall("acme", "u-1", question, vector,
                              before_id=await store.next_message_id(), turns=20)
    rank = {next(k for k, v in BM25_MESSAGES.items() if v == h.text): h.keyword_rank
            for h in got.turns}
    assert rank["rare"] < rank["common"] and rank["short"] < rank["long"]
    # the same messages ordered by ts_rank_cd, which this test must tell apart
    by_rank_cd = [r["content"] for r in await db.pool.fetch(
        "SELECT content FROM messages, to_tsquery('english', 'zyxel | printer | modem | blink')"
        " q WHERE tsv @@ q ORDER BY ts_rank_cd(tsv, q) DESC, id DESC")]
    assert by_rank_cd.index(BM25_MESSAGES["common"]) < by_rank_cd.index(BM25_MESSAGES["rare"])
    assert by_rank_cd.index(BM25_MESSAGES["long"]) < by_rank_cd.index(BM25_MESSAGES["short"])

    scores = await _keyword_scores(db, "acme", "u-1", question)
    docs = {text: await lexemes(db.pool, text) for text in BM25_MESSAGES.values()}
    query = await lexemes(db.pool, question)
    expected = {text: bm25_score(query, doc, list(docs.values())) for text, doc in docs.items()}
    assert scores == pytest.approx({k: v for k, v in expected.items() if v > 0}, rel=1e-9)

    for tenant, user in (("acme", "u-2"), ("globex", "u-1")):
        await _session(db, f"s-{tenant}-{user}", tenant, user)
        await store_messages(store, embedder, f"s-{tenant}-{user}", tenant, [
            {"user_id": user, "role": "user", "content": "zyxel zyxel modem blink"}] * 20)
    assert await _keyword_scores(db, "acme", "u-1", question) == scores
    assert set(await _keyword_scores(db, "acme", "u-2", question)) == {
        "zyxel zyxel modem blink"}

    # a dotted name is one lexeme to Postgres: its parts match too, as they did before BM25
    await _session(db, "s-3", "acme", "u-3")
    await store_messages(store, embedder, "s-3", "acme", [
        {"user_id": "u-3", "role": "user", "content": text}
        for text in ("What is message.Message for?", "The Message class holds the headers.")])
    dotted = await _keyword_scores(db, "acme", "u-3", "and message.Message again?")
    assert list(dotted) == ["What is message.Message for?", "The Message class holds the headers."]


async def test_message_statistics_stay_exact_through_inserts_and_deletes(db: Database) -> None:
    """Batches from the writer, a user forgotten, a session deleted (its messages go by
    cascade): the statistics always equal a recount; the words are never rewritten in place."""
    store = Store(db.pool)
    for session_id, tenant, user in (("s-1", "acme", "u-1"), ("s-2", "acme", "u-1"),
                                     ("s-3", "acme", "u-2"), ("s-4", "globex", "u-1")):
        await _session(db, session_id, tenant, user)
        await store_messages(store, None, session_id, tenant, [
            {"user_id": user, "role": "user", "content": f"The {session_id} router {n} resets"}
            for n in range(3)] + [
            {"user_id": user, "role": "assistant", "content": "Hold the reset pin."}])
    await assert_bm25_statistics_exact(db.pool, "messages_bm25", "messages", "tenant, user_id")
    assert await db.pool.fetchval(
        "SELECT docs FROM messages_bm25_terms WHERE tenant = 'acme' AND user_id = 'u-1'"
        " AND lexeme = 'router'") == 6
    await store.forget_user("acme", "u-2")
    await db.pool.execute("DELETE FROM sessions WHERE id = 's-1'")
    await assert_bm25_statistics_exact(db.pool, "messages_bm25", "messages", "tenant, user_id")
    assert await db.pool.fetchval("SELECT docs FROM messages_bm25_stats WHERE tenant = 'acme'"
                                  " AND user_id = 'u-1'") == 4
    with pytest.raises(asyncpg.RaiseError, match=re.escape("not updated in place")):
        await db.pool.execute("UPDATE messages SET content = 'modem'")
    with pytest.raises(asyncpg.RaiseError, match=re.escape("not updated in place")):
        await db.pool.execute("UPDATE messages SET user_id = 'u-9'")
    await db.pool.execute("UPDATE messages SET embed_model = 'other'")  # the rest may change
    await assert_bm25_statistics_exact(db.pool, "messages_bm25", "messages", "tenant, user_id")


async def test_closed_sessions_spills_are_imported_once_and_live_ones_left(
    settings: Settings, db: Database,
) -> None:
    costs = settings.costs_dir
    costs.mkdir(parents=True, exist_ok=True)
    embedder = WordLlamaEmbedder()
    store, memory = Store(db.pool), UserMemory(db.pool, embedder)
    screen = ScreenTimeline(db.pool, embedder)
    targets = SpillTargets(store, memory, screen, embedder)
    for session_id in ("s-closed", "s-live", "s-locked"):
        await _session(db, session_id, "acme", "u-1")
        (costs / f"{session_id}.messages-spill.jsonl").write_text("".join(
            json.dumps({"tenant": "acme", "user_id": "u-1", "role": "user",
                        "content": f"{session_id} {n}"}) + "\n" for n in range(3)
        ) + '{"tenant": "acme", "cut off by a cra')
    (costs / "s-closed.memory-spill.jsonl").write_text(json.dumps(
        {"op": "fact", "tenant": "acme", "user_id": "u-1", "session_id": "s-closed",
         "key": "shell", "text": "The user uses zsh."}) + "\n")
    (costs / "s-closed.screen-spill.jsonl").write_text(json.dumps(event_row(
        session_id="s-closed", tenant="acme", user_id="u-1", t=12.0, wall_time=1.7e9,
        content_type="code", reason="local_change", region=(0, 0, 640, 40),
        lines=["KeyError: 'port'"], is_error=True)) + "\n")
    (costs / "s-closed.db-spill.jsonl").write_text(json.dumps(
        {"session_id": "s-closed", "tenant": "acme", "seq": 1, "ts": 1.7e9, "kind": "turn",
         "cost_usd": 0.0, "detail": {}}) + "\n")
    for session_id in ("s-closed", "s-locked"):  # closed: the cost log ends with the summary
        (costs / f"{session_id}.jsonl").write_text(json.dumps({"kind": "summary"}) + "\n")

    with (costs / "s-locked.messages-spill.jsonl").open() as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process is importing it
        report = await recover_spills(costs, targets)
    assert report.files == 4 and report.rows == 6 and report.unreadable_lines == 1
    assert sorted(report.left) == [
        "s-live.messages-spill.jsonl: its session is still open (or ended without closing)",
        "s-locked.messages-spill.jsonl: another process is importing it"]
    assert not list(costs.glob("s-closed.*-spill.jsonl"))
    contents = [r["content"] for r in await db.pool.fetch(
        "SELECT content FROM messages WHERE session_id = 's-closed' ORDER BY id")]
    assert contents == ["s-closed 0", "s-closed 1", "s-closed 2"]
    assert [f.key for f in await memory.facts("acme", "u-1")] == ["shell"]
    assert await db.pool.fetchval("SELECT count(*) FROM cost_events") == 1
    [event] = await screen.session_events("acme", "s-closed")
    assert event.text == "KeyError: 'port'" and event.is_error and event.t == 12.0
    again = await recover_spills(costs, targets)
    assert again.rows == 3 and await db.pool.fetchval(  # the unlocked one now; s-closed gone
        "SELECT count(*) FROM messages WHERE session_id = 's-closed'") == 3


class _Log(list[str]):
    """Statements in the order they ran; `grew` is set on each."""

    def __init__(self) -> None:
        super().__init__()
        self.grew = asyncio.Event()

    def append(self, sql: str) -> None:
        super().append(sql)
        self.grew.set()


class _WatchedConnection:
    """A pooled connection that logs each statement it runs, then runs it."""

    def __init__(self, conn: Any, log: _Log) -> None:
        self._conn, self._log = conn, log

    async def fetch(self, sql: str, *args: Any) -> Any:
        self._log.append(sql)
        return await self._conn.fetch(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self._log.append(sql)
        return await self._conn.fetchval(sql, *args)


class _WatchedPool:
    """The pool, logging the statements run on it and counting the connections held at once."""

    def __init__(self, pool: Any, log: _Log) -> None:
        self._pool, self._log = pool, log
        self.held = self.most_held = 0

    async def execute(self, sql: str, *args: Any) -> Any:
        return await self._pool.execute(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self._log.append(sql)
        return await self._pool.fetchval(sql, *args)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[_WatchedConnection]:
        async with self._pool.acquire() as conn:
            self.held += 1
            self.most_held = max(self.most_held, self.held)
            try:
                yield _WatchedConnection(conn, self._log)
            finally:
                self.held -= 1


async def test_a_failing_part_costs_the_turn_that_part_alone(db: Database) -> None:
    """The tenant's knowledge stored with another embedder (models switched before a
    re-ingest) fails the knowledge part every turn: the turn still gets the user's memory, and
    says which part failed. A question holding a NUL, or a pasted log of megabytes, is searched
    by what it says rather than failing every search."""
    embedder, older = CountingEmbedder(), CountingEmbedder(128)
    await KnowledgeBase(db.pool, older).ingest_chunks("t-parts", "handbook", [
        ("vpn", "Rotate the vpn token from the account page every ninety days.")])
    store = Store(db.pool)
    await _session(db, "s-parts", "t-parts", "u-parts")
    await store_messages(store, embedder, "s-parts", "t-parts", [
        {"user_id": "u-parts", "role": "user", "content": "How do I rotate the vpn token?"}])
    recall = TurnRecall(KnowledgeBase(db.pool, embedder), UserMemory(db.pool, embedder),
                        tenant="t-parts", user_id="u-parts",
                        before_id=await store.next_message_id())
    pasted = " ".join(f"w{n}" for n in range(300_000))  # a tsvector of over 1 MB
    for question in ("my vpn token expired", "my vpn\x00 token expired",
                     f"my vpn token expired {pasted}"):
        recalled = await recall(question)
        assert recalled.failed == ("knowledge",)
        assert recalled.knowledge == []
        assert [turn.text for turn in recalled.memory.turns] == ["How do I rotate the vpn token?"]
    hits = await KnowledgeBase(db.pool, older).search("t-parts", "vpn\x00 token")
    assert [hit.key for hit in hits] == ["vpn"]


async def _vpn_handbook_and_user(db: Database, embedder: CountingEmbedder, user: str,
                                 *more: str) -> Store:
    """Tenant acme's handbook (a vpn chunk, a printer chunk) and `user`'s earlier session, in
    which they asked how to rotate the vpn token (and `more`)."""
    await KnowledgeBase(db.pool, embedder).ingest_chunks("acme", "handbook", [
        ("vpn", "Rotate the vpn token from the account page every ninety days."),
        ("printer", "Printers live on floor 3.")])
    store = Store(db.pool)
    await _session(db, f"s-{user}", "acme", user)
    await store_messages(store, embedder, f"s-{user}", "acme", [
        {"user_id": user, "role": "user", "content": text}
        for text in ["How do I rotate the vpn token?", *more]])
    return store


async def test_keyword_searches_run_while_the_question_is_embedded(settings: Settings) -> None:
    """The turn's knowledge BM25 search and memory's keyword search need no vector: they run
    while the question is embedded (this embedder finishes only once they have run), the
    vector searches after it (memory's facts, messages and summary in one statement), on no
    more than the session's two connections."""
    db = await Database.open(settings.database_url, settings.data_dir, connections=2)
    log = _Log()
    try:
        embedder = CountingEmbedder()
        store = await _vpn_handbook_and_user(db, embedder, "u-1")
        await UserMemory(db.pool, embedder).apply([
            {"op": "summary", "tenant": "acme", "user_id": "u-1", "text": "Asked about vpn."}])
        pool = _WatchedPool(db.pool, log)

        class AfterKeywords(CountingEmbedder):
            async def embed_query(self, text: str) -> np.ndarray:
                async def keywords_ran() -> None:
                    while not all(any(f"FROM {postings} p" in sql for sql in log)
                                  for postings in ("kb_bm25_postings",
                                                   "messages_bm25_postings")):
                        log.grew.clear()
                        await log.grew.wait()
                await asyncio.wait_for(keywords_ran(), 10)
                log.append("embedded")
                return await super().embed_query(text)

        slow = AfterKeywords()
        recall = TurnRecall(KnowledgeBase(pool, slow), UserMemory(pool, slow),  # type: ignore[arg-type]
                            tenant="acme", user_id="u-1",
                            before_id=await store.next_message_id())
        recalled = await recall("my vpn token expired")
        assert [hit.key for hit in recalled.knowledge][:1] == ["vpn"]
        assert recalled.memory.summary == "Asked about vpn." and len(recalled.memory.turns) == 1
        embedded = log.index("embedded")
        vector_searches = [i for i, sql in enumerate(log) if "<=>" in sql]
        assert len(vector_searches) == 2  # chunks; facts, messages and summary in one statement
        assert min(vector_searches) > embedded
        summary_reads = [sql for sql in log if "memory_summaries" in sql and "EXISTS" not in sql]
        assert len(summary_reads) == 1 and "<=>" in summary_reads[0]  # with the vector's
        assert pool.most_held == 2
    finally:
        await db.close()


async def test_a_part_known_to_hold_something_is_searched_beside_a_slow_probe(
    db: Database,
) -> None:
    """A tenant without knowledge has it probed every turn; the user's memory is searched
    beside that probe, not after it (this probe answers only once memory has been searched)."""
    embedder = CountingEmbedder()
    store = Store(db.pool)
    await _session(db, "s-u-2", "initech", "u-2")
    await store_messages(store, embedder, "s-u-2", "initech", [
        {"user_id": "u-2", "role": "user", "content": "How do I rotate the vpn token?"}])
    memory_searched = asyncio.Event()

    class SlowProbe(KnowledgeBase):
        async def has_any(self, tenant: str) -> bool:
            await asyncio.wait_for(memory_searched.wait(), 10)
            return await super().has_any(tenant)

    class Searched(UserMemory):
        async def recall(self, *args: Any, **kwargs: Any) -> Recollection:
            found = await super().recall(*args, **kwargs)
            memory_searched.set()
            return found

    recall = TurnRecall(SlowProbe(db.pool, embedder), Searched(db.pool, embedder),
                        tenant="initech", user_id="u-2", before_id=await store.next_message_id())
    recalled = await recall("my vpn token expired")
    assert recalled.knowledge == [] and recalled.vector == "used"
    assert [hit.text for hit in recalled.memory.turns] == ["How do I rotate the vpn token?"]


@pytest.mark.parametrize("trouble", ["late", "failed"])
async def test_a_late_or_failed_embedding_still_recalls_by_keywords(
    db: Database, trouble: str,
) -> None:
    """The question's vector came too late (a provider slow under load) or not at all: the
    turn still gets what the keywords found (knowledge, earlier messages, the newest facts),
    and says how the vector fared, instead of answering with nothing recalled."""
    embedder = CountingEmbedder()
    store = await _vpn_handbook_and_user(db, embedder, "u-late", "Where is the printer?")
    memory = UserMemory(db.pool, embedder)
    await memory.apply([{"op": "fact", "tenant": "acme", "user_id": "u-late", "key": "team",
                         "text": "Works on the payments team."}])

    class Troubled(CountingEmbedder):
        async def embed_query(self, text: str) -> np.ndarray:
            if trouble == "failed":
                raise EmbeddingError("the embedding provider answered 503")
            await asyncio.sleep(5)
            return await super().embed_query(text)

    troubled = Troubled()
    recall = TurnRecall(KnowledgeBase(db.pool, troubled), UserMemory(db.pool, troubled),
                        tenant="acme", user_id="u-late", before_id=await store.next_message_id(),
                        vector_wait_s=0.05)
    recalled = await asyncio.wait_for(recall("my vpn token expired"), 2)
    assert recalled.vector == trouble
    assert [hit.key for hit in recalled.knowledge] == ["vpn"]
    assert [turn.text for turn in recalled.memory.turns] == ["How do I rotate the vpn token?"]
    assert [fact.key for fact in recalled.memory.facts] == ["team"]

    fine = TurnRecall(KnowledgeBase(db.pool, embedder), memory, tenant="acme", user_id="u-late",
                      before_id=await store.next_message_id())
    assert (await fine("my vpn token expired")).vector == "used"
