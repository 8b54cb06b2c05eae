"""The knowledge base on real Postgres (pgvector, tsvector) with the offline embedder.

Protects: Markdown, HTML, PDF and text files are read and chunked; re-ingesting a changed
document embeds only the chunks that changed; a document deleted from an ingested folder loses
its chunks; search fuses vector and keyword rankings and never crosses tenants; a change of
embedding model is detected, not mixed; an unreadable file is reported and the rest ingested;
the optional Cohere reranker (real `cohere` SDK, local wire-format fake) reorders the fused
candidates, is billed in the session record per search unit, and its outage keeps the fused order.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
from aiohttp import web
from conftest import CountingEmbedder, answering, cli_env, run_cli
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

from agent.components import make_reranker
from agent.config import ConfigError, Settings
from agent.pricing import PriceTable
from agent.session_record import SessionRecord
from agent.wire_format_server import CapturedRequest, ScriptedModelServer, ScriptedReply
from memory import knowledge
from memory.db import Database
from memory.embeddings import (
    EmbeddingError,
    GeminiEmbedder,
    MPNetEmbedder,
    SharedQueries,
    WordLlamaEmbedder,
)
from memory.knowledge import Hit, KnowledgeBase, KnowledgeError, rrf, weighted

ROUTER = """# Resetting the router

To reset the admin password of the Zyxel router, hold the reset button for ten seconds
until the power light blinks. The default password is printed on the label underneath.

## Firmware

Firmware updates are installed from the System page. Never unplug the router during an update.
"""

BAKING = """<html><body><h1>Sourdough</h1><p>Feed the starter with equal weights of flour and
water. Bake the loaf at 240 degrees for forty minutes with steam.</p></body></html>"""


def write_pdf(path: Path, *pages: str) -> None:
    """A PDF with one page of real text content per text (pypdf only writes what it is given)."""
    writer = PdfWriter()
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"),
                             NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica")})
    for text in pages:
        page = writer.add_blank_page(width=612, height=792)
        page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject(
            {NameObject("/F1"): writer._add_object(font)})})
        stream = DecodedStreamObject()
        stream.set_data(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode())
        page[NameObject("/Contents")] = writer._add_object(stream)
    with path.open("wb") as handle:
        writer.write(handle)


def write_docs(root: Path) -> Path:
    """One document of each format in the folder `root` (made here)."""
    root.mkdir(parents=True)
    (root / "router.md").write_text(ROUTER)
    (root / "baking.html").write_text(BAKING)
    (root / "vpn.txt").write_text("The office VPN uses WireGuard on port 51820. "
                                  "Ask IT for a peer config file.")
    write_pdf(root / "holidays.pdf", "Office closed on 24 and 25 December for the holidays.")
    return root


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    return write_docs(tmp_path / "kb")


async def test_ingest_every_format_and_search_it(db: Database, docs: Path) -> None:
    kb = KnowledgeBase(db.pool, CountingEmbedder())
    report = await kb.ingest([docs], "acme")
    assert report.documents == 4 and report.skipped == []
    assert report.embedded >= 4 and report.kept == 0

    hits = await kb.search("acme", "how do I reset the router admin password", k=3)
    assert hits[0].source.endswith("router.md") and "reset button" in hits[0].text
    assert hits[0].vector_rank is not None and hits[0].keyword_rank is not None
    pdf = await kb.search("acme", "when is the office closed for the holidays", k=1)
    assert pdf[0].source.endswith("holidays.pdf") and "24 and 25 December" in pdf[0].text
    html = await kb.search("acme", "sourdough baking temperature", k=1)
    assert html[0].source.endswith("baking.html") and "<p>" not in html[0].text
    assert await kb.search("globex", "reset the router password") == []


async def test_reingest_embeds_only_changed_chunks_and_drops_deleted_documents(
    db: Database, docs: Path,
) -> None:
    embedder = CountingEmbedder()
    kb = KnowledgeBase(db.pool, embedder)
    first = await kb.ingest([docs], "acme")
    embedder.embedded.clear()

    again = await kb.ingest([docs], "acme")
    assert again.embedded == 0 and again.kept == first.embedded and embedder.embedded == []

    (docs / "vpn.txt").write_text("The office VPN uses WireGuard on port 51821 since May. "
                                  "Ask IT for a peer config file.")
    (docs / "baking.html").unlink()
    changed = await kb.ingest([docs], "acme")
    assert changed.embedded == 1 and embedder.embedded == [
        "The office VPN uses WireGuard on port 51821 since May. Ask IT for a peer config file."]
    assert changed.deleted == 1
    assert [Path(s).name for s in changed.removed_documents] == ["baking.html"]
    assert await db.pool.fetchval(
        "SELECT count(*) FROM kb_chunks WHERE text LIKE '%51820%' OR text LIKE '%Sourdough%'"
    ) == 0
    hits = await kb.search("acme", "which port does the VPN use", k=1)
    assert "51821" in hits[0].text


async def test_a_document_read_for_secrets_under_other_rules_is_read_again_not_embedded(
    db: Database, docs: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An upgrade whose rules find more (`curl -u admin:…` was not a secret before): the next
    ingest reads each document again, says what it holds now and embeds nothing; the one
    after it reads nothing."""
    (docs / "deploy.md").write_text("# Deploy\n\nRun `curl -u admin:Tr0ub4dor https://ci`.\n")
    embedder = CountingEmbedder()
    kb = KnowledgeBase(db.pool, embedder)
    monkeypatch.setattr(knowledge, "rules", lambda: "older rules")
    first = await kb.ingest([docs], "acme")
    await db.pool.execute("UPDATE kb_documents SET secrets = '{}' WHERE tenant = 'acme'")
    monkeypatch.undo()
    embedder.embedded.clear()

    again = await kb.ingest([docs], "acme")
    assert again.embedded == 0 and again.kept == first.embedded and embedder.embedded == []
    assert [(Path(seen.source).name, seen.kinds) for seen in again.secrets] == [
        ("deploy.md", {"password": 1})]
    [listed] = [d for d in await knowledge.documents(db.pool, "acme")
                if d.source.endswith("deploy.md")]
    assert listed.secrets == {"password": 1}
    third = await kb.ingest([docs], "acme")
    assert third.secrets == [] and third.embedded == 0


