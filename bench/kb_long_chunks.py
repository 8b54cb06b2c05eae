"""A `sightline kb eval` set with chunks as long as the ones `sightline kb ingest` makes, from one
with short chunks (the bundled set's are docstrings, most under 200 word pieces, so they never
reach the end of MiniLM's 256-piece window and cannot show whether a chunk is embedded whole).

Consecutive chunks of one tenant, in the corpus's order, are joined (a blank line between them)
while the joined text stays within `CHUNK_TOKENS` tokens of the splitter's tokenizer (the size
`kb ingest` cuts at, memory/knowledge.py). A joined chunk is relevant to a question when one of
its parts was, so many answers end up past the first 256 word pieces of their chunk.

    .venv/bin/python -m bench.kb_long_chunks [--from fixtures/kb_eval] /tmp/kb-long
    .venv/bin/sightline kb eval --corpus /tmp/kb-long/corpus.jsonl \\
        --queries /tmp/kb-long/queries.jsonl

The last line is JSON: {"chunks", "joined_from", "queries", "tokens_mean"}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.kb_eval import read_jsonl
from memory.knowledge import CHUNK_TOKENS, KnowledgeError

BUNDLED = Path(__file__).resolve().parent.parent / "fixtures" / "kb_eval"


def join_chunks(corpus: list[dict[str, Any]], size: int, count: Any,
                ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The joined chunks, and which joined chunk each original id went into."""
    joined: list[dict[str, Any]] = []
    into: dict[str, str] = {}
    current: dict[str, Any] | None = None
    for chunk in corpus:
        text = f"{current['text']}\n\n{chunk['text']}" if current else chunk["text"]
        tokens = count(text)
        if current is None or current["tenant"] != chunk["tenant"] or tokens > size:
            text, tokens = chunk["text"], count(chunk["text"])
            current = {"id": f"joined-{len(joined)}", "tenant": chunk["tenant"]}
            joined.append(current)
        current.update(text=text, tokens=tokens)
        into[chunk["id"]] = current["id"]
    return joined, into


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--from", dest="source", type=Path, default=BUNDLED,
                        help="a kb eval set's folder (corpus.jsonl, queries.jsonl)")
    args = parser.parse_args(argv)
    from llama_index.core.utils import get_tokenizer  # the splitter's default tokenizer

    tokenize = get_tokenizer()
    try:
        corpus = read_jsonl(args.source / "corpus.jsonl", ("id", "text", "tenant"))
        queries = read_jsonl(args.source / "queries.jsonl", ("query", "relevant_ids", "tenant"))
    except KnowledgeError as exc:
        print(exc, file=sys.stderr)
        return 2
    joined, into = join_chunks(corpus, CHUNK_TOKENS, lambda text: len(tokenize(text)))
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "corpus.jsonl").open("w") as out:
        for chunk in joined:
            out.write(json.dumps({k: chunk[k] for k in ("id", "text", "tenant")}) + "\n")
    with (args.out / "queries.jsonl").open("w") as out:
        for query in queries:
            relevant = list(dict.fromkeys(into[i] for i in query["relevant_ids"]))
            out.write(json.dumps({**query, "relevant_ids": relevant}) + "\n")
    print(f"{len(joined)} chunks joined from {len(corpus)}, {len(queries)} questions, "
          f"in {args.out}")
    print(json.dumps({"chunks": len(joined), "joined_from": len(corpus), "queries": len(queries),
                      "tokens_mean": round(sum(c["tokens"] for c in joined) / len(joined), 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
