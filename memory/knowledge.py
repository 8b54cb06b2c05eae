"""The tenant's knowledge base in Postgres: documents in, chunks embedded once, hybrid search out.

Ingest reads Markdown and text as UTF-8, HTML with BeautifulSoup and PDF with pypdf, splits on
sentence boundaries with overlap (llama-index's `SentenceSplitter`), and stores each chunk with
its content hash, its embedder's name and its vector. Re-ingesting a document embeds only the
chunks whose text (or embedder) changed; chunks no longer in it are deleted, and so is a document
gone from a folder that is ingested again. Search runs a vector query (pgvector HNSW) and a
keyword query (tsvector, GIN) for the tenant and fuses the two rankings. Every query is scoped to
one tenant.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from .embeddings import Embedder
from .rerank import Reranker, RerankError

log = logging.getLogger("sightline.knowledge")

SUFFIXES = (".md", ".markdown", ".txt", ".text", ".html", ".htm", ".pdf")
CHUNK_TOKENS = 256  # WordLlama has no window limit; Gemini embeddings take 2048 tokens
CHUNK_OVERLAP = 32
RRF_K = 60
COMMON_LEXEME_SHARE = 0.05  # a lexeme in more chunks than this is left out of keyword queries
MAX_QUERY_LEXEMES = 6  # the rarest ones: each adds chunks Postgres must score
COMMON_LEXEMES_TTL_S = 600.0  # how long the table's lexeme statistics are reused
FUSIONS = ("rrf", "weighted")


class KnowledgeError(ValueError):
    """A problem the user can fix: an unreadable file, a model change, a bad argument."""


@dataclass(frozen=True)
class Hit:
    """A retrieved text: a knowledge chunk (`source` is its document) or a remembered message
    (`source` is who said it, `at` when)."""

    id: int
    text: str
    source: str
    score: float
    vector_rank: int | None = None
    keyword_rank: int | None = None
    key: str = ""  # the chunk's key: file#hash#n, or the id it was given
    at: datetime | None = None  # when a remembered message was said (memory recall)


@dataclass
class IngestReport:
    documents: int = 0
    embedded: int = 0
    kept: int = 0
    deleted: int = 0
    removed_documents: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def vector_literal(vector: np.ndarray) -> str:
    """pgvector's text form; avoids a per-connection codec for a type that may not exist yet."""
    return "[" + ",".join(f"{x:.6g}" for x in vector.tolist()) + "]"


def _html_text(path: Path) -> str:
    """The text of the page's `<body>`, one line per top-level block."""
    from bs4 import BeautifulSoup, NavigableString

    with path.open(encoding="utf-8") as fh:
        soup = BeautifulSoup(fh, "html.parser")
    texts = []
    for body in soup.find_all("body"):
        for element in body.children:
            text = element.strip() if isinstance(element, NavigableString) else (
                element.get_text().strip())
            if text:
                texts.append(text)
    return "\n".join(texts)


def _pdf_text(path: Path) -> str:
    import pypdf

    reader = pypdf.PdfReader(path)
    return "\n".join(page.extract_text() for page in reader.pages)


def read_document(path: Path) -> str:
    """The text of one file: PDF through pypdf, HTML through BeautifulSoup (the libraries the
    llama-index readers wrap, used directly so the runtime needs neither those readers nor the
    pandas they pull in), anything else as UTF-8 text."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".pdf":
            text = _pdf_text(path)
        elif suffix in (".html", ".htm"):
            text = _html_text(path)
        else:
            text = path.read_text(encoding="utf-8")
    except Exception as exc:  # parsers raise whatever their format's errors are
        raise KnowledgeError(f"{path}: cannot read it as {suffix or 'text'}: {exc}") from None
    return text.strip()


def split(text: str) -> list[str]:
    from llama_index.core.node_parser import SentenceSplitter

    splitter = SentenceSplitter(chunk_size=CHUNK_TOKENS, chunk_overlap=CHUNK_OVERLAP)
    return [c for c in splitter.split_text(text) if c.strip()]


def prepare(path: Path) -> tuple[str, str, list[str]]:
    """(source id, text, chunks) of one file: reading and splitting are blocking, run it in a
    thread."""
    text = read_document(path)
    return str(path.resolve()), text, split(text) if text else []


def find_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise KnowledgeError(f"{path}: no such file or folder")
    return files


def keyword_query(text: str) -> str:
    """Any of the question's words (OR), for `to_tsquery`; stopwords drop out there."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return " | ".join(dict.fromkeys(w for w in words if len(w) > 1))