async def test_a_change_of_embedding_model_is_detected(db: Database, docs: Path) -> None:
    await KnowledgeBase(db.pool, WordLlamaEmbedder(256)).ingest([docs / "router.md"], "acme")
    other = KnowledgeBase(db.pool, WordLlamaEmbedder(128))
    with pytest.raises(KnowledgeError, match="embedded with wordllama-l2-supercat-256"):
        await other.search("acme", "reset the router")
    report = await other.ingest([docs / "router.md"], "acme")
    assert report.embedded > 0 and report.kept == 0  # re-embedded with the new model
    assert await db.pool.fetchval(
        "SELECT array_agg(DISTINCT embed_model) FROM kb_chunks") == ["wordllama-l2-supercat-128"]
    assert (await other.search("acme", "reset the router"))[0].source.endswith("router.md")


async def test_an_unreadable_file_is_reported_and_the_rest_ingested(
    db: Database, docs: Path,
) -> None:
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    report = await KnowledgeBase(db.pool, WordLlamaEmbedder()).ingest([docs], "acme")
    assert report.documents == 4
    assert len(report.skipped) == 1 and "broken.pdf" in report.skipped[0]


def test_fusions_reward_agreement() -> None:
    vector = [Hit(1, "a", "s", 0.9), Hit(2, "b", "s", 0.8), Hit(3, "c", "s", 0.1)]
    keyword = [Hit(2, "b", "s", 2.0), Hit(3, "c", "s", 1.5)]
    assert [h.id for h in rrf(vector, keyword)] == [2, 3, 1]  # in both lists beats one top rank
    assert [h.id for h in weighted(vector, keyword)] == [2, 1, 3]
    assert [h.id for h in weighted(vector, keyword, vector_weight=0.9)] == [1, 2, 3]


class WeightedWordLlama(WordLlamaEmbedder):
    fusion = "weighted"


