"""The fp32 sentence-embedding graph of a BERT encoder, written op by op from its weights.

The ops mirror what a PyTorch export of `BertModel` looks like (MatMul + Add, Div by
sqrt(head size), additive -10000 mask, Div/Erf/Add/Mul/Mul GELU): the patterns
onnxruntime's optimisers recognise (the session fuses BiasGelu and folds the scale into
the MatMul). Mean pooling and L2 normalisation are part of the graph, so callers get
finished sentence vectors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 21  # blocked QuantizeLinear (per-token scales in the int8 graph) needs 21
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
SENTENCE_EMBEDDING = "sentence_embedding"
GELU_SUFFIX = ".gelu"  # names GELU outputs, whose known lower bound the int8 graph exploits
WORD_EMBEDDINGS = "word_embeddings"


@dataclass(frozen=True)
class BertConfig:
    """The encoder's shape, read from the Hugging Face config.json."""

    layers: int
    hidden: int
    heads: int
    intermediate: int
    layer_norm_eps: float

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("hidden_act") != "gelu" or raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only erf GELU with absolute positions is supported")
        return cls(
            layers=int(raw["num_hidden_layers"]),
            hidden=int(raw["hidden_size"]),
            heads=int(raw["num_attention_heads"]),
            intermediate=int(raw["intermediate_size"]),
            layer_norm_eps=float(raw["layer_norm_eps"]),
        )


class _Graph:
    """Accumulates nodes and initializers under unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, value: np.ndarray | float | list[int], name: str | None = None) -> str:
        array = np.asarray(value, dtype=np.int64 if isinstance(value, list) else None)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        name = name or self._fresh("c")
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, *inputs: str, output: str = "", **attrs: Any) -> str:
        output = output or self._fresh(op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=output, **attrs))
        return output

    def _fresh(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"


def _linear(g: _Graph, x: str, weights: Mapping[str, np.ndarray], prefix: str) -> str:
    # Torch stores Linear weights as [out, in]; MatMul wants [in, out].
    w = g.const(np.ascontiguousarray(weights[f"{prefix}.weight"].T), f"{prefix}.weight")
    return g.op("Add", g.op("MatMul", x, w), g.const(weights[f"{prefix}.bias"], f"{prefix}.bias"))


def _layer_norm(g: _Graph, x: str, weights: Mapping[str, np.ndarray], prefix: str, eps: float) -> str:
    gamma = g.const(weights[f"{prefix}.weight"], f"{prefix}.weight")
    beta = g.const(weights[f"{prefix}.bias"], f"{prefix}.bias")
    return g.op("LayerNormalization", x, gamma, beta, axis=-1, epsilon=eps)


def _attention(
    g: _Graph, x: str, mask_bias: str, w: Mapping[str, np.ndarray], prefix: str, cfg: BertConfig
) -> str:
    head_size = cfg.hidden // cfg.heads
    split_heads = g.const([0, 0, cfg.heads, head_size])

    def heads(name: str, perm: list[int]) -> str:
        projected = _linear(g, x, w, f"{prefix}.self.{name}")
        return g.op("Transpose", g.op("Reshape", projected, split_heads), perm=perm)

    q = heads("query", [0, 2, 1, 3])
    k = heads("key", [0, 2, 3, 1])
    v = heads("value", [0, 2, 1, 3])
    scores = g.op("Div", g.op("MatMul", q, k), g.const(math.sqrt(head_size)))
    probs = g.op("Softmax", g.op("Add", scores, mask_bias), axis=-1)
    context = g.op("Transpose", g.op("MatMul", probs, v), perm=[0, 2, 1, 3])
    merged = g.op("Reshape", context, g.const([0, 0, cfg.hidden]))
    return _linear(g, merged, w, f"{prefix}.output.dense")


def _gelu(g: _Graph, x: str, output: str) -> str:
    erf = g.op("Erf", g.op("Div", x, g.const(math.sqrt(2.0))))
    return g.op(
        "Mul",
        g.op("Mul", x, g.op("Add", erf, g.const(1.0))),
        g.const(0.5),
        output=output,
    )


def _embeddings(g: _Graph, w: Mapping[str, np.ndarray], cfg: BertConfig) -> str:
    words = g.op("Gather", g.const(w["embeddings.word_embeddings.weight"], WORD_EMBEDDINGS), INPUT_IDS)
    # Single sentences have token_type_ids == 0 everywhere: fold that row into the positions.
    positions_and_type = (
        w["embeddings.position_embeddings.weight"] + w["embeddings.token_type_embeddings.weight"][0]
    )
    seq_len = g.op("Shape", INPUT_IDS, start=1, end=2)
    positions = g.op(
        "Slice", g.const(positions_and_type, "position_embeddings"), g.const([0]), seq_len, g.const([0])
    )
    return _layer_norm(g, g.op("Add", words, positions), w, "embeddings.LayerNorm", cfg.layer_norm_eps)


def _mask_bias(g: _Graph) -> str:
    expanded = g.op("Unsqueeze", g.op("Unsqueeze", ATTENTION_MASK, g.const([1])), g.const([2]))
    inverted = g.op("Sub", g.const(1.0), g.op("Cast", expanded, to=TensorProto.FLOAT))
    return g.op("Mul", inverted, g.const(-10000.0))


def _mean_pool_normalise(g: _Graph, hidden: str) -> str:
    mask = g.op("Unsqueeze", g.op("Cast", ATTENTION_MASK, to=TensorProto.FLOAT), g.const([-1]))
    summed = g.op("ReduceSum", g.op("Mul", hidden, mask), g.const([1]), keepdims=0)
    counts = g.op("Max", g.op("ReduceSum", mask, g.const([1]), keepdims=0), g.const(1e-9))
    mean = g.op("Div", summed, counts)
    # Same epsilon as torch.nn.functional.normalize, which sentence-transformers uses.
    norm = g.op("Max", g.op("ReduceL2", mean, g.const([1]), keepdims=1), g.const(1e-12))
    return g.op("Div", mean, norm, output=SENTENCE_EMBEDDING)


def build_bert_graph(weights: Mapping[str, np.ndarray], cfg: BertConfig) -> onnx.ModelProto:
    """Return the fp32 graph: (input_ids, attention_mask) -> L2-normalised mean-pooled vectors."""
    g = _Graph()
    mask_bias = _mask_bias(g)
    x = _embeddings(g, weights, cfg)
    for i in range(cfg.layers):
        prefix = f"encoder.layer.{i}"
        attended = _attention(g, x, mask_bias, weights, f"{prefix}.attention", cfg)
        x = _layer_norm(
            g, g.op("Add", attended, x), weights, f"{prefix}.attention.output.LayerNorm", cfg.layer_norm_eps
        )
        inner = _gelu(g, _linear(g, x, weights, f"{prefix}.intermediate.dense"), f"{prefix}{GELU_SUFFIX}")
        out = _linear(g, inner, weights, f"{prefix}.output.dense")
        x = _layer_norm(g, g.op("Add", out, x), weights, f"{prefix}.output.LayerNorm", cfg.layer_norm_eps)
    _mean_pool_normalise(g, x)
    graph = helper.make_graph(
        g.nodes,
        "sentence_embedding",
        [
            helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info(ATTENTION_MASK, TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info(SENTENCE_EMBEDDING, TensorProto.FLOAT, ["batch", cfg.hidden])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="aiinfra")
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model
