"""A sentence-transformers encoder written down as an ONNX graph over a checkpoint's tensors.

The offline embedders' upstream weights come as `model.safetensors`; the libraries that run
them as they are (sentence-transformers, transformers) need PyTorch, hundreds of MB more per
install and per worker. onnxruntime runs the same forward pass several times faster than numpy
(README, Knowledge base: Embeddings), so each model is written down once with `onnx`'s builders.
BERT (all-MiniLM-L6-v2, memory/minilm.py) and MPNet (all-mpnet-base-v2, memory/mpnet.py) share
the post-norm transformer layers and the pooling; each model gives its own embeddings, its
attention bias and its tensors' names.

The graph's inputs: `input_ids` (int64, batch x length, right-padded) and `attention_mask`
(float32, 1 for a token, 0 for padding); its output `embedding` (batch x dim): the mean of the
last layer over the tokens, L2-normalised, as sentence-transformers' Pooling + Normalize.

The weights stay outside the serialised graph (`EncoderModel`): the graph names each one, and
onnxruntime is handed the arrays when the session is made. Written into the protobuf, MiniLM's
90 MB were copied three times and parsed back at every load (0.69 s of its 1.85 s; mpnet's are
438 MB).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime
from onnx import NodeProto, TensorProto, helper, numpy_helper

from .encoder import one_thread_session

INLINE_BYTES = 4096  # constants up to this size stay inside the graph


@dataclass(frozen=True)
class EncoderModel:
    """A serialised ONNX graph and the weights it names but does not hold."""

    graph: bytes
    weights: Mapping[str, np.ndarray]

    def session(self) -> onnxruntime.InferenceSession:
        return one_thread_session(self.graph, self.weights)


def outside(name: str, array: np.ndarray) -> TensorProto:
    """An initializer that names `array` (its shape and type) without holding its data."""
    tensor = TensorProto(name=name, dims=array.shape,
                         data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                         data_location=TensorProto.EXTERNAL)
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "handed-to-the-session"
    return tensor


@dataclass(frozen=True)
class LayerNames:
    """A layer's tensors, `{layer}` standing for `encoder.layer.N`."""

    q: str
    k: str
    v: str
    attention_out: str
    attention_norm: str


