"""Text with a NUL character (Postgres's text type cannot hold one) or a lone surrogate (half a
UTF-16 pair: UTF-8, what asyncpg sends, has no form for one) is stored without it, never failing
the insert: a chat message, a screen read, a knowledge chunk.

Protects: one NUL in a user's message or on screen used to fail its whole batch (the writer
would spill and retry it for ever); a corpus line with one failed `bench.context` and `kb eval`.
A lone surrogate (a JSON escape such as "\\ud83d" cut from its pair, in a model's reply or a
transcript) was dropped by the memory keeper alone: the conversation log, the screen timeline
and the knowledge base refused the whole row. A whole pair held as two code points is its one
character, not dropped with them.
"""

from __future__ import annotations

import json
import time

from memory.db import Database
from memory.embeddings import WordLlamaEmbedder
from memory.knowledge import KnowledgeBase
from memory.screen_timeline import ScreenTimeline, event_row
from memory.store import Store


async def test_nul_characters_are_dropped_on_the_way_in(db: Database) -> None:
    store = Store(db.pool)
    await store.start_session("s1", tenant="acme", user_id="ana", room=None, source="replay",
                              provider="gemini", model="m")
    await store.add_messages("s1", "acme", [
        {"user_id": "ana", "role": "user", "content": "paste: a\x00b"},
        {"user_id": "ana", "role": "assistant", "content": "fine"}])
    assert [r["content"] for r in await db.pool.fetch(
        "SELECT content FROM messages ORDER BY id")] == ["paste: ab", "fine"]
    await ScreenTimeline(db.pool, WordLlamaEmbedder()).write([event_row(
        session_id="s1", tenant="acme", user_id="ana", t=1.0, wall_time=time.time(),
        content_type="terminal", reason="changed", region=(0, 0, 10, 10),
        lines=["Error\x00: boom"], is_error=True)])
    assert await db.pool.fetchval("SELECT text FROM screen_events") == "Error: boom"
    await KnowledgeBase(db.pool, WordLlamaEmbedder()).ingest_chunks(
        "acme", "corpus", [("c1", "zero\x00width")])
    assert await db.pool.fetchval("SELECT text FROM kb_chunks") == "zerowidth"


async def test_lone_surrogates_are_dropped_on_the_way_in(db: Database) -> None:
    half = json.loads('"\\ud83d"')  # an emoji's escape cut in half, as JSON can spell it
    store = Store(db.pool)
    await store.start_session("s1", tenant="acme", user_id="ana", room=None, source="replay",
                              provider="gemini", model="m")
    await store.add_messages("s1", "acme", [
        {"user_id": "ana", "role": "user", "content": f"thanks {half}!"},
        {"user_id": "ana", "role": "assistant", "content": f"\U0001f600 {half}"},
        # a whole pair, each half escaped apart as a UTF-16 producer may: kept as its emoji
        {"user_id": "ana", "role": "user", "content": "\ud83d\ude00 ok \udc00"}])
    assert [r["content"] for r in await db.pool.fetch(
        "SELECT content FROM messages ORDER BY id")] == ["thanks !", "\U0001f600 ",
                                                        "\U0001f600 ok "]
    await ScreenTimeline(db.pool, WordLlamaEmbedder()).write([event_row(
        session_id="s1", tenant="acme", user_id="ana", t=1.0, wall_time=time.time(),
        content_type="terminal", reason="changed", region=(0, 0, 10, 10),
        lines=[f"Error{half}: boom"], is_error=True)])
    assert await db.pool.fetchval("SELECT text FROM screen_events") == "Error: boom"
    await KnowledgeBase(db.pool, WordLlamaEmbedder()).ingest_chunks(
        "acme", "corpus", [("c1", f"broken{half}glyph")])
    assert await db.pool.fetchval("SELECT text FROM kb_chunks") == "brokenglyph"
