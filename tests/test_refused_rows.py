"""A row Postgres refuses for what it holds costs only itself, on real Postgres.

Protects: a message past what Postgres can index (a tsvector over 1 MB: a pasted log of
~800 KB of distinct words) used to fail its whole batch, which the background writer then
retried for the rest of the session, holding every later message behind it, spilled at the
close, and the spill import failed on at every later session, for ever. Now the batch is
written row by row, the refused row is set aside in a file beside the spill file with why, in
one log line, and the others land in order; the same in the spill import. And a long message is
remembered cut, so it cannot get there from a conversation, and the memory model is asked about
the first part of a long exchange only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from agent.config import Settings
from memory.conversation import MAX_MESSAGE_CHARS, ConversationLog, store_messages
from memory.db import Database
from memory.embeddings import WordLlamaEmbedder
from memory.keeper import MAX_EXCHANGE_CHARS, memory_prompt
from memory.screen_timeline import ScreenTimeline
from memory.spill_recovery import SpillTargets, recover_spills
from memory.store import Store
from memory.user_memory import UserMemory
from memory.writer import BackgroundWriter

# ~1.2 MB of tsvector: past Postgres's limit of 1,048,575 bytes (SQLSTATE 54000)
UNINDEXABLE = " ".join(f"w{i}x" for i in range(100_000))


def message(content: str) -> dict[str, str]:
    return {"tenant": "acme", "user_id": "ana", "role": "user", "content": content}


async def contents(db: Database, session_id: str) -> list[str]:
    return [r["content"] for r in await db.pool.fetch(
        "SELECT content FROM messages WHERE session_id = $1 ORDER BY id", session_id)]


async def test_a_refused_row_is_set_aside_and_the_rest_written(
    settings: Settings, db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    store, embedder = Store(db.pool), WordLlamaEmbedder()
    await store.start_session("s1", tenant="acme", user_id="ana", room=None, source="replay",
                              provider="gemini", model="m")

    async def write(rows: list[dict[str, str]]) -> None:
        await store_messages(store, None, "s1", "acme", rows)  # no vectors: 3 s a try saved

    spill = tmp_path / "s1.messages-spill.jsonl"
    writer = BackgroundWriter("messages", write, spill, max_backoff_s=0.05, linger_s=0.05)
    with caplog.at_level(logging.INFO, logger="sightline"):
        for content in ("before", UNINDEXABLE, "after"):
            writer.put(message(content))
        assert await writer.close() == 0
    assert await contents(db, "s1") == ["before", "after"]
    assert writer.refused == 1 and writer.written == 2 and not spill.exists()
    [refused] = [json.loads(line) for line in
                 (tmp_path / "s1.messages-refused.jsonl").read_text().splitlines()]
    assert refused["content"] == UNINDEXABLE
    assert refused["refused"].startswith(
        "ProgramLimitExceededError: string is too long for tsvector")
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said == [f"messages: the database refused 1 rows ({refused['refused']}): kept in "
                    f"{tmp_path / 's1.messages-refused.jsonl'}; the others are written"]
    assert not any(r.exc_info for r in caplog.records)

    # a closed session's spill file with a row the database refuses (edited by hand: a role
    # the messages table does not allow): the import sets it aside too
    costs = settings.costs_dir
    costs.mkdir(parents=True, exist_ok=True)
    await store.start_session("s2", tenant="acme", user_id="ana", room=None, source="replay",
                              provider="gemini", model="m")
    (costs / "s2.messages-spill.jsonl").write_text("".join(
        json.dumps(row) + "\n"
        for row in (message("one"), {**message("odd"), "role": "narrator"}, message("two"))))
    (costs / "s2.jsonl").write_text(json.dumps({"kind": "summary"}) + "\n")
    targets = SpillTargets(store, UserMemory(db.pool, embedder),
                           ScreenTimeline(db.pool, embedder), embedder)
    report = await recover_spills(costs, targets)
    assert (report.files, report.rows, report.refused, report.left) == (1, 3, 1, [])
    assert await contents(db, "s2") == ["one", "two"]
    assert not (costs / "s2.messages-spill.jsonl").exists()
    [odd] = [json.loads(line) for line in
             (costs / "s2.messages-refused.jsonl").read_text().splitlines()]
    assert odd["content"] == "odd" and odd["refused"].startswith("CheckViolationError")
    assert (await recover_spills(costs, targets)).files == 0  # never imported again


async def test_a_damaged_spill_file_is_imported_for_what_it_holds(
    settings: Settings, db: Database, caplog: pytest.LogCaptureFixture,
) -> None:
    """A closed session's spill file edited or damaged by hand (bytes that are not UTF-8, a
    line that is JSON but not a row) and a folder by a spill file's name: `memory show` and
    `memory forget` import spills first, and one such file failed them with a traceback. The
    rows it holds are imported, the rest counted, the folder named, each in one line."""
    store, embedder = Store(db.pool), WordLlamaEmbedder()
    costs = settings.costs_dir
    costs.mkdir(parents=True, exist_ok=True)
    for session_id in ("s3", "s4"):
        await store.start_session(session_id, tenant="acme", user_id="ana", room=None,
                                  source="replay", provider="gemini", model="m")
        (costs / f"{session_id}.jsonl").write_text(json.dumps({"kind": "summary"}) + "\n")
    (costs / "s3.messages-spill.jsonl").write_bytes(
        json.dumps(message("one")).encode() + b"\n" + b'{"content": "caf\xe9"}\n'
        + b"[1, 2]\n" + json.dumps(message("two")).encode() + b"\n")
    (costs / "s4.messages-spill.jsonl").mkdir()
    targets = SpillTargets(store, UserMemory(db.pool, embedder),
                           ScreenTimeline(db.pool, embedder), embedder)
    with caplog.at_level(logging.ERROR, logger="sightline"):
        report = await recover_spills(costs, targets)
    assert (report.files, report.rows, report.unreadable_lines) == (1, 2, 2)
    assert report.left == ["s4.messages-spill.jsonl: Is a directory"]
    assert await contents(db, "s3") == ["one", "two"]
    assert not (costs / "s3.messages-spill.jsonl").exists()
    assert not any(r.exc_info for r in caplog.records) and len(caplog.records) == 2


async def test_a_long_message_is_remembered_cut_and_its_memory_call_is_short(
    db: Database, tmp_path: Path,
) -> None:
    store = Store(db.pool)
    await store.start_session("s1", tenant="acme", user_id="ana", room=None, source="replay",
                              provider="gemini", model="m")
    log = ConversationLog(store, "s1", "acme", tmp_path, WordLlamaEmbedder())
    log.add("ana", "user", UNINDEXABLE)
    log.add("ana", "assistant", "That is a long log.")
    assert await log.close() == 0
    long, answer = await contents(db, "s1")
    assert long.startswith(UNINDEXABLE[:MAX_MESSAGE_CHARS])
    assert long.endswith(f" [… {len(UNINDEXABLE) - MAX_MESSAGE_CHARS:,} more characters not "
                         "kept]")
    assert answer == "That is a long log."

    prompt = memory_prompt({}, None, UNINDEXABLE, "short answer").items[-1].text_content or ""
    assert UNINDEXABLE[:MAX_EXCHANGE_CHARS] in prompt
    assert UNINDEXABLE[:MAX_EXCHANGE_CHARS + 10] not in prompt
    assert "Assistant: short answer" in prompt
    assert len(prompt) < 2 * MAX_EXCHANGE_CHARS
