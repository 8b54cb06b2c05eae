"""The BEIR converter (`python -m bench.beir`) on a tiny hand-made dataset in BEIR's real format
(SciFact's layout: corpus.jsonl, queries.jsonl, qrels/test.tsv with its header).

Protects: title and text are joined; only queries judged in the split are kept, with the
documents scored > 0; the output loads in `kb eval` and is evaluated end to end on real
Postgres; bad input is one line and exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import Settings
from bench.beir import main
from bench.kb_eval import run_eval
from memory.embeddings import WordLlamaEmbedder

CORPUS = [
    {"_id": "101", "title": "Vitamin D and bone density",
     "text": "In a cohort of older adults, vitamin D supplements raised bone mineral density.",
     "metadata": {}},
    {"_id": "102", "title": "", "text": "Regular aerobic exercise lowered resting blood pressure.",
     "metadata": {}},
    {"_id": "103", "title": "Sleep and memory",
     "text": "Deep sleep consolidates declarative memories in young adults.", "metadata": {}},
]
QUERIES = [
    {"_id": "1", "text": "vitamin D increases bone density", "metadata": {}},
    {"_id": "2", "text": "sleep helps memory consolidation", "metadata": {}},
    {"_id": "3", "text": "a query judged only in the train split", "metadata": {}},
]
QRELS = "query-id\tcorpus-id\tscore\n1\t101\t1\n2\t103\t1\n2\t102\t0\n"


def write_dataset(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CORPUS))
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in QUERIES))
    (root / "qrels" / "test.tsv").write_text(QRELS)
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n3\t102\t1\n")
    return root


async def test_a_beir_dataset_becomes_a_kb_eval_set(
    tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str],
) -> None:
    dataset, out = write_dataset(tmp_path / "scifact"), tmp_path / "eval"
    assert main([str(dataset), str(out)]) == 0
    assert "3 chunks, 2 queries" in capsys.readouterr().out
    corpus = [json.loads(line) for line in (out / "corpus.jsonl").read_text().splitlines()]
    queries = [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]
    assert corpus[0] == {"id": "101", "tenant": "beir", "text": "Vitamin D and bone density\n"
                         "In a cohort of older adults, vitamin D supplements raised bone "
                         "mineral density."}
    assert corpus[1]["text"] == "Regular aerobic exercise lowered resting blood pressure."
    assert queries == [
        {"query": "vitamin D increases bone density", "relevant_ids": ["101"], "tenant": "beir"},
        {"query": "sleep helps memory consolidation", "relevant_ids": ["103"], "tenant": "beir"}]
    assert settings.database_url is not None
    result = await run_eval(settings.database_url, out / "corpus.jsonl", out / "queries.jsonl",
                            [1, 3], WordLlamaEmbedder())
    assert result["queries"] == 2 and result["chunks"] == 3
    assert result["systems"]["keyword"]["recall@1"] == 1.0  # each query's words are its doc's
    assert set(result["systems"]) >= {"sightline", "keyword", "vector", "llamaindex_bm25",
                                      "llamaindex_fusion"}


def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = write_dataset(tmp_path / "ds")
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "cannot read it" in capsys.readouterr().err
    (dataset / "qrels" / "test.tsv").write_text(QRELS + "2\t999\t1\n")
    assert main([str(dataset), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "judged against 999, which corpus.jsonl lacks" in err
    (dataset / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\t101\tyes\n")
    assert main([str(dataset), str(tmp_path / "out")]) == 2
    assert "test.tsv:2: expected query-id, corpus-id and an integer score" in \
        capsys.readouterr().err
    (dataset / "qrels" / "test.tsv").write_text(QRELS)
    (dataset / "corpus.jsonl").write_text('{"_id": "1", "text": "x"}\nnot json\n')
    assert main([str(dataset), str(tmp_path / "out")]) == 2
    assert "corpus.jsonl:2: not valid JSON" in capsys.readouterr().err
