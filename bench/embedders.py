"""The offline embedders side by side, in one process: load time, a question's embedding as a
turn asks it (bge behind its instruction; p50 / p95 over the bundled set's 62 questions,
repeated) and document throughput (the bundled set's 295 chunks), each on one thread, as a
worker runs them, then for the transformers the documents again on `--threads` threads
(default: the cores), as `kb ingest` runs them, and once more on one (`docs_per_s` is the mean
of the two one-thread passes, so the ratio does not favour the warmer pass). Questions
alternate between the embedders, so all share the machine's noise; the ratios are to MiniLM,
the default.

    .venv/bin/python -m bench.embedders [--rounds 5]

The last line is JSON: per embedder, load_s, query_p50_ms, query_p95_ms, docs_per_s and, for
the transformers, docs_per_s_threads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from bench.kb_eval import EVAL_DIR, load
from memory.embeddings import (
    OFFLINE_EMBEDDERS,
    EncoderEmbedder,
    LocalEmbedder,
    offline_embedder,
)


def measure(rounds: int, threads: int) -> dict[str, dict[str, float]]:
    chunks, queries = load(EVAL_DIR / "corpus.jsonl", EVAL_DIR / "queries.jsonl")
    embedders: dict[str, LocalEmbedder] = {}
    results: dict[str, dict[str, float]] = {}
    for name in OFFLINE_EMBEDDERS:
        started = time.perf_counter()
        embedders[name] = offline_embedder(name)
        results[name] = {"load_s": round(time.perf_counter() - started, 2)}
    times: dict[str, list[float]] = {name: [] for name in embedders}
    for embedder in embedders.values():  # warm up
        embedder.embed_sync([queries[0].query])
    for number, question in enumerate([q.query for q in queries] * rounds):
        order = list(embedders.items())
        for name, embedder in order if number % 2 else reversed(order):
            started = time.perf_counter()
            embedder.embed_question_sync(question)  # as a turn asks it
            times[name].append((time.perf_counter() - started) * 1000)
    texts = [str(c["text"]) for c in chunks]
    for name, embedder in embedders.items():
        started = time.perf_counter()
        embedder.embed_sync(texts)
        results[name] |= {
            "query_p50_ms": round(float(np.percentile(times[name], 50)), 2),
            "query_p95_ms": round(float(np.percentile(times[name], 95)), 2),
            "docs_per_s": round(len(texts) / (time.perf_counter() - started), 1)}
    for name, embedder in embedders.items():  # as `kb ingest` runs them: a batch per thread
        if not isinstance(embedder, EncoderEmbedder):
            continue  # WordLlama is one lookup per text: nothing to spread
        embedder.threads = threads
        started = time.perf_counter()
        embedder.embed_sync(texts)
        results[name]["docs_per_s_threads"] = round(
            len(texts) / (time.perf_counter() - started), 1)
        embedder.threads = 1
        started = time.perf_counter()  # one thread again: the ratio is to both passes' mean
        embedder.embed_sync(texts)
        again = len(texts) / (time.perf_counter() - started)
        results[name]["docs_per_s"] = round((results[name]["docs_per_s"] + again) / 2, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="passes over the questions")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="threads for the documents' second pass (default: the cores)")
    args = parser.parse_args(argv)
    results = measure(args.rounds, args.threads)
    base = results["minilm"]
    print(f"embedder    load s  query p50 / p95 ms  docs/s   p50 vs minilm  docs/s vs minilm"
          f"  docs/s on {args.threads} threads (vs one)")
    for name, r in results.items():
        print(f"{name:<10} {r['load_s']:>6}  {r['query_p50_ms']:>7} / {r['query_p95_ms']:<8}"
              f" {r['docs_per_s']:>7}   {r['query_p50_ms'] / base['query_p50_ms']:>6.2f}x"
              f"        {r['docs_per_s'] / base['docs_per_s']:>6.2f}x"
              + (f"  {r['docs_per_s_threads']:>9} "
                 f"({r['docs_per_s_threads'] / r['docs_per_s']:.2f}x)"
                 if "docs_per_s_threads" in r else "          —"))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