async def test_search_fuses_as_its_embedder_ranks_best(db: Database, docs: Path) -> None:
    """mpnet's vectors are fused by their scores, the others' by rank (README: Knowledge
    base): a search without `fusion` takes its embedder's, and an explicit one still wins."""
    assert MPNetEmbedder.fusion == "weighted" and WordLlamaEmbedder.fusion == "rrf"
    assert SharedQueries(WeightedWordLlama()).fusion == "weighted"
    query = "reset the router admin password"
    for embedder, default, other in ((WordLlamaEmbedder(), rrf, weighted),
                                     (WeightedWordLlama(), weighted, rrf)):
        kb, tenant = KnowledgeBase(db.pool, embedder), f"fusion-{embedder.fusion}"
        await kb.ingest([docs], tenant)
        vector_hits, keyword_hits = await kb.rankings(tenant, query, 20)
        assert vector_hits and keyword_hits
        scored = [(h.id, h.score) for h in await kb.search(tenant, query, 5)]
        assert scored == [(h.id, h.score) for h in default(vector_hits, keyword_hits)[:5]]
        explicit = "weighted" if other is weighted else "rrf"
        assert [(h.id, h.score) for h in await kb.search(tenant, query, 5, fusion=explicit)] \
            == [(h.id, h.score) for h in other(vector_hits, keyword_hits)[:5]] != scored


async def test_kb_cli_ingests_and_searches(settings: Settings, docs: Path) -> None:
    env = cli_env(settings)
    code, out, err = await run_cli("kb", "ingest", str(docs), "--tenant", "acme", env=env)
    assert code == 0, err
    assert "4 documents:" in out and "minilm-l6-v2-384-windows" in out
    assert "\r" not in err and "ingest (acme)" not in err  # no progress bar off a terminal
    code, out, err = await run_cli("kb", "search", "reset the router admin password",
                                   "--tenant", "acme", "--json", env=env)
    assert code == 0, err
    hits = json.loads(out)
    assert Path(hits[0]["source"]).name == "router.md" and len(hits) <= 5
    code, out, _ = await run_cli("kb", "search", "router password", "--tenant", "globex",
                                 env=env)
    assert code == 0 and "No knowledge for tenant globex" in out
    code, _, err = await run_cli("kb", "ingest", str(docs / "nope"), "--tenant", "acme", env=env)
    assert code == 2 and "no such file or folder" in err


async def test_gemini_embeddings_through_the_real_sdk(db: Database, docs: Path) -> None:
    async with ScriptedModelServer() as server:
        embedder = GeminiEmbedder(api_key="test-key", base_url=server.base_url)
        kb = KnowledgeBase(db.pool, embedder)
        report = await kb.ingest([docs / "router.md", docs / "vpn.txt"], "acme")
        hits = await kb.search("acme", "which port does the office VPN use", k=1)
        await embedder.aclose()
    assert report.embedded >= 2 and hits[0].source.endswith("vpn.txt")
    ingest, query = server.requests[0], server.requests[-1]
    assert ingest.model == query.model == "gemini-embedding-001"
    assert ingest.headers["x-goog-api-key"] == "***"
    assert {r["taskType"] for r in ingest.body["requests"]} == {"RETRIEVAL_DOCUMENT"}
    assert query.body["requests"][0]["taskType"] == "RETRIEVAL_QUERY"
    assert query.body["requests"][0]["outputDimensionality"] == 768
    assert await db.pool.fetchval(
        "SELECT DISTINCT embed_model FROM kb_chunks") == "gemini-embedding-001-768"


async def test_a_proxy_page_instead_of_embeddings_is_one_embedding_error() -> None:
    """A 200 whose body is a proxy's HTML, not the API's JSON: the SDK's parse error became
    a traceback; now it is the embedder's one-line error, which recall turns into keywords
    alone (memory/recall.py)."""
    async def page(_request: web.Request) -> web.Response:
        return web.Response(text="<html><h1>502 Bad Gateway</h1>\n</html>",
                            content_type="text/html")
    async with answering(page) as url:
        embedder = GeminiEmbedder(api_key="test-key", base_url=url, retries=0)
        try:
            with pytest.raises(EmbeddingError) as failed:
                await embedder.embed_query("which port does the VPN use")
        finally:
            await embedder.aclose()
    message = str(failed.value)
    assert "\n" not in message and "its answer was not the API's JSON" in message
    assert message.startswith(f"Gemini embeddings (gemini-embedding-001 at {url})")
    # a key carried in the endpoint's query is never said
    keyed = GeminiEmbedder(api_key="test-key", base_url=f"{url}/?key=AIzaQUERYSECRET", retries=0)
    try:
        with pytest.raises(EmbeddingError) as failed:
            await keyed.embed_query("which port does the VPN use")
    finally:
        await keyed.aclose()
    assert "AIzaQUERYSECRET" not in str(failed.value) and "key=***" in str(failed.value)


