"""`sightline kb ingest|search|list|delete|eval`: the tenant's knowledge base from the command line.

`kb eval` runs the evaluation harness in `bench/` (a source checkout, with the eval extra).
`kb ingest` exits 0 when every file was ingested, 1 when some were skipped (one line each on
stderr) and others ingested, 2 when none could be.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cli_common import (
    UserError,
    counted,
    identifier,
    key_value,
    non_blank,
    one_line,
    positive_int,
    query,
)
from .config import Settings

if TYPE_CHECKING:
    from memory.knowledge import Document, KnowledgeBase, SecretsSeen

LINE_SHOWN = 120  # characters of the line a secret was seen in, to find it by
FUSIONS = ("rrf", "weighted")  # memory.knowledge.FUSIONS, without importing it for --help


def add_parser(sub: argparse._SubParsersAction) -> None:
    kb = sub.add_parser("kb", help="the tenant's knowledge base: ingest, search, list and "
                        "delete documents")
    kb_sub = kb.add_subparsers(dest="kb_command", required=True)
    p = kb_sub.add_parser("ingest", help="load Markdown, HTML, PDF and text files or folders")
    p.add_argument("paths", nargs="+", type=_ingestible, help="files or folders to ingest")
    p.add_argument("--tenant", type=identifier,
                   required=True, help="the tenant whose knowledge base it is")
    p.add_argument("--meta", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="tag the documents (repeatable; replaces their earlier tags, which are "
                   "kept without --meta); search can filter on it. `type` is built in")
    p.add_argument("--hide-secrets", action="store_true",
                   help="store what looks like a password, key, token or card number with its "
                   "value hidden (default: as it is, with a note naming the document)")
    p = kb_sub.add_parser("search", help="hybrid (vector + keyword) search, scoped to a tenant")
    p.add_argument("query", type=query, help="the question or words to look for")
    p.add_argument("--tenant", type=identifier,
                   required=True, help="search this tenant's knowledge only")
    p.add_argument("--k", type=positive_int, default=5,
                   help="how many hits to print, best first (default 5)")
    p.add_argument("--fusion", choices=FUSIONS, default=None,
                   help="how the vector and keyword rankings are combined (default: the "
                        "embedder's, weighted for mpnet, rrf for the others)")
    p.add_argument("--where", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="only documents tagged so (repeatable; also type=pdf|md|html|txt)")
    p.add_argument("--json", action="store_true", help="the hits as JSON")
    p = kb_sub.add_parser("list", help="the tenant's documents: chunks, embedder, when "
                          "ingested, tags")
    p.add_argument("--tenant", type=identifier, required=True, help="this tenant's documents")
    p.add_argument("--json", action="store_true", help="the documents as JSON")
    p = kb_sub.add_parser("delete", help="delete documents (by the name `kb list` shows) and "
                          "their chunks")
    p.add_argument("sources", nargs="+", type=non_blank, metavar="SOURCE",
                   help="documents to delete")
    p.add_argument("--tenant", type=identifier, required=True,
                   help="the tenant whose documents they are")
    p = kb_sub.add_parser("eval", help="recall@k, MRR and latency on a labelled corpus, with "
                          "keyword, vector and LlamaIndex references")
    p.add_argument("--corpus", type=Path,
                   help='JSONL of {"id", "text", "tenant"} (default: the bundled set)')
    p.add_argument("--queries", type=Path,
                   help='JSONL of {"query", "relevant_ids", "tenant"} (default: the bundled set)')
    p.add_argument("--k", type=_ks, default=[1, 5, 10, 20], help="comma-separated, e.g. 1,5,10")
    p.add_argument("--embedder", choices=("minilm", "bge", "mpnet", "wordllama"),
                   default="minilm",
                   help="the offline embedder for every system (default: minilm)")
    p.add_argument("--vectors", type=Path, metavar="DIR",
                   help="keep the corpus's vectors in DIR between runs (a large set embeds once)")
    p.add_argument("--json", action="store_true", help="only the JSON summary line")


def _ingestible(raw: str) -> Path:
    """A file or folder to ingest. Anything else that is there (a named pipe, a socket, a
    device) is refused as what it is not: reading a pipe would wait for a writer that may
    never come."""
    path = Path(raw)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:  # the ingest says so
        return path
    except OSError as exc:  # a name too long, a folder not searchable, a loop of links
        raise argparse.ArgumentTypeError(f"{raw!r} cannot be read: {exc.strerror}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a regular file or folder")
    return path


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
    from memory import knowledge
    from memory.db import Database
    from memory.store import Store

    from .command_ledger import CommandLedger
    from .components import embedder_on_use, make_embedder, make_reranker

    evaluate = _eval_harness() if args.kb_command == "eval" else None
    db = await Database.open(settings.database_url, settings.data_dir)
    try:
        if evaluate is not None:
            return await evaluate(db.url, args)
        if args.kb_command == "list":
            return _list(await knowledge.documents(db.pool, args.tenant), args)
        if args.kb_command == "delete":
            for source in await knowledge.delete_documents(db.pool, args.tenant, args.sources):
                print(f"deleted: {one_line(source)}")
            return 0
        stored = await knowledge.stored_models(db.pool, args.tenant)
        # Gemini embeddings and the reranker are billed: the tenant's spend, with no session
        ledger, meter = CommandLedger.metered(settings, args.tenant, f"kb {args.kb_command}")
        # documents unchanged since their last ingest need no model; a command embeds with
        # the machine's cores
        embedder = (embedder_on_use(settings, stored, threads=len(os.sched_getaffinity(0)),
                                    record=meter.embedding_call)
                    if args.kb_command == "ingest"
                    else make_embedder(settings, stored, record=meter.embedding_call))
        reranker = (make_reranker(settings, record=meter.rerank_call)
                    if args.kb_command == "search" else None)
        async with ledger.saving(Store(db.pool)):
            try:
                kb = knowledge.KnowledgeBase(db.pool, embedder, reranker)
                if args.kb_command == "ingest":
                    return await _ingest(kb, args)
                return await _search(kb, args)
            finally:
                await embedder.aclose()
                if reranker is not None:
                    await reranker.aclose()
    finally:
        await db.close()


def _eval_harness() -> Any:
    try:
        from bench.kb_eval import EVAL_DIR, format_table, run_eval
    except ImportError as exc:
        raise UserError(f"`sightline kb eval` runs from a source checkout with the eval "
                        f"dependencies (`make install` there): {exc}") from None

    async def evaluate(url: str, args: argparse.Namespace) -> int:
        from memory.embeddings import offline_embedder

        # an offline embedder: the references are built on the same vectors
        result = await run_eval(url, args.corpus or EVAL_DIR / "corpus.jsonl",
                                args.queries or EVAL_DIR / "queries.jsonl", args.k,
                                offline_embedder(args.embedder), args.vectors)
        if not args.json:
            print(format_table(result))
        print(json.dumps({"queries": result["queries"], "chunks": result["chunks"],
                          "systems": result["systems"]}))
        return 0
    return evaluate


async def _ingest(kb: KnowledgeBase, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    def progress(done: float, total: float) -> None:
        bar.total = total
        bar.update(done - bar.n)

    # disable=None: no bar, and none of its carriage returns, when stderr is not a terminal
    with tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=f"ingest ({args.tenant})",
              disable=None) as bar:
        report = await kb.ingest(args.paths, args.tenant, progress=progress,
                                 metadata=dict(args.meta) if args.meta else None,
                                 secrets_hidden=args.hide_secrets)
    print(f"{counted(report.documents, 'document')}: "
          f"{counted(report.embedded, 'chunk')} embedded "
          f"({kb.embedder.name}), {report.kept} unchanged, {report.deleted} deleted")
    if report.overlapping:  # `docs docs/sub`: one document each, not one per argument
        print(f"{counted(report.overlapping, 'file')} reached through more than one argument: "
              "ingested once, named from the outermost")
    for source in report.removed_documents:
        print(f"removed (no longer in its folder): {one_line(source)}")
    for seen in report.secrets:
        print(secrets_note(seen, f"tenant {args.tenant}", " (or ingest it with --hide-secrets)"))
    for problem in report.skipped:
        print(f"skipped: {one_line(problem)}", file=sys.stderr)
    if not report.skipped:
        return 0
    return 1 if report.documents else 2


def secrets_note(seen: SecretsSeen, whose: str, remedy: str = "") -> str:
    """One line naming a document ingested with what looks like a secret in it, and where;
    stored as it is, who may hear it (`whose`: "tenant acme") and what to do (`remedy`
    added to taking it out of the file)."""
    page = f" (page {seen.page})" if seen.page is not None else ""
    what = (f"note: {seen.source} holds what looks like a secret ({_kinds(seen.kinds)}), "
            f"first{page} in \"{seen.first.strip()[:LINE_SHOWN]}\"")
    if seen.hidden:
        return one_line(f"{what}: stored with each hidden")
    return one_line(f"{what}: ingested as it is, so the agent may read it to any user of "
                    f"{whose}; if they should not see it, take it out of the file and ingest it "
                    f"again{remedy}")


async def _search(kb: KnowledgeBase, args: argparse.Namespace) -> int:
    hits = await kb.search(args.tenant, args.query, args.k, fusion=args.fusion,
                           where=dict(args.where))
    if args.json:
        print(json.dumps([asdict(h) for h in hits], indent=2, default=str))
        return 0
    if not hits:
        print(f"No knowledge for tenant {args.tenant} matches.")
    for rank, hit in enumerate(hits, start=1):
        ranks = f"vector #{hit.vector_rank or '-'}, keyword #{hit.keyword_rank or '-'}"
        page = f", page {hit.page}" if hit.page is not None else ""
        print(f"{rank}. {one_line(hit.source)}{page}  (score {hit.score:.4f}; {ranks})")
        print("   " + one_line(" ".join(hit.text.split())[:300]))
    return 0


def _list(documents: list[Document], args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps([asdict(d) for d in documents], indent=2, default=str))
        return 0
    if not documents:
        print(f"No documents in tenant {args.tenant}'s knowledge base.")
    for doc in documents:
        tags = " ".join(f"{k}={v}" for k, v in sorted(doc.metadata.items()))
        print(one_line(f"{doc.source}  {counted(doc.chunks, 'chunk')}  "
                       f"{', '.join(doc.embedders) or '-'}  "
                       f"{doc.ingested_at:%Y-%m-%d %H:%M %Z}  {tags}{_secrets_held(doc)}"))
    return 0


def _secrets_held(doc: Document) -> str:
    """What looks like a secret in a listed document, and how it is stored: what ops look for
    after the ingest's notes have scrolled away (nothing when it holds none)."""
    if doc.secrets is None:
        return "  not read for secrets yet (`sightline kb ingest` it again)"
    if not doc.secrets:
        return ""
    how = "stored hidden" if doc.secrets_hidden else "stored as it is"
    return f"  holds {_kinds(doc.secrets)}: {how}"


def _kinds(counts: dict[str, int]) -> str:
    """How many secrets of each kind: "1 assigned secret, 2 passwords"."""
    return ", ".join(counted(n, kind) for kind, n in sorted(counts.items()))
