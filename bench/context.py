"""Per-turn context assembly: what one user question costs before the model is called, ours
against LlamaIndex's stock components, on the same data in the same run.

Data (deterministic, seeded): docstrings parsed (never imported) from the standard library's
source, then from the installed packages' source, file by file in sorted order, cut at sentence
ends into chunks of 60-200 words (within one file) until there are `--chunks` of them;
`--turns` earlier messages of one user, counted as messages: half questions ("How do I use
json.dumps?"), half answers (the first two sentences of that docstring); `--facts` facts (one
per module the user "uses") and one summary. Another tenant holds copies of `--other-chunks`
of the chunks, a fifth of the messages and five facts of the same user id, so every tenant
filter has rows to skip. Questions: three in four are a prose sentence of the chunks with about
a quarter of its words dropped, in a frame ("Can you explain ...?"); one in four asks about an
earlier message ("What did you tell me earlier about json.dumps?").

- ours: `TurnRecall` (memory/recall.py) on an embedded Postgres (or a scratch database on
  `DATABASE_URL`, dropped afterwards), loaded through `KnowledgeBase.ingest_chunks` (which
  creates the HNSW index first), `store_messages` and `UserMemory.apply`, then VACUUM ANALYZEd
  (as autovacuum would leave it). A turn is `await recall(question)`: the existence probes (on
  the first turn only: as in a session, a part found to hold something is not probed again),
  then, at once, one query embedding (in a thread), the knowledge lookup (BM25 keyword ranking
  while the question is embedded, then the HNSW vector ranking, RRF, the top 3 that share a
  word; no reranker, as without a Cohere key: one would add a network round trip) and the memory
  recall (summary and keyword search while it is embedded, then the 8 facts nearest the question
  and the nearest messages in one statement, 3 earlier messages fused), on two pooled
  connections; then the text `TurnContext` makes of it (`memory_part`, `knowledge_part`).
- reference: `QueryFusionRetriever` (a `VectorStoreIndex` retriever with the same embeddings and
  a `BM25Retriever`, reciprocal rerank, top 3, `MockLLM`, one query: memory/kb_eval.py) over
  this tenant's chunks, and `llama_index.core.memory.Memory` with a `StaticMemoryBlock` (the
  summary), a `FactExtractionMemoryBlock` whose facts are pre-set (reading them calls no LLM)
  and a `VectorMemoryBlock` (top 3) holding the earlier messages. A turn is
  `retriever.aretrieve(question)` and `memory.aget(input=question)`, gathered; `aget` reads the
  (empty) short-term queue from its default SQLite chat store, queries the vector block with
  the question, counts tokens and renders the blocks into a system message.

Where the work differs: the reference keeps everything in process memory (no database round
trips; brute-force vector scans in Python), and scopes by tenant by having one index per
tenant; it embeds the question twice (retriever and vector block), returns all facts rather
than the nearest 8, and keeps a retrieved message or chunk that shares no word with the
question. The messages go into the vector block one node each (`aput` per message, as ours are
one row each); letting `Memory` flush them from its short-term queue would make one node per
flushed batch. SimpleVectorStore returns no text, which `VectorMemoryBlock` needs, so the block
gets a SimpleVectorStore that also keeps its nodes (`TextSimpleVectorStore`).

Loading is not timed. After `--warmup` questions through both, each question is timed through
both, the order alternating so that both share the machine's noise.

    .venv/bin/python -m bench.context [--queries 200] [--chunks 10000] [--turns 1000] \\
        [--vectors DIR]

Verdict (`TARGETS`): ours at most 20 ms p95 per turn (the target the README holds every run
to: Long-term memory, Speed) and faster than the reference at p95 in the same run (`ratio` > 1);
a miss is a `target missed:` line and exit status 1 (with `--embedder mpnet`, or on a CPU
without int8 dot products, the README records the 20 ms target missed: so does this).

The last line is JSON: {"p95_ms", "reference_p95_ms", "ratio" (reference p95 / ours), "p50_ms",
"reference_p50_ms", "chunks", "turns", "facts", "queries", "targets_met", "missed"}.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import logging
import os
import random
import re
import sys
import sysconfig
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import numpy as np
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.llms import ChatMessage, MockLLM, TextBlock
from llama_index.core.memory import (
    FactExtractionMemoryBlock,
    Memory,
    StaticMemoryBlock,
    VectorMemoryBlock,
)
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores import SimpleVectorStore
from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryResult

from agent.cli_common import INT_MAX, in_range, positive_int
from agent.turn_context import knowledge_part, memory_part
from bench.kb_eval import SharedVectors, llamaindex_embedding, llamaindex_fusion
from bench.verdict import Target, exit_status, fail_setting, parser, verdict
from memory.conversation import store_messages
from memory.db import Database
from memory.embeddings import DEFAULT_OFFLINE, OFFLINE_EMBEDDERS, LocalEmbedder, offline_embedder
from memory.knowledge import KnowledgeBase
from memory.recall import Recalled, TurnRecall
from memory.store import Store
from memory.user_memory import TURNS_PER_TURN, UserMemory
from vision.ranges import Range

REPO = Path(__file__).resolve().parent.parent

TENANT, OTHER, USER = "bench", "bench-other", "bench-user"
TOP_K = 3  # knowledge hits per turn, as `KnowledgeBase.lookup` gives
BATCH = 500  # chunks per ingest_chunks call (one document each)
SKIPPED_DIRS = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages"}
MAX_PIECE = 140  # words of a run-on sentence per piece, so a chunk stays under 200
QUESTIONS = ("How do I deal with this: {}?", "Can you explain {}?", "What does it mean that {}?",
             "Help me understand {}.")
Turn = Callable[[str], Awaitable[Any]]  # one question's context assembly
ASKED = ("How do I use {}?", "What does {} do?", "When should I call {}?", "Is {} what I need?")
SUMMARY_MODULES = 8  # modules the summary names
TARGETS: dict[str, Target] = {
    "p95_ms": ("<=", 20.0),  # a turn's whole lookup (README: Long-term memory, Speed)
    "ratio": (">", 1.0),  # LlamaIndex's p95 / ours: the reference beaten in the same run
}


@dataclass(frozen=True)
class Doc:
    module: str  # dotted, from the file's path
    name: str  # module, module.Class or module.function
    text: str


@dataclass(frozen=True)
class Data:
    chunks: list[tuple[str, str]]  # (key, text)
    messages: list[dict[str, str]]  # {"user_id", "role", "content"}, oldest first
    facts: list[tuple[str, str]]  # (key, text)
    summary: str
    questions: list[str]


def docstrings() -> Iterator[Doc]:
    """Docstrings of the standard library's source, then of the installed packages' (parsed,
    never imported, so nothing runs), file by file in sorted order."""
    paths = sysconfig.get_paths()
    for root in (Path(paths["stdlib"]), Path(paths["purelib"])):
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).parts
            if SKIPPED_DIRS & set(parts[:-1]):
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # invalid escapes in old sources
                    tree = ast.parse(path.read_bytes())
            except (SyntaxError, ValueError):
                continue
            module = ".".join(parts).removesuffix(".py").removesuffix(".__init__")
            for node in definitions(tree):
                text = ast.get_docstring(node)
                if text and text.isascii():
                    name = getattr(node, "name", None)
                    yield Doc(module, f"{module}.{name}" if name else module, text)


def definitions(
    node: ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef,
) -> Iterator[ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef]:
    """The node and the classes and functions defined directly in its body, recursively, in
    source order (`ast.walk` would visit every expression too: three times slower)."""
    yield node
    for child in node.body:
        if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            yield from definitions(child)


def sentences(text: str) -> list[str]:
    """The text's sentences, whitespace collapsed; a run-on one is cut into pieces of at most
    `MAX_PIECE` words."""
    out = []
    for sentence in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
        words = sentence.split()
        out += [" ".join(words[i:i + MAX_PIECE]) for i in range(0, len(words), MAX_PIECE)]
    return out


def is_prose(sentence: str) -> bool:
    """A sentence of 6-40 words, nearly all plain words (not code, markup or a doctest)."""
    words = sentence.split()
    plain = sum(1 for w in words if re.fullmatch(r"[A-Za-z][a-z'-]*[,;.?!]?", w))
    return 6 <= len(words) <= 40 and plain >= 0.8 * len(words)


def chunked(docs: Iterable[Doc], rng: random.Random) -> Iterator[str]:
    """Chunks of the sentences of each file's docstrings, in order: cut at a random 60-160
    words, never over 200; a file's leftover under 60 words is dropped."""
    pending: list[str] = []
    module, size, target = "", 0, rng.randint(60, 160)
    for doc in docs:
        if doc.module != module:
            if size >= 60:
                yield " ".join(pending)
            pending, size, module = [], 0, doc.module
        for sentence in sentences(doc.text):
            words = len(sentence.split())
            if size + words > 200 and size >= 60:
                yield " ".join(pending)
                pending, size = [], 0
            pending.append(sentence)
            size += words
            if size >= target:
                yield " ".join(pending)
                pending, size, target = [], 0, rng.randint(60, 160)