async def test_a_turns_lookup_keeps_word_sharing_hits(
    db: Database, docs: Path,
) -> None:
    embedder = CountingEmbedder()
    kb = KnowledgeBase(db.pool, embedder)
    await kb.ingest([docs], "acme")
    hits = await kb.lookup("acme", "what is the default router password")
    assert hits and all(h.keyword_rank is not None for h in hits)
    assert hits[0].source.endswith("router.md")
    assert await kb.lookup("acme", "zzzz qqqq") == []  # nearest vectors alone are not enough
    assert await kb.has_any("acme") and not await kb.has_any("globex")


class ProbedPool:
    """The real pool, counting the knowledge probes sent through it; `fail` makes the next
    probe fail as a database gone away would."""

    PROBE = "SELECT EXISTS (SELECT 1 FROM kb_chunks WHERE tenant = $1)"

    def __init__(self, pool: Any) -> None:
        self._pool, self.probes, self.fail = pool, 0, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        if sql == self.PROBE:
            self.probes += 1
            if self.fail:
                self.fail = False
                raise ConnectionResetError("the database went away")
            await asyncio.sleep(0.01)  # a round trip: the second asker comes while it is out
        return await self._pool.fetchval(sql, *args)


async def test_a_knowledge_probe_answers_whoever_asks_within_its_hold(
    db: Database, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A turn's recall and its live assist both ask whether the tenant has knowledge, moments
    apart: one probe answers both. Its own ingest, a failed probe and the hold's end ask anew."""
    pool = ProbedPool(db.pool)
    kb = KnowledgeBase(pool, WordLlamaEmbedder())  # type: ignore[arg-type]
    assert await asyncio.gather(kb.has_any("acme"), kb.has_any("acme")) == [False, False]
    assert not await kb.has_any("acme") and pool.probes == 1
    assert not await kb.has_any("globex") and pool.probes == 2  # each tenant its own
    await kb.ingest_chunks("acme", "vpn.md", [("vpn#1", "Rotate the vpn token every 90 days.")])
    assert await kb.has_any("acme") and pool.probes == 3
    pool.fail = True
    with pytest.raises(ConnectionResetError):
        await kb.has_any("initech")
    assert not await kb.has_any("initech") and pool.probes == 5  # the failure was not kept
    monkeypatch.setattr(knowledge, "PROBE_HOLD_S", 0.0)
    assert await kb.has_any("acme") and pool.probes == 6


async def test_search_filters_on_document_metadata(db: Database, docs: Path) -> None:
    kb = KnowledgeBase(db.pool, WordLlamaEmbedder())
    await kb.ingest([docs / "router.md"], "acme", metadata={"team": "network"})
    await kb.ingest([docs / "vpn.txt", docs / "holidays.pdf"], "acme", metadata={"team": "it"})
    question = "office vpn router holidays"
    teams = {Path(h.source).name for h in await kb.search("acme", question, 10,
                                                          where={"team": "it"})}
    assert teams == {"vpn.txt", "holidays.pdf"}
    pdfs = await kb.search("acme", question, 10, where={"team": "it", "type": "pdf"})
    assert {Path(h.source).name for h in pdfs} == {"holidays.pdf"}
    assert await kb.search("acme", question, 10, where={"team": "sales"}) == []


async def _chunks_of_random_vectors(db: Database, tenant: str, count: int, model: str,
                                    dim: int) -> None:
    """`count` chunks of one document, each a random vector, made by Postgres itself."""
    document = await db.pool.fetchval(
        "INSERT INTO kb_documents (tenant, source, content_hash) VALUES ($1, 'notes.md', 'h')"
        " RETURNING id", tenant)
    await db.pool.execute(  # the subquery names g, so each row draws its own vector
        "INSERT INTO kb_chunks (tenant, document_id, chunk_key, position, text, content_hash,"
        " embed_model, embedding) SELECT $1, $2, 'c' || g, g, 'note ' || g, 'h', $3,"
        " (SELECT array_agg(random() - 0.5) FROM generate_series(1, $4) WHERE g > 0)::vector"
        " FROM generate_series(1, $5) g", tenant, document, model, dim, count, timeout=120)


async def test_a_small_tenants_vector_ranking_is_whole_when_the_shared_index_serves_it(
    db: Database, settings: Settings,
) -> None:
    """One HNSW index holds every tenant's chunks. Once the table is analysed (autovacuum does
    it after a large ingest) the planner reads it for a tenant with a few percent of the rows
    too, and the index's nearest hold few of that tenant's: the pools' settings (memory/db.py)
    read on until the ranking is as long as asked, every hit the tenant's own."""
    embedder = WordLlamaEmbedder()
    model, dim = embedder.name, int(embedder.dim)
    await _chunks_of_random_vectors(db, "globex", 12_000, model, dim)
    await _chunks_of_random_vectors(db, "acme", 600, model, dim)
    kb = KnowledgeBase(db.pool, embedder)
    await kb.rankings("acme", "warm", 1, query_vector=np.zeros(dim, np.float32))  # its index
    await db.pool.execute("ANALYZE kb_chunks")
    question = np.random.default_rng(7).standard_normal(dim).astype(np.float32)
    plan = "\n".join(r[0] for r in await db.pool.fetch(
        f"EXPLAIN SELECT id FROM kb_chunks WHERE tenant = 'acme' AND embed_model = '{model}'"
        f" ORDER BY embedding::vector({dim}) <=> $1::vector({dim}) LIMIT 20",
        knowledge.vector_literal(question)))
    assert "kb_chunks_hnsw" in plan, plan  # the shared index serves the small tenant

    vector_hits, _ = await kb.rankings("acme", "note", 20, query_vector=question)
    owners = {r["tenant"] for r in await db.pool.fetch(
        "SELECT DISTINCT tenant FROM kb_chunks WHERE id = ANY($1::bigint[])",
        [h.id for h in vector_hits])}
    assert len(vector_hits) == 20 and owners == {"acme"}

    # without the iterative scan the same question finds a few (what the settings mend)
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1,
                                     server_settings={"hnsw.iterative_scan": "off"})
    try:
        unmended, _ = await KnowledgeBase(pool, embedder).rankings(
            "acme", "note", 20, query_vector=question)
    finally:
        await pool.close()
    assert len(unmended) < 10


