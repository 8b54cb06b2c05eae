"""`sightline kb eval`: retrieval quality and latency on a labelled corpus, against references.

The corpus (`{"id", "text", "tenant"}` per line, one chunk each, ids kept) goes into a scratch
schema of the configured Postgres (`Database.open(..., scratch=True)`), dropped afterwards.
Every query runs scoped to its tenant through each system, in the same run on the same data:
- `sightline`: the hybrid search with its embedder's fusion (`sightline_weighted` or
  `sightline_rrf`: the other one);
- `keyword` and `vector`: each of its two rankings alone;
- `llamaindex_bm25`: `llama-index-retrievers-bm25` alone (the keyword reference);
- `llamaindex_fusion`: LlamaIndex's stock `QueryFusionRetriever` (reciprocal rerank) over a
  `VectorStoreIndex` retriever with the same embeddings and a `BM25Retriever`, one per tenant.
Printed: recall@k, MRR and latency p50/p95 per system; the last line is a JSON summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memory.db import Database
from memory.embeddings import Embedder, LocalEmbedder, offline_embedder
from memory.knowledge import FUSIONS, KnowledgeBase, KnowledgeError

EVAL_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "kb_eval"

Retrieve = Callable[[str, str, int], Awaitable[list[str]]]  # tenant, query, k -> ids


@dataclass(frozen=True)
class Query:
    query: str
    relevant_ids: tuple[str, ...]
    tenant: str


def read_jsonl(path: Path, fields: tuple[str, ...],
               check: Callable[[dict[str, Any]], str | None] | None = None,
               ) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file, each with `fields` (and, with `check`, what it says is
    wrong with a row, or None); bad input is one line naming the file and line
    (KnowledgeError), never a traceback from deep in the run that first trips over it."""
    rows = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise KnowledgeError(f"{path}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise KnowledgeError(f"{path}: not UTF-8 text (byte {exc.start}): JSON lines are "
                             "UTF-8") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KnowledgeError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        missing = [f for f in fields if not isinstance(row, dict) or f not in row]
        if missing:
            raise KnowledgeError(f"{path}:{number}: missing {', '.join(missing)}")
        problem = check(row) if check is not None else None
        if problem:
            raise KnowledgeError(f"{path}:{number}: {problem}")
        rows.append(row)
    if not rows:
        raise KnowledgeError(f"{path}: no lines")
    return rows


