"""The long-conversation converters (`python -m bench.conversations`) on tiny hand-made files in
LongMemEval's and LoCoMo's real shapes.

Protects: every message is one chunk under its id (`session:turn`, `conversation:dialogue id`);
LongMemEval's evidence is the question's own `has_answer` turns, sessions shared by two
questions are stored once, abstention questions and questions without a marked turn are left
out and counted;
LoCoMo gets one tenant per conversation, the speaker and a shared photo's caption in the text,
malformed evidence ids parsed or dropped; the output loads in `kb eval` and is evaluated end to
end on real Postgres; bad input is one line and exit 2. The download (`fetch`) needs PyPI and
is not run here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.config import Settings
from bench.conversations import main
from bench.kb_eval import run_eval
from memory.embeddings import WordLlamaEmbedder

SHARED_SESSION = [
    {"role": "user", "content": "My sister Ana moved to Lisbon in March.", "has_answer": True},
    {"role": "assistant", "content": "Lisbon is lovely in spring.", "has_answer": False},
]
LONGMEMEVAL = [
    {"question_id": "q1", "question_type": "single-session-user",
     "question": "Where did my sister move?", "answer": "Lisbon",
     "haystack_session_ids": ["s1", "s2"],
     "haystack_sessions": [SHARED_SESSION, [
         {"role": "user", "content": "I bought a green bicycle.", "has_answer": False}]]},
    {"question_id": "q2", "question_type": "single-session-user",
     "question": "What colour is my bicycle?", "answer": "green",
     "haystack_session_ids": ["s2", "s1"],
     "haystack_sessions": [[
         {"role": "user", "content": "I bought a green bicycle.", "has_answer": True}],
         [{**turn, "has_answer": False} for turn in SHARED_SESSION]]},
    {"question_id": "q3_abs", "question": "What is my brother's name?", "answer": "unknown",
     "haystack_session_ids": ["s1"], "haystack_sessions": [SHARED_SESSION]},
]
LOCOMO = [{
    "sample_id": "conv-1",
    "conversation": {
        "speaker_a": "Caroline", "speaker_b": "Melanie",
        "session_1_date_time": "1:56 pm on 8 May, 2023",
        "session_1": [
            {"speaker": "Caroline", "dia_id": "D1:1", "text": "I went to a pottery class."},
            {"speaker": "Melanie", "dia_id": "D1:2", "text": "Look what I painted!",
             "img_url": ["https://example.invalid/x.jpg"],
             "blip_caption": "a painting of a sunset over a lake"},
        ],
        "session_2_date_time": "9:00 am on 9 May, 2023",
        "session_2": [
            {"speaker": "Caroline", "dia_id": "D2:1", "text": "The adoption agency called."}],
    },
    "qa": [
        {"question": "What did Melanie paint?", "answer": "a sunset",
         "evidence": ["D1:2"], "category": 1},
        {"question": "What class did Caroline take and who called?", "answer": "pottery",
         "evidence": ["D1:1; D2:1"], "category": 1},
        {"question": "What did Caroline say about dogs?", "evidence": ["D9:9"], "category": 5},
    ],
}]


def _convert(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, data: Any,
             ) -> tuple[Path, list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the converter on `data`; the output folder and its corpus and queries. Both samples
    make 3 chunks and 2 queries, leaving 1 question out."""
    source, out = tmp_path / f"{command}.json", tmp_path / command
    source.write_text(json.dumps(data))
    assert main([command, str(source), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 chunks, 2 queries" in printed and "1 questions left out" in printed
    corpus, queries = ([json.loads(line) for line in (out / name).read_text().splitlines()]
                       for name in ("corpus.jsonl", "queries.jsonl"))
    return out, corpus, queries


async def test_longmemeval_becomes_a_kb_eval_set(
    tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str],
) -> None:
    out, corpus, queries = _convert(tmp_path, capsys, "longmemeval", LONGMEMEVAL)
    assert [c["id"] for c in corpus] == ["s1:0", "s1:1", "s2:0"]
    assert corpus[0] == {"id": "s1:0", "text": "My sister Ana moved to Lisbon in March.",
                         "tenant": "longmemeval"}
    assert queries == [
        {"query": "Where did my sister move?", "relevant_ids": ["s1:0"], "tenant": "longmemeval"},
        {"query": "What colour is my bicycle?", "relevant_ids": ["s2:0"],
         "tenant": "longmemeval"},
    ]
    result = await run_eval(settings.database_url, out / "corpus.jsonl",
                            out / "queries.jsonl", [1], WordLlamaEmbedder())
    assert result["queries"] == 2 and result["chunks"] == 3
    assert result["systems"]["sightline"]["recall@1"] == 1.0


def test_locomo_becomes_a_kb_eval_set(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      ) -> None:
    _, corpus, queries = _convert(tmp_path, capsys, "locomo", LOCOMO)
    assert corpus[1] == {"id": "locomo-conv-1:D1:2", "tenant": "locomo-conv-1",
                         "text": "Melanie: Look what I painted! [shares a photo: a painting "
                                 "of a sunset over a lake]"}
    assert corpus[2]["text"] == "Caroline: The adoption agency called."
    assert queries[1] == {"query": "What class did Caroline take and who called?",
                          "tenant": "locomo-conv-1",
                          "relevant_ids": ["locomo-conv-1:D1:1", "locomo-conv-1:D2:1"]}


@pytest.mark.parametrize("command, content, expected", [
    ("longmemeval", "{not json", "not JSON"),
    ("longmemeval", json.dumps({"question": "x"}), "expected a list of questions"),
    ("longmemeval", json.dumps([{"question": "x"}]), "question 1: expected question, "),
    ("locomo", json.dumps([{"sample_id": "a"}]), "conversation 1: expected sample_id"),
])
def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               command: str, content: str, expected: str) -> None:
    source = tmp_path / "data.json"
    source.write_text(content)
    assert main([command, str(source), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert expected in error and error.count("\n") == 1 and str(source) in error
    assert main([command, str(tmp_path / "missing.json"), str(tmp_path / "out")]) == 2
    assert "cannot read it" in capsys.readouterr().err