async def test_a_cohere_reranker_reorders_and_its_outage_keeps_the_fused_order(
    db: Database, docs: Path, settings: Settings, tmp_path: Path,
) -> None:
    status = [200]

    def serve(request: CapturedRequest) -> ScriptedReply:
        return ScriptedReply(status=status[0], text="scripted outage")

    record = SessionRecord.open(session_id="s-rerank", tenant="acme", source="replay",
                                costs_dir=tmp_path / "costs", prices=PriceTable.load(None),
                                store=None)
    async with ScriptedModelServer(serve) as server:
        reranker = make_reranker(settings.with_overrides(
            reranker="cohere", cohere_api_key="test-key", cohere_base_url=server.base_url,
            model_retries=0), record=record.meter.rerank_call)
        assert reranker is not None
        kb = KnowledgeBase(db.pool, WordLlamaEmbedder(), reranker)
        await kb.ingest([docs], "acme")
        question = "which port does the office vpn use"
        fused = await KnowledgeBase(db.pool, kb.embedder).search("acme", question, k=3)
        reranked = await kb.search("acme", question, k=3)
        status[0] = 503
        fallback = await kb.search("acme", question, k=3)
        await reranker.aclose()
    sent = [r for r in server.requests if r.provider == "cohere"]
    assert len(sent) == 2 and sent[0].body["model"] == "rerank-v3.5"
    assert sent[0].body["query"] == question and sent[0].body["top_n"] == 3
    assert sent[0].headers["authorization"] == "***"
    # the scripted relevance (share of the query's words) puts the VPN note first
    assert reranked[0].source.endswith("vpn.txt") and reranked[0].score == pytest.approx(
        max(h.score for h in reranked))
    assert {h.id for h in reranked} <= {h.id for h in await KnowledgeBase(
        db.pool, kb.embedder).search("acme", question, k=20)}
    assert [h.id for h in fallback] == [h.id for h in fused]
    summary = await record.close()
    rerank_cost = summary["by_model"]["rerank-v3.5"]
    assert rerank_cost["calls"] == 2 and rerank_cost["errors"] == 1
    assert summary["total_cost_usd"] == pytest.approx(0.002)  # one billed search unit


def test_the_reranker_needs_its_key(settings: Settings) -> None:
    assert make_reranker(settings) is None  # off by default
    with pytest.raises(ConfigError, match="COHERE_API_KEY"):
        make_reranker(settings.with_overrides(reranker="cohere"))
