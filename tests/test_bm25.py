"""Keyword ranking by BM25 inside Postgres, per tenant, on real Postgres (migrations 0012-0014).

Protects: the per-tenant statistics (chunk count, total length, lexeme document frequencies)
and the postings (each chunk's lexemes with their occurrences and the chunk's length) stay
exactly what the chunks say through ingest (a large one in several statements), re-ingest,
document deletion (a cascade) and in another tenant; the score is BM25's (checked against the
formula computed here from the chunks' own words) with its three properties: a rare word
outweighs a common one (idf), more occurrences help but saturate (k1), and a shorter chunk
beats a longer one with the same match (b); another tenant's chunks change nothing in a
tenant's scores; a chunk's text is never rewritten in place (that would bypass the statistics).
"""

from __future__ import annotations

import re

import asyncpg
import pytest
from conftest import assert_bm25_statistics_exact, bm25_score, lexemes

from memory import bm25, knowledge
from memory.db import Database
from memory.embeddings import WordLlamaEmbedder
from memory.knowledge import KnowledgeBase


async def stats_match_the_chunks(db: Database) -> None:
    await assert_bm25_statistics_exact(db.pool, "kb_bm25", "kb_chunks", "tenant")


async def test_statistics_stay_exact_through_ingest_and_deletion(
    db: Database, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(knowledge, "INSERT_BATCH", 2)  # a document's chunks in several inserts
    kb = KnowledgeBase(db.pool, WordLlamaEmbedder())
    await kb.ingest_chunks("acme", "a", [("a1", "The router resets when held."),
                                         ("a2", "Router firmware updates from the System page.")])
    await kb.ingest_chunks("globex", "g", [("g1", "Sourdough starter feeding schedule.")])
    await stats_match_the_chunks(db)
    assert await db.pool.fetchval(
        "SELECT docs FROM kb_bm25_terms WHERE tenant = 'acme' AND lexeme = 'router'") == 2
    # re-ingest: one chunk kept, one replaced, two added (the new three in two inserts)
    await kb.ingest_chunks("acme", "a", [("a1", "The router resets when held."),
                                         ("a3", "The VPN listens on port 51821."),
                                         ("a4", "Router admin password on the label."),
                                         ("a5", "Factory reset erases the router's settings.")])
    await stats_match_the_chunks(db)
    assert [tuple(r) for r in await db.pool.fetch(
        "SELECT chunk_key, position FROM kb_chunks WHERE tenant = 'acme' ORDER BY position")
    ] == [("a1", 0), ("a3", 1), ("a4", 2), ("a5", 3)]
    await knowledge.delete_documents(db.pool, "acme", ["a"])  # chunks go by cascade
    await stats_match_the_chunks(db)
    assert await db.pool.fetchval(
        "SELECT docs FROM kb_bm25_stats WHERE tenant = 'acme'") == 0
    assert await db.pool.fetchval(
        "SELECT docs FROM kb_bm25_stats WHERE tenant = 'globex'") == 1


CHUNKS = {
    "rare": "Hold the reset pin of the zyxel router.",
    "common": "The router router router sits by the window of the office near the router.",
    "long": "The zyxel unit is here. " + " ".join(f"filler{n} words" for n in range(40)),
    "twice": "zyxel zyxel router guide",
    "once": "zyxel router guide and more",
    "plain": "A router in a rack, another router on a shelf, a router on the desk.",
}


async def test_the_score_is_bm25_with_idf_saturation_and_length(db: Database) -> None:
    kb = KnowledgeBase(db.pool, WordLlamaEmbedder())
    await kb.ingest_chunks("acme", "docs", list(CHUNKS.items()))
    # another tenant full of the query's words: acme's statistics and scores must not move
    await kb.ingest_chunks("globex", "other", [(f"g{n}", "zyxel zyxel router reset")
                                               for n in range(30)])
    question = "reset my zyxel router"
    _, ranked = await kb.rankings("acme", question, 10)
    docs = {key: await lexemes(db.pool, text) for key, text in CHUNKS.items()}
    query = await lexemes(db.pool, question)
    expected = {key: bm25_score(query, doc, list(docs.values())) for key, doc in docs.items()}
    assert {h.key: h.score for h in ranked} == pytest.approx(
        {k: v for k, v in expected.items() if v > 0}, rel=1e-9)
    order = [h.key for h in ranked]
    assert order.index("rare") < order.index("common")  # zyxel + reset beat router x4
    assert order.index("twice") < order.index("once")  # more occurrences help...
    assert expected["twice"] < 2 * expected["once"]  # ...but saturate
    assert order.index("once") < order.index("long")  # same match, shorter chunk


async def test_a_question_of_only_unknown_words_matches_nothing(db: Database) -> None:
    kb = KnowledgeBase(db.pool, WordLlamaEmbedder())
    await kb.ingest_chunks("acme", "docs", list(CHUNKS.items()))
    assert (await kb.rankings("acme", "quantum entanglement", 5))[1] == []
    assert (await kb.rankings("nobody", "zyxel router", 5))[1] == []


async def test_common_words_are_left_out_while_rarer_ones_remain(
    db: Database, monkeypatch: pytest.MonkeyPatch,
) -> None:
    kb = KnowledgeBase(db.pool, WordLlamaEmbedder())
    await kb.ingest_chunks("acme", "docs", list(CHUNKS.items()))
    monkeypatch.setattr(bm25, "CANDIDATES", 5)  # reset: 1 chunk, zyxel: 4
    terms = await chosen(db, "zyxel router reset")
    assert [lexeme for lexeme, _ in terms] == ["reset", "zyxel"]
    assert terms[0][1] > terms[1][1]  # router is in 5 of 6 chunks
    monkeypatch.setattr(bm25, "CANDIDATES", 0)
    assert [lexeme for lexeme, _ in await chosen(db, "zyxel router")] == ["zyxel"]
    monkeypatch.setattr(bm25, "CANDIDATES", 100)
    monkeypatch.setattr(bm25, "MAX_QUERY_LEXEMES", 2)  # the two rarest
    assert [lexeme for lexeme, _ in await chosen(db, "router zyxel reset")] == ["reset", "zyxel"]
    # and scoring ranks by those alone: a chunk with only "router" does not match
    assert "plain" not in {h.key for h in (await kb.rankings("acme", "router zyxel reset", 10))[1]}


async def chosen(db: Database, question: str) -> list[tuple[str, float]]:
    """The lexemes acme's knowledge search ranks `question` by, rarest first, with their idf."""
    terms = bm25.terms("kb_bm25", "tenant = $1", "$2")
    rows = await db.pool.fetch(f"SELECT lexeme, idf FROM ({terms}) t ORDER BY idf DESC, lexeme",
                               "acme", question)
    return [(r["lexeme"], r["idf"]) for r in rows]


async def test_chunk_text_is_never_rewritten_in_place(db: Database) -> None:
    await KnowledgeBase(db.pool, WordLlamaEmbedder()).ingest_chunks(
        "acme", "docs", [("a", "router")])
    with pytest.raises(asyncpg.RaiseError, match=re.escape("not updated in place")):
        await db.pool.execute("UPDATE kb_chunks SET text = 'modem'")
    await db.pool.execute("UPDATE kb_chunks SET position = 3")  # other columns may change
    await stats_match_the_chunks(db)
