"""How knowledge search's fusion settings do on labelled sets: candidates per ranking, the
vector ranking's weight, reciprocal-rank or min-max score fusion.

Each set is loaded once into a scratch schema (as `sightline kb eval` does, with its vector
cache), each question's vector and keyword rankings are fetched once at the deepest depth, and
every setting is scored from those lists in Python, so a grid of settings costs one pass over
the questions. Tune on some sets and keep one apart to check the choice:

    .venv/bin/python -m bench.fusion_tune --set bundled --set /tmp/lme --vectors /tmp/vectors \\
        [--embedder minilm|bge]

A set is `bundled` (fixtures/kb_eval) or a folder holding `corpus.jsonl` and `queries.jsonl`.
The last line is JSON: per set and setting, recall@5, recall@10 and MRR.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.context import database
from bench.kb_eval import EVAL_DIR, Query, SharedVectors, ingest_corpus, load, score
from memory.embeddings import DEFAULT_OFFLINE, OFFLINE_EMBEDDERS, offline_embedder
from memory.knowledge import RRF_K, KnowledgeBase, KnowledgeError

DEPTH = 50  # the deepest candidate list a setting may use


@dataclass(frozen=True)
class Setting:
    fusion: str  # "rrf" or "minmax"
    candidates: int
    vector_weight: float

    @property
    def label(self) -> str:
        return f"{self.fusion} c={self.candidates} w={self.vector_weight:.1f}"


GRID = [Setting(f, c, w) for f in ("rrf", "minmax") for c in (10, 20, 30, 50)
        for w in (0.3, 0.4, 0.5, 0.6, 0.7)]
Ranked = tuple[list[tuple[str, float]], list[tuple[str, float]]]  # (key, score) per ranking


def fuse(rankings: Ranked, setting: Setting) -> list[str]:
    """The fused order of chunk keys under `setting` (memory/knowledge.py's rules)."""
    totals: dict[str, float] = {}
    for hits, weight in zip(rankings, (setting.vector_weight, 1 - setting.vector_weight),
                            strict=True):
        hits = hits[:setting.candidates]
        if not hits:
            continue
        low, high = min(s for _, s in hits), max(s for _, s in hits)
        for rank, (key, value) in enumerate(hits, start=1):
            part = (1 / (RRF_K + rank) if setting.fusion == "rrf"
                    else (value - low) / (high - low) if high > low else 1.0)
            totals[key] = totals.get(key, 0.0) + weight * part
    return sorted(totals, key=lambda k: (-totals[k], k))


async def rankings_of(folder: Path, vectors: Path | None, embedder_name: str,
                      ) -> tuple[list[Ranked], list[tuple[str, ...]]]:
    chunks, queries = load(folder / "corpus.jsonl", folder / "queries.jsonl")
    embedder = SharedVectors(offline_embedder(embedder_name), vectors)
    with tempfile.TemporaryDirectory() as tmp:
        async with database(Path(tmp)) as db:
            return await _rankings(KnowledgeBase(db.pool, embedder), embedder, chunks, queries)


async def _rankings(kb: KnowledgeBase, embedder: SharedVectors, chunks: list[dict[str, Any]],
                    queries: list[Query]) -> tuple[list[Ranked], list[tuple[str, ...]]]:
    await ingest_corpus(kb, chunks)
    embedder.save()
    ranked = []
    for q in queries:
        vector_hits, keyword_hits = await kb.rankings(q.tenant, q.query, DEPTH)
        ranked.append(([(h.key, h.score) for h in vector_hits],
                       [(h.key, h.score) for h in keyword_hits]))
    return ranked, [q.relevant_ids for q in queries]


def evaluate(ranked: list[Ranked], relevant: list[tuple[str, ...]]) -> dict[str, dict[str, float]]:
    results = {}
    for setting in GRID:
        metrics = [score(fuse(r, setting), rel, [5, 10]) for r, rel in zip(ranked, relevant,
                                                                            strict=True)]
        results[setting.label] = {key: round(statistics.fmean(m[key] for m in metrics), 4)
                                  for key in ("recall@5", "recall@10", "mrr")}
    return results


async def run(sets: list[str], vectors: Path | None, embedder: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in sets:
        folder = EVAL_DIR if name == "bundled" else Path(name)
        ranked, relevant = await rankings_of(folder, vectors, embedder)
        out[name] = evaluate(ranked, relevant)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", required=True, dest="sets",
                        help="`bundled` or a folder with corpus.jsonl and queries.jsonl")
    parser.add_argument("--vectors", type=Path, metavar="DIR",
                        help="the vector cache folder `kb eval --vectors` uses")
    parser.add_argument("--embedder", choices=tuple(OFFLINE_EMBEDDERS), default=DEFAULT_OFFLINE)
    args = parser.parse_args(argv)
    try:
        results = asyncio.run(run(args.sets, args.vectors, args.embedder))
    except KnowledgeError as exc:
        print(exc, file=sys.stderr)
        return 2
    for name, table in results.items():
        print(f"{name}: setting, recall@5, recall@10, MRR")
        for label, m in table.items():
            print(f"  {label:<22} {m['recall@5']:.3f} {m['recall@10']:.3f} {m['mrr']:.3f}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