def _is_id(value: object) -> bool:
    """An id is a string, as the converters (bench/beir.py, bench/conversations.py) write them;
    an integer is taken too, as its digits (a hand-written set numbers its chunks), but not a
    bool or float, whose text (`True`, `1.0`) would silently be another id."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _strings(row: dict[str, Any], fields: tuple[str, ...]) -> str | None:
    wrong = [f for f in fields if not isinstance(row[f], str)]
    if wrong:
        return f"{', '.join(wrong)} must be {'a string' if len(wrong) == 1 else 'strings'}"
    return None


def _chunk_problem(row: dict[str, Any]) -> str | None:
    """What is wrong with a corpus row's types: text that is not text would be stringified
    (`['x']`) into the search, or crash a reference retriever mid-run."""
    if not _is_id(row["id"]):
        return f"id must be a string, not {type(row['id']).__name__}"
    return _strings(row, ("text", "tenant"))


def _query_problem(row: dict[str, Any]) -> str | None:
    """What is wrong with a labelled query's types: a string of relevant ids would be read as
    its characters, and an empty list cannot be scored (recall divides by its length)."""
    relevant = row["relevant_ids"]
    if not isinstance(relevant, list) or not relevant or not all(map(_is_id, relevant)):
        return "relevant_ids must be a non-empty list of ids (strings)"
    return _strings(row, ("query", "tenant"))


def load(corpus: Path, queries: Path) -> tuple[list[dict[str, Any]], list[Query]]:
    """The corpus (ids as strings) and its labelled queries, checked before anything runs."""
    chunks = [{"id": str(c["id"]), "text": c["text"], "tenant": c["tenant"]}
              for c in read_jsonl(corpus, ("id", "text", "tenant"), _chunk_problem)]
    ids = {c["id"] for c in chunks}
    labelled = [Query(q["query"], tuple(map(str, q["relevant_ids"])), q["tenant"])
                for q in read_jsonl(queries, ("query", "relevant_ids", "tenant"),
                                    _query_problem)]
    unknown = sorted({i for q in labelled for i in q.relevant_ids} - ids)
    if unknown:
        raise KnowledgeError(f"{queries}: relevant ids not in the corpus: {', '.join(unknown[:5])}")
    return chunks, labelled


class SharedVectors(LocalEmbedder):
    """The run's embedder, remembering each text's vector: both systems are loaded with the
    same vectors, computed once (MiniLM embeds a few thousand word pieces a second on one core,
    so 10k chunks take minutes). With `cache`, a folder, the vectors are also kept there between
    runs (`<embedder name>.npz`, keyed by each text's SHA-256): a second run over the same
    corpus embeds nothing. Queries are embedded afresh by each system, as in a real turn."""

    def __init__(self, inner: LocalEmbedder, cache: Path | None = None) -> None:
        self.name, self.dim, self.INLINE_TEXTS = inner.name, inner.dim, inner.INLINE_TEXTS
        self.fusion = inner.fusion
        self._inner = inner
        self._known: dict[str, np.ndarray] = {}
        self._file = cache / f"{inner.name}.npz" if cache else None
        self._stored: dict[bytes, np.ndarray] = {}
        if cache is not None:  # made now: a path that cannot be one fails before the run
            try:
                cache.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise KnowledgeError(f"--vectors {cache}: cannot be a directory here "
                                     f"({exc.strerror or exc})") from None
        if self._file is not None and self._file.exists():
            try:
                with np.load(self._file) as saved:
                    self._stored = dict(zip(saved["keys"].tolist(), saved["vectors"],
                                            strict=True))
            except (OSError, ValueError, KeyError) as exc:
                raise KnowledgeError(f"{self._file}: not a vector cache ({exc}); delete it"
                                     ) from None

    def query_text(self, text: str) -> str:
        """Questions are read as the wrapped embedder reads them (bge's instruction)."""
        return self._inner.query_text(text)

    def embed_question_sync(self, text: str) -> np.ndarray:
        """As the wrapped embedder embeds a question (MiniLM's in 8 bits)."""
        return self._inner.embed_question_sync(text)

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        if len(texts) == 1:
            return self._inner.embed_sync(texts)
        for text in dict.fromkeys(t for t in texts if t not in self._known):
            stored = self._stored.get(_digest(text))
            if stored is not None:
                self._known[text] = stored
        new = list(dict.fromkeys(t for t in texts if t not in self._known))
        if new:
            self._known.update(zip(new, self._inner.embed_sync(new), strict=True))
        return np.stack([self._known[t] for t in texts])

    def save(self) -> None:
        """Keep this run's vectors in the cache folder, beside the ones it had."""
        if self._file is None or not self._known:
            return
        self._stored.update((_digest(t), v) for t, v in self._known.items())
        with self._file.open("wb") as handle:
            np.savez(handle, keys=np.array(list(self._stored), dtype="S32"),
                     vectors=np.stack(list(self._stored.values())))


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def llamaindex_embedding(embedder: LocalEmbedder) -> Any:
    """Our embedder as a LlamaIndex `BaseEmbedding`, so both sides use the same vectors."""
    from llama_index.core.embeddings import BaseEmbedding

    class Wrapped(BaseEmbedding):
        def _get_query_embedding(self, query: str) -> list[float]:
            return embedder.embed_question_sync(query).tolist()

        def _get_text_embedding(self, text: str) -> list[float]:
            return embedder.embed_sync([text])[0].tolist()

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return embedder.embed_sync(texts).tolist()

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

    return Wrapped(model_name=embedder.name, embed_batch_size=256)


def _tenant_nodes(chunks: list[dict[str, Any]]) -> dict[str, list[Any]]:
    from llama_index.core.schema import TextNode

    return {tenant: [TextNode(id_=str(c["id"]), text=c["text"]) for c in chunks
                     if c["tenant"] == tenant] for tenant in sorted({c["tenant"] for c in chunks})}


def _bm25(nodes: list[Any], k: int) -> Any:
    """llama-index-retrievers-bm25 (bm25s underneath) with English stemming and stopwords."""
    import Stemmer
    from llama_index.retrievers.bm25 import BM25Retriever

    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG
    return BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=k,
                                       stemmer=Stemmer.Stemmer("english"), language="english")


def _per_tenant(retrievers: dict[str, Any]) -> Retrieve:
    async def retrieve(tenant: str, query: str, top: int) -> list[str]:
        nodes = await retrievers[tenant].aretrieve(query)
        return [n.node.node_id for n in nodes[:top]]
    return retrieve


def llamaindex_bm25(chunks: list[dict[str, Any]], k: int) -> Retrieve:
    """The BM25 reference alone, one index per tenant: what our keyword ranking is held to."""
    return _per_tenant({tenant: _bm25(nodes, k)
                        for tenant, nodes in _tenant_nodes(chunks).items()})


def llamaindex_fusion(chunks: list[dict[str, Any]], embedder: LocalEmbedder, k: int) -> Retrieve:
    """LlamaIndex's stock hybrid: vector index + BM25, reciprocal-rank fused, per tenant."""
    from llama_index.core import VectorStoreIndex
    from llama_index.core.llms import MockLLM
    from llama_index.core.retrievers import QueryFusionRetriever

    embed_model = llamaindex_embedding(embedder)
    retrievers = {}
    for tenant, nodes in _tenant_nodes(chunks).items():
        vector = VectorStoreIndex(nodes, embed_model=embed_model).as_retriever(
            similarity_top_k=k)
        retrievers[tenant] = QueryFusionRetriever(
            [vector, _bm25(nodes, k)], similarity_top_k=k, num_queries=1,
            mode="reciprocal_rerank", use_async=False,
            llm=MockLLM(),  # one query: no LLM rewriting is asked for
        )
    return _per_tenant(retrievers)


def score(ranked: list[str], relevant: tuple[str, ...], ks: list[int]) -> dict[str, float]:
    found = set(relevant)
    metrics = {f"recall@{k}": len(found & set(ranked[:k])) / len(found) for k in ks}
    first = next((i for i, key in enumerate(ranked, start=1) if key in found), None)
    metrics["mrr"] = 1 / first if first else 0.0
    return metrics


async def run_eval(
    url: str, corpus: Path, queries_path: Path, ks: list[int],
    embedder: Embedder | None = None, vectors: Path | None = None,
) -> dict[str, Any]:
    """The evaluation; `vectors`: a folder keeping the corpus's vectors between runs."""
    chunks, queries = load(corpus, queries_path)
    embedder = embedder or offline_embedder()
    if isinstance(embedder, LocalEmbedder):
        embedder = SharedVectors(embedder, vectors)
    db = await Database.open(url, Path(), scratch=True)
    try:
        return await _evaluate(KnowledgeBase(db.pool, embedder), chunks, queries, ks, embedder)
    finally:
        if isinstance(embedder, SharedVectors):
            embedder.save()
        await db.close()


async def ingest_corpus(kb: KnowledgeBase, chunks: list[dict[str, Any]]) -> None:
    """Each tenant's chunks as one document, under the ids the labels name; then analysed,
    so that the figures are those of the plan a worker's database settles on, whether or not
    autovacuum got there during the run."""
    for tenant in sorted({c["tenant"] for c in chunks}):
        await kb.ingest_chunks(tenant, "eval-corpus", [
            (str(c["id"]), str(c["text"])) for c in chunks if c["tenant"] == tenant])
    await kb.analyze()


async def _evaluate(
    kb: KnowledgeBase, chunks: list[dict[str, Any]], queries: list[Query], ks: list[int],
    embedder: Embedder,
) -> dict[str, Any]:
    await ingest_corpus(kb, chunks)
    depth = max(ks)

    def fused(fusion: str) -> Retrieve:
        async def retrieve(tenant: str, query: str, top: int) -> list[str]:
            return [h.key for h in await kb.search(tenant, query, top, fusion=fusion)]
        return retrieve

    def single(which: int) -> Retrieve:
        async def retrieve(tenant: str, query: str, top: int) -> list[str]:
            return [h.key for h in (await kb.rankings(tenant, query, top))[which]]
        return retrieve

    other = next(f for f in FUSIONS if f != embedder.fusion)
    systems: dict[str, Retrieve] = {
        "sightline": fused(embedder.fusion),
        f"sightline_{other}": fused(other),
        "keyword": single(1),
        "vector": single(0),
    }
    systems["llamaindex_bm25"] = llamaindex_bm25(chunks, depth)
    if isinstance(embedder, LocalEmbedder):
        systems["llamaindex_fusion"] = llamaindex_fusion(chunks, embedder, depth)
    results: dict[str, Any] = {}
    for name, retrieve in systems.items():
        await retrieve(queries[0].tenant, queries[0].query, depth)  # warm up
        metrics: list[dict[str, float]] = []
        latencies: list[float] = []
        for q in queries:
            started = time.perf_counter()
            ranked = await retrieve(q.tenant, q.query, depth)
            latencies.append((time.perf_counter() - started) * 1000)
            metrics.append(score(ranked, q.relevant_ids, ks))
        summary = {key: round(statistics.fmean(m[key] for m in metrics), 4) for key in metrics[0]}
        summary["p50_ms"] = round(float(np.percentile(latencies, 50)), 2)
        summary["p95_ms"] = round(float(np.percentile(latencies, 95)), 2)
        results[name] = summary
    return {"queries": len(queries), "chunks": len(chunks), "embedder": embedder.name,
            "systems": results}


def format_table(result: dict[str, Any]) -> str:
    systems = result["systems"]
    columns = [c for c in next(iter(systems.values())) if c not in ("p50_ms", "p95_ms")]
    header = f"{'system':<20}" + "".join(f"{c:>11}" for c in [*columns, "p50_ms", "p95_ms"])
    lines = [f"{result['queries']} queries over {result['chunks']} chunks "
             f"(embeddings: {result['embedder']})", header]
    for name, row in systems.items():
        lines.append(f"{name:<20}" + "".join(f"{row[c]:>11}" for c in
                                             [*columns, "p50_ms", "p95_ms"]))
    return "\n".join(lines)
