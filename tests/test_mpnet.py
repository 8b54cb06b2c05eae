"""The third offline transformer embedder: all-mpnet-base-v2, from the `mpnet` extra's five wheels.

Protects: the ONNX graph is MPNet as PyTorch runs it (values published from PyTorch, and an
independent float64 numpy forward pass over a text long enough to reach every relative-position
bucket); the 8-bit graph the embedder runs stays close to it; the split archive is read across
its pieces' boundaries and a forged model is refused with one line; it is chosen by name; and a
tenant's knowledge stored with MiniLM is re-embedded through the model-mismatch path, never
mixed.
"""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_switch_re_embeds
from safetensors.numpy import load as load_safetensors
from scipy.special import erf

from agent.components import make_embedder
from agent.config import Settings
from memory.db import Database
from memory.embeddings import MiniLMEmbedder, MPNetEmbedder, offline_family
from memory.encoder import ModelFileError
from memory.mpnet import FOLDER, JoinedFile, MPNet, archive_parts

# From a third-party test of its own MPNet port (Kjarni, `MpnetBaseV2Tests`), whose comments say
# the values were produced with sentence-transformers on PyTorch.
HELLO_WORLD_FIRST = [0.0262497, 0.0133956, -0.0045332, -0.0217914, 0.0545519]
SIMILARITIES = [("dog", "puppy", 0.778325), ("dog", "cat", 0.608123), ("dog", "car", 0.390584),
                ("dog", "quantum physics", 0.2509)]


@pytest.fixture(scope="module")
def embedder() -> MPNetEmbedder:
    return MPNetEmbedder()


@pytest.fixture(scope="module")
def fp32() -> MPNet:
    return MPNet(int8=False)


def test_the_fp32_graph_matches_values_published_from_pytorch(fp32: MPNet) -> None:
    np.testing.assert_allclose(fp32.embed(["Hello world"])[0][:5], HELLO_WORLD_FIRST, atol=2e-7)
    for a, b, published in SIMILARITIES:
        x, y = fp32.embed([a, b])
        assert float(x @ y) == pytest.approx(published, abs=1e-5)


def test_the_8_bit_graph_the_embedder_runs_stays_close_to_it(
        embedder: MPNetEmbedder, fp32: MPNet) -> None:
    assert embedder.name == "all-mpnet-base-v2-8bit-768-windows" and embedder.dim == 768
    texts = ["Hello world", "When did Caroline go to the LGBTQ support group?",
             "Melanie: I painted a lake sunrise last year, it's special to me.",
             "reset the router " * 150]
    ours, reference = embedder.embed_sync(texts), fp32.embed(texts)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # 0.9988 at worst over 180 texts (README: Knowledge base); the AVX2 kernel (no VNNI) gave
    # 0.99897 on one of these, the AVX-512 one over 0.999
    assert min(float(a @ b) for a, b in zip(ours, reference, strict=True)) > 0.998
    assert not np.array_equal(ours, reference)  # quantised, not the fp32 graph again
    similarities = [float(x @ y) for x, y in (embedder.embed_sync([a, b])
                                              for a, b, _ in SIMILARITIES)]
    assert similarities == sorted(similarities, reverse=True)  # the published order
    assert similarities == pytest.approx([p for _, _, p in SIMILARITIES], abs=0.01)


def _reference(w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """MPNet written out in float64 from HF transformers' modeling_mpnet.py, one text."""
    w = {k: v.astype(np.float64) for k, v in w.items()}

    def bucket(distance: int) -> int:  # relative_position_bucket(key - query), bidirectional
        n = -distance
        out = 16 if n < 0 else 0
        n = abs(n)
        if n < 8:
            return out + n
        return out + min(8 + int(math.log(n / 8) / math.log(128 / 8) * 8), 15)

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5) * w[f"{name}.weight"] + w[f"{name}.bias"]

    def linear(x: np.ndarray, name: str) -> np.ndarray:
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    n = len(ids)
    x = w["embeddings.word_embeddings.weight"][ids] + \
        w["embeddings.position_embeddings.weight"][np.arange(n) + 2]
    x = norm(x, "embeddings.LayerNorm")
    buckets = np.array([[bucket(j - i) for j in range(n)] for i in range(n)])
    bias = w["encoder.relative_attention_bias.weight"][buckets].transpose(2, 0, 1)
    for i in range(12):
        layer = f"encoder.layer.{i}"
        q, k, v = (linear(x, f"{layer}.attention.attn.{p}").reshape(n, 12, 64).transpose(1, 0, 2)
                   for p in "qkv")
        scores = q @ k.transpose(0, 2, 1) / 8.0 + bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        context = (scores / scores.sum(-1, keepdims=True) @ v).transpose(1, 0, 2).reshape(n, 768)
        x = norm(linear(context, f"{layer}.attention.attn.o") + x, f"{layer}.attention.LayerNorm")
        hidden = linear(x, f"{layer}.intermediate.dense")
        hidden = 0.5 * hidden * (1 + erf(hidden / math.sqrt(2)))
        x = norm(linear(hidden, f"{layer}.output.dense") + x, f"{layer}.output.LayerNorm")
    mean = x.mean(0)
    return mean / np.linalg.norm(mean)