class KnowledgeBase:
    def __init__(
        self, pool: asyncpg.Pool, embedder: Embedder, reranker: Reranker | None = None,
    ) -> None:
        self._pool = pool
        self.embedder = embedder
        self.reranker = reranker
        self._indexed = False
        self._shares: dict[str, float] = {}  # lexeme -> share of chunks, from pg_stats
        self._shares_at = -COMMON_LEXEMES_TTL_S

    async def _ensure_index(self) -> None:
        """One HNSW index per embedder, over vectors of its dimension."""
        if self._indexed:
            return
        name, dim = self.embedder.name, int(self.embedder.dim)
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower())[:40]
        literal = name.replace("'", "''")
        await self._pool.execute(
            f"CREATE INDEX IF NOT EXISTS kb_chunks_hnsw_{slug} ON kb_chunks USING hnsw "
            f"((embedding::vector({dim})) vector_cosine_ops) WHERE embed_model = '{literal}'"
        )
        self._indexed = True

    async def ingest(
        self, paths: Sequence[Path], tenant: str,
        progress: Callable[[int, int], None] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> IngestReport:
        """Ingest files and folders for `tenant`, tagging each document with `metadata` (what
        search can filter on); a folder ingested again loses the documents no longer in it."""
        await self._ensure_index()
        report = IngestReport()
        files = await asyncio.to_thread(find_files, paths)
        present = sorted(await asyncio.to_thread(lambda: {str(f.resolve()) for f in files}))
        folders = await asyncio.to_thread(
            lambda: [str(p.resolve()) + "/" for p in paths if p.is_dir()])
        for done, path in enumerate(files, start=1):
            try:
                await self._ingest_one(path, tenant, report, metadata or {})
            except KnowledgeError as exc:
                report.skipped.append(str(exc))
            if progress is not None:
                progress(done, len(files))
        for prefix in folders:
            gone = await self._pool.fetch(
                "DELETE FROM kb_documents WHERE tenant = $1 AND starts_with(source, $2)"
                " AND NOT (source = ANY($3::text[])) RETURNING source",
                tenant, prefix, present,
            )
            report.removed_documents += [r["source"] for r in gone]
        return report

    async def _ingest_one(
        self, path: Path, tenant: str, report: IngestReport, metadata: dict[str, str],
    ) -> None:
        source, text, chunks = await asyncio.to_thread(prepare, path)
        seen: Counter[str] = Counter()
        keys = []
        for chunk in chunks:
            digest = _hash(chunk)
            keys.append(f"{source}#{digest[:16]}#{seen[digest]}")
            seen[digest] += 1
        await self._sync(tenant, source, _hash(text), list(zip(keys, chunks, strict=True)),
                         report, {"type": path.suffix.lower().lstrip("."), **metadata})

    async def ingest_chunks(self, tenant: str, source: str, chunks: list[tuple[str, str]]) -> None:
        """Store chunks as they are, under the keys given (the evaluation's corpus ids)."""
        await self._ensure_index()
        await self._sync(tenant, source, _hash("".join(k for k, _ in chunks)), chunks,
                         IngestReport(), {})

    async def _sync(
        self, tenant: str, source: str, doc_hash: str, chunks: list[tuple[str, str]],
        report: IngestReport, metadata: dict[str, str],
    ) -> None:
        """Make the stored chunks of `source` exactly `chunks` (key, text), embedding only the
        ones not stored yet with this embedder."""
        wanted = [(key, _hash(text), text, position)
                  for position, (key, text) in enumerate(chunks)]
        model = self.embedder.name
        async with self._pool.acquire() as conn, conn.transaction():
            doc_id = await conn.fetchval(
                "INSERT INTO kb_documents (tenant, source, content_hash, metadata)"
                " VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (tenant, source) DO UPDATE SET"
                " content_hash = excluded.content_hash, metadata = excluded.metadata,"
                " ingested_at = now() RETURNING id",
                tenant, source, doc_hash, json.dumps(metadata),
            )
            have = {r["chunk_key"] for r in await conn.fetch(
                "SELECT chunk_key FROM kb_chunks WHERE document_id = $1 AND embed_model = $2",
                doc_id, model,
            )}
            keys = [w[0] for w in wanted]
            deleted = await conn.fetchval(
                "WITH gone AS (DELETE FROM kb_chunks WHERE document_id = $1 AND"
                " (embed_model <> $2 OR NOT (chunk_key = ANY($3::text[]))) RETURNING 1)"
                " SELECT count(*) FROM gone", doc_id, model, keys,
            )
            new = [w for w in wanted if w[0] not in have]
            vectors = await self.embedder.embed_documents([w[2] for w in new]) if new else []
            await conn.executemany(
                "INSERT INTO kb_chunks (tenant, document_id, chunk_key, position, text,"
                " content_hash, embed_model, embedding) VALUES ($1, $2, $3, $4, $5, $6, $7,"
                " $8::vector)",
                [(tenant, doc_id, key, position, chunk, digest, model, vector_literal(vec))
                 for (key, digest, chunk, position), vec in zip(new, vectors, strict=True)],
            )
            await conn.executemany(
                "UPDATE kb_chunks SET position = $2 WHERE tenant = $3 AND chunk_key = $1",
                [(key, position, tenant) for key, _, _, position in wanted if key in have],
            )
        report.documents += 1
        report.embedded += len(new)
        report.kept += len(wanted) - len(new)
        report.deleted += deleted

    async def _check_model(self, tenant: str) -> None:
        models = [r["embed_model"] for r in await self._pool.fetch(
            "SELECT DISTINCT embed_model FROM kb_chunks WHERE tenant = $1", tenant)]
        if models and self.embedder.name not in models:
            raise KnowledgeError(
                f"tenant {tenant}'s knowledge was embedded with {', '.join(models)}, not "
                f"{self.embedder.name}: run `sightline kb ingest` again to re-embed it"
            )

    async def search(
        self, tenant: str, query: str, k: int = 5, *, fusion: str = "rrf",
        candidates: int = 20, where: dict[str, str] | None = None,
        vector: np.ndarray | None = None,
    ) -> list[Hit]:
        """The best `k` chunks of `tenant` for `query`: vector and keyword rankings fused;
        `where` keeps only documents whose metadata has all of its keys and values."""
        if fusion not in FUSIONS:
            raise KnowledgeError(f"fusion must be one of {', '.join(FUSIONS)}")
        vector_hits, keyword_hits = await self.rankings(tenant, query, candidates, where, vector)
        if not vector_hits:
            await self._check_model(tenant)
        fuse = rrf if fusion == "rrf" else weighted
        fused = fuse(vector_hits, keyword_hits)
        if self.reranker is None or len(fused) < 2:
            return fused[:k]
        try:
            order = await self.reranker.rerank(query, [h.text for h in fused], k)
        except RerankError as exc:
            log.warning("rerank failed, keeping the fused order: %s", exc)
            return fused[:k]
        return [replace(fused[index], score=round(score, 6)) for index, score in order][:k]

    async def has_any(self, tenant: str) -> bool:
        """Whether the tenant has knowledge at all: one index probe, no embedding call."""
        return bool(await self._pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM kb_chunks WHERE tenant = $1)", tenant))

    async def lookup(
        self, tenant: str, question: str, k: int = 3, vector: np.ndarray | None = None,
    ) -> list[Hit]:
        """What a turn gets: the best `k` hits that share at least one word with the question
        (a nearest vector alone is not evidence of relevance, and costs prompt tokens). Probe
        `has_any` first to spare a tenant without knowledge the embedding call."""
        hits = await self.search(tenant, question, k, vector=vector)
        return [h for h in hits if h.keyword_rank is not None]

    async def _keyword_tsquery(self, conn: asyncpg.Connection, query: str) -> str:
        """The query's rarest lexemes (English stemming, stopwords out), OR-ed, leaving out the
        ones in more than 5% of all chunks while rarer ones remain: a word that common ranks
        little and makes Postgres score much of the table on every turn (an IDF cut, from the
        column's statistics)."""
        lexemes = await conn.fetchval(
            "SELECT tsvector_to_array(to_tsvector('english', $1))", query) or []
        if time.monotonic() - self._shares_at > COMMON_LEXEMES_TTL_S:
            row = await conn.fetchrow(
                "SELECT most_common_elems::text::text[] AS elems, most_common_elem_freqs AS"
                " freqs FROM pg_stats WHERE tablename = 'kb_chunks' AND attname = 'tsv'")
            self._shares = dict(zip(row["elems"], row["freqs"], strict=False)
                                ) if row and row["elems"] else {}
            self._shares_at = time.monotonic()
        # rarest first (a lexeme missing from the statistics is rarer than any in them)
        ranked = sorted(lexemes, key=lambda lx: self._shares.get(lx, 0.0))
        rare = [lx for lx in ranked if self._shares.get(lx, 0.0) <= COMMON_LEXEME_SHARE]
        return " | ".join("'" + lx.replace("\\", "\\\\").replace("'", "''") + "'"
                          for lx in (rare or ranked[:1])[:MAX_QUERY_LEXEMES])

    async def rankings(
        self, tenant: str, query: str, limit: int, where: dict[str, str] | None = None,
        query_vector: np.ndarray | None = None,
    ) -> tuple[list[Hit], list[Hit]]:
        """The vector ranking and the keyword ranking, each up to `limit` long (`query_vector`:
        the query already embedded by this knowledge base's embedder)."""
        await self._ensure_index()
        dim = int(self.embedder.dim)
        if query_vector is None:
            query_vector = await self.embedder.embed_query(query)
        # the model is inlined, not a parameter: the HNSW index is partial, one per model, and
        # a cached generic plan could not prove it applies (it would scan every vector)
        model = self.embedder.name.replace("'", "''")
        args: list[Any] = [tenant, vector_literal(query_vector), limit]
        documents = ""
        if where:
            args.append(json.dumps(where))
            documents = (" AND c.document_id IN (SELECT id FROM kb_documents WHERE tenant = $1"
                         " AND metadata @> $4::jsonb)")
        async with self._pool.acquire() as conn:
            vector_rows = await conn.fetch(
                f"SELECT c.id, c.text, d.source, c.chunk_key, c.score FROM ("
                f" SELECT c.id, c.document_id, c.text, c.chunk_key,"
                f" c.embedding::vector({dim}) <=> $2::vector({dim}) AS distance,"
                f" 1 - (c.embedding::vector({dim}) <=> $2::vector({dim})) AS score"
                f" FROM kb_chunks c WHERE c.tenant = $1 AND c.embed_model = '{model}'"
                f"{documents} ORDER BY distance LIMIT $3) c"
                f" JOIN kb_documents d ON d.id = c.document_id ORDER BY c.distance",
                *args,
            )
            words = await self._keyword_tsquery(conn, query)
            keyword_rows = await conn.fetch(
                "SELECT c.id, c.text, d.source, c.chunk_key, c.score FROM ("
                " SELECT c.id, c.document_id, c.text, c.chunk_key, ts_rank_cd(c.tsv, q) AS score"
                " FROM kb_chunks c, to_tsquery('simple', $2) q WHERE c.tenant = $1 AND"
                f" c.tsv @@ q{documents} ORDER BY score DESC, c.id LIMIT $3) c"
                " JOIN kb_documents d ON d.id = c.document_id ORDER BY c.score DESC, c.id",
                tenant, words, limit, *args[3:],
            ) if words else []
        def hits(rows: list[asyncpg.Record]) -> list[Hit]:
            return [Hit(r["id"], r["text"], r["source"], float(r["score"]), key=r["chunk_key"])
                    for r in rows]
        return hits(vector_rows), hits(keyword_rows)


def rrf(vector_hits: list[Hit], keyword_hits: list[Hit]) -> list[Hit]:
    """Reciprocal-rank fusion: each list adds 1 / (60 + rank); scores' scales do not matter."""
    return _fuse(vector_hits, keyword_hits, lambda rank, _score, _hits: 1 / (RRF_K + rank))


def weighted(vector_hits: list[Hit], keyword_hits: list[Hit], vector_weight: float = 0.5,
             ) -> list[Hit]:
    """Weighted score fusion: each list's scores min-max normalised, then weighted."""
    def normalised(weight: float) -> Callable[[int, float, list[Hit]], float]:
        def score(_rank: int, value: float, hits: list[Hit]) -> float:
            low, high = min(h.score for h in hits), max(h.score for h in hits)
            return weight * ((value - low) / (high - low) if high > low else 1.0)
        return score
    return _fuse(vector_hits, keyword_hits, normalised(vector_weight),
                 normalised(1 - vector_weight))


def _fuse(
    vector_hits: list[Hit], keyword_hits: list[Hit],
    vector_score: Callable[[int, float, list[Hit]], float],
    keyword_score: Callable[[int, float, list[Hit]], float] | None = None,
) -> list[Hit]:
    keyword_score = keyword_score or vector_score
    fused: dict[int, dict[str, Any]] = {}
    for hits, score_of, rank_field in ((vector_hits, vector_score, "vector_rank"),
                                      (keyword_hits, keyword_score, "keyword_rank")):
        for rank, hit in enumerate(hits, start=1):
            entry = fused.setdefault(hit.id, {"hit": hit, "score": 0.0})
            entry["score"] += score_of(rank, hit.score, hits)
            entry[rank_field] = rank
    ranked = sorted(fused.values(), key=lambda e: (-e["score"], e["hit"].id))
    return [
        replace(e["hit"], score=round(e["score"], 6), vector_rank=e.get("vector_rank"),
                keyword_rank=e.get("keyword_rank"))
        for e in ranked
    ]