class EncoderGraph:
    """Builds the graph node by node; `const` and `op` return the names of what they add."""

    def __init__(self, w: dict[str, np.ndarray], dim: int, heads: int, eps: float) -> None:
        self.w, self.dim, self.heads_n, self.eps = w, dim, heads, eps
        self.tensors: list[TensorProto] = []
        self.weights: dict[str, np.ndarray] = {}  # the initializers kept outside the graph
        self.nodes: list[NodeProto] = []
        self.const("head_shape", [0, 0, heads, dim // heads])
        self.const("flat_shape", [0, 0, dim])
        self.const("one", 1.0)
        self.const("half", 0.5)
        self.const("zero", [0])

    def const(self, name: str, value: np.ndarray | float | list[int]) -> str:
        array = np.asarray(value, dtype=np.int64 if isinstance(value, list) else None)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        array = np.ascontiguousarray(array)
        if array.nbytes > INLINE_BYTES:
            self.tensors.append(outside(name, array))
            self.weights[name] = array
        else:
            self.tensors.append(numpy_helper.from_array(array, name))
        return name

    def op(self, kind: str, *inputs: str, **attributes: object) -> str:
        out = f"{kind.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(kind, list(inputs), [out], **attributes))
        return out

    def linear(self, x: str, name: str) -> str:  # torch's Linear keeps weights as (out, in)
        return self.op("Add", self.op("MatMul", x, self.const(f"{name}.w",
                                                              self.w[f"{name}.weight"].T)),
                       self.const(f"{name}.b", self.w[f"{name}.bias"]))

    def norm(self, x: str, name: str) -> str:
        return self.op("LayerNormalization", x, self.const(f"{name}.g", self.w[f"{name}.weight"]),
                       self.const(f"{name}.b", self.w[f"{name}.bias"]), axis=-1,
                       epsilon=self.eps)

    def length(self) -> str:
        return self.op("Shape", "input_ids", start=1, end=2)

    def padding_bias(self) -> str:
        """(batch, 1, 1, length): far below zero at padding, added to the attention scores."""
        return self.op("Unsqueeze", self.op("Mul", self.op("Sub", "one", "attention_mask"),
                                            self.const("far", -1e9)),
                       self.const("head_axes", [1, 2]))

    def _split_heads(self, x: str, perm: list[int]) -> str:
        return self.op("Transpose", self.op("Reshape", x, "head_shape"), perm=perm)

    def layers(self, x: str, bias: str, count: int, names: LayerNames) -> str:
        """`count` post-norm transformer layers over `x`, `bias` added to every layer's scores."""
        w, dim = self.w, self.dim
        for i in range(count):
            layer = f"encoder.layer.{i}"
            projections = [n.format(layer=layer) for n in (names.q, names.k, names.v)]
            qkv = self.op("Add", self.op("MatMul", x, self.const(f"{layer}.qkv.w", np.concatenate(
                [w[f"{n}.weight"] for n in projections]).T)), self.const(
                    f"{layer}.qkv.b", np.concatenate([w[f"{n}.bias"] for n in projections])))
            q, k, v = (f"{layer}.{n}" for n in "qkv")  # one product for the three, then split
            self.nodes.append(helper.make_node(
                "Split", [qkv, self.const(f"{layer}.qkv.split", [dim] * 3)], [q, k, v], axis=-1))
            scores = self.op("Add", self.op("Mul", self.op(
                "MatMul", self._split_heads(q, [0, 2, 1, 3]), self._split_heads(k, [0, 2, 3, 1])),
                self.const(f"{layer}.scale", 1 / math.sqrt(dim // self.heads_n))), bias)
            context = self.op("MatMul", self.op("Softmax", scores, axis=-1),
                              self._split_heads(v, [0, 2, 1, 3]))
            context = self.op("Reshape", self.op("Transpose", context, perm=[0, 2, 1, 3]),
                              "flat_shape")
            x = self.norm(self.op("Add", self.linear(context, names.attention_out.format(
                layer=layer)), x), names.attention_norm.format(layer=layer))
            hidden = self.linear(x, f"{layer}.intermediate.dense")
            hidden = self.op("Mul", self.op("Mul", hidden, "half"), self.op(  # exact GELU
                "Add", "one", self.op("Erf", self.op("Mul", hidden, self.const(
                    f"{layer}.gelu", 1 / math.sqrt(2))))))
            x = self.norm(self.op("Add", self.linear(hidden, f"{layer}.output.dense"), x),
                          f"{layer}.output.LayerNorm")
        return x

    def pooled_model(self, x: str, name: str) -> EncoderModel:
        """The model whose output is `x` mean-pooled over the tokens, unit length."""
        tokens = self.op("Unsqueeze", "attention_mask", self.const("token_axis", [2]))
        summed = self.op("ReduceSum", self.op("Mul", x, tokens), self.const("length_axis", [1]),
                         keepdims=0)
        count = self.op("Max", self.op("ReduceSum", "attention_mask", "length_axis", keepdims=1),
                        "one")
        self.nodes.append(helper.make_node("LpNormalization", [self.op("Div", summed, count)],
                                           ["embedding"], axis=-1, p=2))
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"]),
             helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT,
                                           ["batch", "length"])],
            [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", self.dim])],
            self.tensors)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        return EncoderModel(model.SerializeToString(), self.weights)


def in_8bit_blocks(model: EncoderModel, block: int) -> EncoderModel:
    """`model` with every product by a weight (a MatMul whose second input is a weight named
    `*.w`) in 8 bits: each weight column cut into blocks of `block` rows, each quantised
    symmetrically with its own scale, run by onnxruntime's `MatMulNBits` at accuracy level 4,
    which quantises each call's activations per block too and sums int8 products in int32.
    Blocks hold the outliers of GELU's output that one scale a tensor cannot (onnxruntime's
    dynamic quantisation). The packing is the operator's documented layout ([N, blocks, block]
    bytes, zero point 128, one scale a block, the block's value of largest magnitude at -128),
    written here rather than with onnxruntime's `MatMulNBitsQuantizer`, which gives the same
    scales and bytes (but for about one weight in 100,000 rounded one step apart) and imports
    onnx-ir and sympy (~75 MB installed) for a transpose, a scale and a rounding."""
    graph = onnx.load_from_string(model.graph)
    initializers = {t.name: t for t in graph.graph.initializer}
    weights = dict(model.weights)  # `model` stays as it was: MiniLM runs both
    for node in graph.graph.node:
        if node.op_type != "MatMul" or not node.input[1].endswith(".w") \
                or node.input[1] not in weights:
            continue
        name = node.input[1]
        w = weights.pop(name).astype(np.float32)
        rows, columns = w.shape
        blocks = -(-rows // block)
        padded = np.zeros((blocks * block, columns), dtype=np.float32)
        padded[:rows] = w
        cut = padded.T.reshape(columns, blocks, block)
        # the value of largest magnitude lands on -128, so a block uses int8's whole range
        extreme = np.take_along_axis(cut, np.abs(cut).argmax(axis=2)[..., None], axis=2)
        scales = np.where(extreme != 0, extreme / -128, 1).astype(np.float32)
        quantised = (np.clip(np.rint(cut / scales), -128, 127) + 128).astype(np.uint8)
        weights[f"{name}.q8"], weights[f"{name}.q8_scales"] = quantised, scales.reshape(-1)
        node.op_type, node.domain = "MatMulNBits", "com.microsoft"
        node.input[:] = [node.input[0], f"{name}.q8", f"{name}.q8_scales"]
        node.attribute.extend([helper.make_attribute("K", rows),
                               helper.make_attribute("N", columns),
                               helper.make_attribute("bits", 8),
                               helper.make_attribute("block_size", block),
                               helper.make_attribute("accuracy_level", 4)])
        graph.graph.initializer.remove(initializers[name])
        graph.graph.initializer.extend(outside(n, weights[n])
                                       for n in (f"{name}.q8", f"{name}.q8_scales"))
    if not any(o.domain == "com.microsoft" for o in graph.opset_import):
        graph.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return EncoderModel(graph.SerializeToString(), weights)