def build_data(chunk_count: int, turns: int, fact_count: int, questions: int,
               rng: random.Random) -> Data:
    docs: list[Doc] = []  # every docstring read on the way to `chunk_count` chunks

    def reading() -> Iterator[Doc]:
        for doc in docstrings():
            docs.append(doc)
            yield doc
    chunks = [(f"chunk-{i}", text)
              for i, text in enumerate(islice(chunked(reading(), rng), chunk_count))]
    public = [d for d in docs if not any(p.startswith("_") for p in d.name.split("."))]
    described = [d for d in public if "." in d.name and 10 <= len(d.text.split()) <= 150]
    modules = list({d.name: d for d in public if d.name == d.module}.values())
    if len(described) < turns // 2 or len(modules) < max(fact_count, SUMMARY_MODULES):
        # said before the load, not as random.sample's traceback
        fail_setting("bench.context", (
            f"--chunks {chunk_count} reads {len(described)} documented names and "
            f"{len(modules)} modules: too few for --turns {turns} ({turns // 2} questions) "
            f"and --facts {fact_count} (and the summary's {SUMMARY_MODULES}); give more "
            "--chunks or fewer --turns / --facts"))
    messages, topics = [], []
    for doc in rng.sample(described, turns // 2):
        topics.append(".".join(doc.name.split(".")[-2:]))
        messages += [
            {"user_id": USER, "role": "user", "content": rng.choice(ASKED).format(topics[-1])},
            {"user_id": USER, "role": "assistant",
             "content": " ".join(sentences(doc.text)[:2])},
        ]
    facts = [(f"uses-{d.name}", f"The user's project uses {d.name}: {sentences(d.text)[0]}")
             for d in rng.sample(modules, fact_count)]
    summary = ("In earlier sessions the user asked about "
               + ", ".join(d.name for d in rng.sample(modules, SUMMARY_MODULES))
               + "; they want short answers with one code example, and they test on Linux.")
    prose = [s for _, text in chunks for s in sentences(text) if is_prose(s)]
    return Data(chunks, messages, facts, summary,
                [_question(prose, topics, i, rng) for i in range(questions)])


def _question(prose: list[str], topics: list[str], index: int, rng: random.Random) -> str:
    """A question in words of its own: a sentence of the chunks with about a quarter of its
    words dropped, or, one in four, about something the user asked before."""
    if index % 4 == 3:
        return f"What did you tell me earlier about {rng.choice(topics)}?"
    words = [w for w in rng.choice(prose).rstrip(".!?").split() if rng.random() > 0.25]
    return rng.choice(QUESTIONS).format(" ".join(words)[:1].lower() + " ".join(words)[1:])


class TextSimpleVectorStore(SimpleVectorStore):
    """SimpleVectorStore that keeps its nodes too: `VectorMemoryBlock` needs the text back, and
    SimpleVectorStore alone returns only ids (an index keeps the text in its docstore)."""

    stores_text: bool = True
    _nodes: dict[str, BaseNode] = PrivateAttr(default_factory=dict)

    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        self._nodes.update((node.node_id, node) for node in nodes)
        return super().add(nodes, **add_kwargs)

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        result = super().query(query, **kwargs)
        result.nodes = [self._nodes[i] for i in result.ids or []]
        return result


@asynccontextmanager
async def database(data_dir: Path) -> AsyncIterator[Database]:
    """An embedded Postgres under `data_dir`, or a scratch database on `DATABASE_URL`."""
    url = os.environ.get("DATABASE_URL")
    if url is None:
        db = await Database.open(None, data_dir)
        try:
            yield db
        finally:
            await db.close()
        return
    name = f"sightline_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        db = await Database.open(urlsplit(url)._replace(path=f"/{name}").geturl(), data_dir)
        try:
            yield db
        finally:
            await db.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def load_ours(db: Database, embedder: LocalEmbedder, data: Data,
                    other_chunks: int) -> TurnRecall:
    kb, memory, store = KnowledgeBase(db.pool, embedder), UserMemory(db.pool, embedder), \
        Store(db.pool)
    for tenant, chunks in ((TENANT, data.chunks), (OTHER, data.chunks[:other_chunks])):
        for start in range(0, len(chunks), BATCH):
            await kb.ingest_chunks(tenant, f"{tenant}-{start // BATCH}",
                                   chunks[start:start + BATCH])
        messages = data.messages if tenant == TENANT else data.messages[:len(data.messages) // 5]
        session = f"{tenant}-session"
        await store.start_session(session, tenant=tenant, user_id=USER, room=None,
                                  source="replay", provider="gemini", model="m")
        await store_messages(store, embedder, session, tenant, messages)
        facts = data.facts if tenant == TENANT else data.facts[:5]
        await memory.apply([
            *({"op": "fact", "tenant": tenant, "user_id": USER, "session_id": session,
               "key": key, "text": text} for key, text in facts),
            {"op": "summary", "tenant": tenant, "user_id": USER, "session_id": session,
             "text": data.summary},
        ])
    # every table, the BM25 statistics and postings too, as autovacuum leaves them: left to
    # it, it vacuums and analyses them a minute after the load, in the middle of the timed
    # questions (seen: half of them planned without the postings' statistics, then its own
    # work on the shared cores), so the run would time two states and the switch between them
    await db.pool.execute("VACUUM ANALYZE", timeout=600)
    return TurnRecall(kb, memory, tenant=TENANT, user_id=USER,
                      before_id=await store.next_message_id())


async def load_reference(embedder: LocalEmbedder, data: Data) -> Turn:
    retrieve = llamaindex_fusion([{"id": key, "text": text, "tenant": TENANT}
                                  for key, text in data.chunks], embedder, TOP_K)
    messages = VectorMemoryBlock(
        name="earlier_messages", vector_store=TextSimpleVectorStore(),
        embed_model=llamaindex_embedding(embedder), similarity_top_k=TURNS_PER_TURN, priority=2)
    memory = Memory.from_defaults(
        session_id=f"{TENANT}-session", token_limit=30000,  # nothing gets truncated
        memory_blocks=[
            StaticMemoryBlock(name="summary", static_content=data.summary, priority=0),
            FactExtractionMemoryBlock(name="facts", llm=MockLLM(),
                                      facts=[text for _, text in data.facts], priority=1),
            messages,
        ])
    for message in data.messages:
        await messages.aput([ChatMessage(role=message["role"], content=message["content"])],
                            session_id=memory.session_id)

    async def turn(question: str) -> tuple[list[str], list[ChatMessage]]:
        ids, context = await asyncio.gather(retrieve(TENANT, question, TOP_K),
                                            memory.aget(input=question))
        return ids, context
    return turn


async def measure(
    systems: dict[str, Turn], questions: list[str], warmup: int,
) -> dict[str, tuple[list[float], list[Any]]]:
    """Per system, ms and result per question: each question through every system in turn,
    the order reversed on every other question; the first `warmup` questions are not kept."""
    for question in questions[:warmup]:
        for turn in systems.values():
            await turn(question)
    measured: dict[str, tuple[list[float], list[Any]]] = {name: ([], []) for name in systems}
    for index, question in enumerate(questions[warmup:]):
        for name in list(systems)[::1 if index % 2 == 0 else -1]:
            began = time.perf_counter()
            result = await systems[name](question)
            measured[name][0].append((time.perf_counter() - began) * 1000)
            measured[name][1].append(result)
    return measured


def percentiles(values: list[float]) -> tuple[float, float]:
    return (round(float(np.percentile(values, 50)), 2),
            round(float(np.percentile(values, 95)), 2))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    data = build_data(args.chunks, args.turns, args.facts, args.warmup + args.queries,
                      random.Random(args.seed))
    print(f"data: {len(data.chunks)} chunks, {len(data.messages)} messages, "
          f"{len(data.facts)} facts in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    embedder = SharedVectors(offline_embedder(args.embedder), args.vectors)
    with tempfile.TemporaryDirectory() as tmp:
        async with database(Path(tmp)) as db:
            started = time.perf_counter()
            recall = await load_ours(db, embedder, data, args.other_chunks)
            embedder.save()
            print(f"ours loaded in {time.perf_counter() - started:.1f}s", file=sys.stderr)
            started = time.perf_counter()
            reference = await load_reference(embedder, data)
            print(f"reference loaded in {time.perf_counter() - started:.1f}s", file=sys.stderr)

            async def ours(question: str) -> tuple[Recalled, str]:
                """Recall, then the text `TurnContext` attaches to the user's message."""
                recalled = await recall(question)
                return recalled, "".join([
                    *([memory_part(recalled.memory)] if recalled.memory else []),
                    *([knowledge_part(recalled.knowledge)] if recalled.knowledge else [])])

            measured = await measure({"ours": ours, "llamaindex": reference}, data.questions,
                                     args.warmup)
    return report(measured, data, args, embedder.name)


def report(measured: dict[str, tuple[list[float], list[Any]]], data: Data,
           args: argparse.Namespace, embeddings: str) -> dict[str, Any]:
    """Print the table and the verdict; return the summary. Ours finding next to nothing fails
    the run (an empty lookup is fast and worthless)."""
    ours: list[tuple[Recalled, str]] = measured["ours"][1]
    theirs: list[tuple[list[str], list[ChatMessage]]] = measured["llamaindex"][1]
    recalled = [r for r, _ in ours]
    with_knowledge = sum(1 for r in recalled if r.knowledge)
    problems: list[str] = []
    if with_knowledge < len(recalled) / 2 or not any(r.memory.turns for r in recalled):
        problems.append(
            f"ours found knowledge for {with_knowledge} of {len(recalled)} questions and "
            f"{sum(len(r.memory.turns) for r in recalled)} earlier messages: an empty lookup "
            "is not worth timing")
    texts = dict(data.chunks)
    rendered = ["".join(b.text for m in context if m.role == "system" for b in m.blocks
                        if isinstance(b, TextBlock)) for _, context in theirs]
    counts = {
        "ours": [[len(r.knowledge) for r in recalled], [len(r.memory.facts) for r in recalled],
                 [len(r.memory.turns) for r in recalled], [len(text) for _, text in ours]],
        "llamaindex": [[len(ids) for ids, _ in theirs], [t.count("<fact>") for t in rendered],
                       [t.count("<message role=") for t in rendered],
                       [len(t) + sum(len(texts[i]) for i in ids)
                        for t, (ids, _) in zip(rendered, theirs, strict=True)]],
    }
    print(f"{args.queries} questions; {len(data.chunks)} chunks (+{args.other_chunks} of another "
          f"tenant), {len(data.messages)} earlier messages, {len(data.facts)} facts, a summary; "
          f"embeddings: {embeddings}")
    print(f"{'system':<12}{'p50_ms':>9}{'p95_ms':>9}{'chunks':>9}{'facts':>8}{'messages':>10}"
          f"{'chars':>8}   (means per turn)")
    p50s, p95s = {}, {}
    for name, (ms, _) in measured.items():
        p50s[name], p95s[name] = percentiles(ms)
        hits, facts, turns, chars = (float(np.mean(c)) for c in counts[name])
        print(f"{name:<12}{p50s[name]:>9.2f}{p95s[name]:>9.2f}{hits:>9.2f}{facts:>8.2f}"
              f"{turns:>10.2f}{chars:>8.0f}")
    ratio = round(p95s["llamaindex"] / p95s["ours"], 2)
    print(f"reference p95 / ours p95 = {ratio:.2f}x (chars: of context for the model; ours as "
          "formatted, the reference's memory as rendered plus its chunks' text)")
    figures: dict[str, Any] = {
        "p95_ms": p95s["ours"], "reference_p95_ms": p95s["llamaindex"], "ratio": ratio,
        "p50_ms": p50s["ours"], "reference_p50_ms": p50s["llamaindex"],
        "chunks": len(data.chunks), "turns": len(data.messages), "facts": len(data.facts),
        "queries": args.queries}
    return figures | verdict(figures, TARGETS, problems)


def main() -> int:
    cli = parser("bench.context", __doc__)
    cli.add_argument("--queries", type=positive_int, default=200)
    cli.add_argument("--chunks", type=positive_int, default=10000)
    cli.add_argument("--turns", type=in_range(Range(int, 2, INT_MAX)), default=1000,
                     help="earlier messages of the user, half questions and half answers")
    cli.add_argument("--facts", type=positive_int, default=30)
    cli.add_argument("--embedder", choices=tuple(OFFLINE_EMBEDDERS), default=DEFAULT_OFFLINE,
                     help="the offline embedder, for both systems")
    cli.add_argument("--other-chunks", type=in_range(Range(int, 0, INT_MAX)), default=2000,
                     help="chunks copied to another tenant, which every query must skip")
    cli.add_argument("--warmup", type=in_range(Range(int, 0, INT_MAX)), default=5)
    cli.add_argument("--vectors", type=Path, metavar="DIR",
                     help="keep the data's vectors in DIR between runs (embedded once)")
    cli.add_argument("--seed", type=int, default=7)
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # wordllama's import logs all INFO
    result = asyncio.run(run(cli.parse_args()))
    print(json.dumps(result))
    return exit_status(result)


if __name__ == "__main__":
    sys.exit(main())