def test_the_fp32_graph_is_mpnet_as_written_out_in_numpy(fp32: MPNet) -> None:
    """A text of 200+ word pieces reaches the buckets beyond 128 positions; in a batch beside a
    short one, so padding is in play too."""
    long_text = "Caroline went to the support group on 7 May and felt inspired. " * 16
    with JoinedFile(archive_parts()) as joined, zipfile.ZipFile(io.BufferedReader(joined)) as zf:
        weights = load_safetensors(zf.read(f"{FOLDER}/model.safetensors"))
    ids = fp32._tokenizer.encode(long_text, add_special_tokens=False).ids
    assert 200 < len(ids) + 2 <= 384
    ours = fp32.embed(["a short one", long_text])[1]
    expected = _reference(weights, [fp32._cls, *ids, fp32._sep])
    np.testing.assert_allclose(ours, expected, atol=2e-6)


def test_paraphrase_ranks_above_shared_words(embedder: MPNetEmbedder) -> None:
    question, answer, distractor = embedder.embed_sync([
        "how do I make my laptop run faster",
        "Speed up a sluggish notebook computer by closing background programs.",
        "The laptop bag has room to run cables.",
    ])
    assert float(question @ answer) > float(question @ distractor)


def _split(data: bytes, folder: Path, sizes: list[int]) -> list[Path]:
    parts, start = [], 0
    for i, size in enumerate([*sizes, len(data)]):
        path = folder / f"{FOLDER}.zip.{i + 1:03d}"
        path.write_bytes(data[start:start + size] if i < len(sizes) else data[start:])
        parts.append(path)
        start += size
    return parts


def test_the_split_archive_is_read_across_its_pieces_and_a_forged_model_refused(
        tmp_path: Path) -> None:
    member = bytes(range(256)) * 40
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{FOLDER}/model.safetensors", member)
        zf.writestr(f"{FOLDER}/tokenizer.json", "{}")
    parts = _split(buffer.getvalue(), tmp_path, [1000, 3333, 1])
    with JoinedFile(parts) as joined, zipfile.ZipFile(io.BufferedReader(joined)) as zf:
        assert zf.read(f"{FOLDER}/model.safetensors") == member
    with pytest.raises(ModelFileError, match="not the expected file") as caught:
        MPNet(parts)
    assert "\n" not in str(caught.value) and "mpnet" in str(caught.value)
    with pytest.raises(ModelFileError, match="cannot read the model"):
        MPNet(parts[:2])


def test_it_is_chosen_by_name(settings: Settings, embedder: MPNetEmbedder) -> None:
    assert isinstance(make_embedder(settings.with_overrides(embeddings="mpnet")), MPNetEmbedder)
    # a tenant's knowledge stored by this build, or by the build before (its int8 graph): the
    # same family, so `auto` keeps mpnet, and the older vectors are re-embedded by name
    for stored in (embedder.name, "all-mpnet-base-v2-int8-768-windows"):
        assert isinstance(make_embedder(settings.with_overrides(embeddings="auto"), [stored]),
                          MPNetEmbedder)
        assert offline_family(stored) == "mpnet"


async def test_switching_from_minilm_re_embeds_through_the_mismatch_path(
    db: Database, tmp_path: Path, embedder: MPNetEmbedder,
) -> None:
    await assert_switch_re_embeds(db, tmp_path, MiniLMEmbedder(), embedder)
