"""A BEIR retrieval dataset (SciFact, NFCorpus, FiQA, ...) as a `sightline kb eval` set.

BEIR's format: `corpus.jsonl` (`{"_id", "title", "text"}`), `queries.jsonl` (`{"_id", "text"}`)
and `qrels/<split>.tsv` (`query-id`, `corpus-id`, `score`, with a header line). Out come
`corpus.jsonl` (`{"id", "text", "tenant"}`, the title and text joined as BEIR's own evaluation
does) and `queries.jsonl` (`{"query", "relevant_ids", "tenant"}`: the split's queries, each with
the documents judged relevant, score > 0), all under one tenant. The dataset is not bundled:
fetch it yourself (SciFact and NFCorpus are zip files on the BEIR project's download page;
check the licence of the one you use), unzip it, then:

    .venv/bin/python -m bench.beir ~/datasets/scifact /tmp/scifact-eval [--split test]
    .venv/bin/sightline kb eval --corpus /tmp/scifact-eval/corpus.jsonl \\
        --queries /tmp/scifact-eval/queries.jsonl --k 1,5,10

Bad input (a missing file, a line that is not JSON, a judged document not in the corpus) is one
line naming the file and line, exit 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.kb_eval import read_jsonl
from memory.knowledge import KnowledgeError


class DatasetError(ValueError):
    """The dataset is not in BEIR's format: one line naming the file and line."""


def qrels(path: Path) -> dict[str, list[str]]:
    """Query id -> the ids of the documents judged relevant (score > 0), in file order."""
    relevant: dict[str, list[str]] = defaultdict(list)
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle, delimiter="\t"))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read it: {exc.strerror}") from None
    for number, row in enumerate(rows, start=1):
        if number == 1 and row[:1] == ["query-id"]:
            continue  # the header
        try:
            query, doc, score = row[0], row[1], int(row[2])
        except (IndexError, ValueError):
            raise DatasetError(f"{path}:{number}: expected query-id, corpus-id and an integer "
                               f"score, tab-separated") from None
        if score > 0 and doc not in relevant[query]:
            relevant[query].append(doc)
    return relevant


def convert(dataset: Path, out: Path, split: str = "test", tenant: str = "beir",
            ) -> tuple[int, int]:
    """Write the kb eval files for `split` of `dataset` into `out`; (chunks, queries)."""
    judged = qrels(dataset / "qrels" / f"{split}.tsv")
    corpus = []
    for row in read_jsonl(dataset / "corpus.jsonl", ("_id", "text")):
        text = "\n".join(p for p in (str(row.get("title") or "").strip(),
                                     str(row["text"]).strip()) if p)
        corpus.append({"id": str(row["_id"]), "text": text, "tenant": tenant})
    ids = {c["id"] for c in corpus}
    queries = []
    for row in read_jsonl(dataset / "queries.jsonl", ("_id", "text")):
        relevant = judged.get(str(row["_id"]))
        if not relevant:
            continue  # not in this split
        missing = [d for d in relevant if d not in ids]
        if missing:
            raise DatasetError(f"{dataset / 'queries.jsonl'}: query {row['_id']} is "
                               f"judged against {missing[0]}, which corpus.jsonl lacks")
        queries.append({"query": str(row["text"]), "relevant_ids": relevant, "tenant": tenant})
    if not queries:
        raise DatasetError(f"{dataset / 'qrels' / f'{split}.tsv'}: no query of queries.jsonl "
                           f"has a relevant document in this split")
    write_set(out, corpus, queries)
    return len(corpus), len(queries)


def write_set(out: Path, corpus: list[dict[str, Any]], queries: list[dict[str, Any]]) -> None:
    """`corpus.jsonl` and `queries.jsonl` of a kb eval set, in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        (out / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="the unzipped BEIR dataset's folder")
    parser.add_argument("out", type=Path, help="where corpus.jsonl and queries.jsonl go")
    parser.add_argument("--split", default="test", help="the qrels file to use (default: test)")
    parser.add_argument("--tenant", default="beir", help="the tenant every chunk belongs to")
    args = parser.parse_args(argv)
    try:
        chunks, queries = convert(args.dataset, args.out, args.split, args.tenant)
    except (DatasetError, KnowledgeError) as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{chunks} chunks, {queries} queries written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
