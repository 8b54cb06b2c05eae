"""`sightline kb ingest|search|eval`: the tenant's knowledge base from the command line.

`kb eval` runs the evaluation harness in `bench/` (a source checkout, with the eval extra).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cli_common import UserError, identifier, key_value
from .config import Settings

if TYPE_CHECKING:
    from memory.knowledge import KnowledgeBase

FUSIONS = ("rrf", "weighted")  # memory.knowledge.FUSIONS, without importing it for --help


def add_parser(sub: argparse._SubParsersAction) -> None:
    kb = sub.add_parser("kb", help="the tenant's knowledge base: ingest documents, search them")
    kb_sub = kb.add_subparsers(dest="kb_command", required=True)
    p = kb_sub.add_parser("ingest", help="load Markdown, HTML, PDF and text files or folders")
    p.add_argument("paths", nargs="+", type=Path, help="files or folders to ingest")
    p.add_argument("--tenant", type=identifier,
                   required=True, help="the tenant whose knowledge base it is")
    p.add_argument("--meta", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="tag the documents (repeatable); search can filter on it")
    p = kb_sub.add_parser("search", help="hybrid (vector + keyword) search, scoped to a tenant")
    p.add_argument("query", help="the question or words to look for")
    p.add_argument("--tenant", type=identifier,
                   required=True, help="search this tenant's knowledge only")
    p.add_argument("--k", type=int, default=5, help="how many hits (default 5)")
    p.add_argument("--fusion", choices=FUSIONS, default="rrf",
                   help="how the vector and keyword rankings are combined (default rrf)")
    p.add_argument("--where", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="only documents tagged so (repeatable; also type=pdf|md|html|txt)")
    p.add_argument("--json", action="store_true", help="the hits as JSON")
    p = kb_sub.add_parser("eval", help="recall@k, MRR and latency on a labelled corpus, with "
                          "keyword, vector and LlamaIndex references")
    p.add_argument("--corpus", type=Path,
                   help='JSONL of {"id", "text", "tenant"} (default: the bundled set)')
    p.add_argument("--queries", type=Path,
                   help='JSONL of {"query", "relevant_ids", "tenant"} (default: the bundled set)')
    p.add_argument("--k", type=_ks, default=[1, 5, 10, 20], help="comma-separated, e.g. 1,5,10")
    p.add_argument("--json", action="store_true", help="only the JSON summary line")


def _ks(raw: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in raw.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be whole numbers like 1,5,10, got {raw!r}") from None
    if ks[0] <= 0:
        raise argparse.ArgumentTypeError("every k must be > 0")
    return ks


async def run(settings: Settings, args: argparse.Namespace) -> int:
    from memory.db import Database
    from memory.knowledge import KnowledgeBase

    from .components import make_embedder, make_reranker

    evaluate = _eval_harness() if args.kb_command == "eval" else None
    embedder = make_embedder(settings)
    reranker = make_reranker(settings) if args.kb_command == "search" else None
    db = await Database.open(settings.database_url, settings.data_dir)
    try:
        kb = KnowledgeBase(db.pool, embedder, reranker)
        if evaluate is not None:
            return await evaluate(db.url, args)
        if args.kb_command == "ingest":
            return await _ingest(kb, args)
        return await _search(kb, args)
    finally:
        await embedder.aclose()
        if reranker is not None:
            await reranker.aclose()
        await db.close()


def _eval_harness() -> Any:
    try:
        from bench.kb_eval import EVAL_DIR, format_table, run_eval
    except ImportError as exc:
        raise UserError(f"`sightline kb eval` runs from a source checkout with the eval "
                        f"dependencies (`make install` there): {exc}") from None

    async def evaluate(url: str, args: argparse.Namespace) -> int:
        # the offline embedder: the references are built on the same vectors
        result = await run_eval(url, args.corpus or EVAL_DIR / "corpus.jsonl",
                                args.queries or EVAL_DIR / "queries.jsonl", args.k)
        if not args.json:
            print(format_table(result))
        print(json.dumps({"queries": result["queries"], "chunks": result["chunks"],
                          "systems": result["systems"]}))
        return 0
    return evaluate


async def _ingest(kb: KnowledgeBase, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    with tqdm(unit="file", desc=f"ingest ({args.tenant})") as bar:
        report = await kb.ingest(args.paths, args.tenant, progress=progress,
                                 metadata=dict(args.meta))
    print(f"{report.documents} documents: {report.embedded} chunks embedded "
          f"({kb.embedder.name}), {report.kept} unchanged, {report.deleted} deleted")
    for source in report.removed_documents:
        print(f"removed (no longer in its folder): {source}")
    for problem in report.skipped:
        print(f"skipped: {problem}")
    return 1 if report.skipped and not report.documents else 0


async def _search(kb: KnowledgeBase, args: argparse.Namespace) -> int:
    if args.k <= 0:
        raise UserError("--k must be > 0")
    hits = await kb.search(args.tenant, args.query, args.k, fusion=args.fusion,
                           where=dict(args.where))
    if args.json:
        print(json.dumps([asdict(h) for h in hits], indent=2))
        return 0
    if not hits:
        print(f"No knowledge for tenant {args.tenant} matches.")
    for rank, hit in enumerate(hits, start=1):
        ranks = f"vector #{hit.vector_rank or '-'}, keyword #{hit.keyword_rank or '-'}"
        print(f"{rank}. {hit.source}  (score {hit.score:.4f}; {ranks})")
        print("   " + " ".join(hit.text.split())[:300])
    return 0
