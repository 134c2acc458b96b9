"""Rewrite the fp32 embedding graph into the int8 one, with per-token activation scales.

Every MatMul with a constant weight W (shared input: Q, K and V quantize it once) becomes

    x -> x/s -> row scale = max|row|/127 -> QuantizeLinear (one block per row)
      -> MatMulIntegerToFloat(int8 W*s, per-output-channel scales) -> (Add bias, as before)

- Scales are per token, computed in the graph: a text's vector does not depend on the
  other texts of its batch. Plain `quantize_dynamic` takes one scale over the whole batch
  tensor, padding included, so a text's vector would change with its batch-mates.
- s is SmoothQuant (alpha 0.5): BERT's outlier channels (up to 30x the median after
  attention.output.LayerNorm) move from the activations into the weights.
- GELU outputs are >= -0.17: shifted by +0.17 they use all 256 uint8 levels instead of
  128; the shift's constant contribution is subtracted from the layer's bias.
- The word-embedding table is int8 with one scale per row.
- Weights take 7 bits (|w| <= 64, WEIGHT_LEVELS). With all 8, a CPU without VNNI (AVX2 only)
  saturates int16 pair sums inside onnxruntime's kernel and computes other vectors than one with
  VNNI; with 7 bits nothing saturates, on any CPU.

What each step gained in accuracy and speed, and the alternatives tried (quantize_dynamic,
MatMulNBits), is in docs/embed.md; the current figures in docs/benchmarks/embed.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from aiinfra.embedding.graph import GELU_SUFFIX, INPUT_IDS, WORD_EMBEDDINGS

GELU_SHIFT = 0.17  # >= -min(GELU) = 0.16997, so shifted GELU outputs are never negative
SMOOTH_ALPHA = 0.5
# Without VNNI, onnxruntime's uint8 x int8 kernel adds pairs of products in saturating int16: with
# |w| <= 64 a pair (at most 2 x 255 x 64 = 32640) never saturates, so every CPU computes the same.
WEIGHT_LEVELS = 64
MS_DOMAIN = "com.microsoft"


def linear_inputs(model: onnx.ModelProto) -> list[str]:
    """Activations that feed a MatMul with a constant 2-D weight, in graph order."""
    return list(_linear_groups(model.graph))


def _linear_groups(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    matrices = {t.name for t in graph.initializer if len(t.dims) == 2}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in matrices:
            groups.setdefault(node.input[0], []).append(node)
    return groups


class _Emitter:
    """Collects replacement nodes and the constants they need."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def const(self, value: np.ndarray | np.generic) -> str:
        name = self._fresh("q_const")
        self.arrays[name] = np.asarray(value)
        return name

    def op(self, op_type: str, *inputs: str, output: str = "", domain: str = "", **attrs: Any) -> str:
        output = output or self._fresh(f"q_{op_type}")
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [output], name=output, domain=domain, **attrs)
        )
        return output

    def take(self) -> list[onnx.NodeProto]:
        nodes, self.nodes = self.nodes, []
        return nodes

    def _fresh(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"


def _quantize_rows(e: _Emitter, x: str, inv_smooth: np.ndarray, centred: str | None) -> tuple[str, str, str]:
    """Emit per-row uint8 quantization of x / s; return (values, row scales, zero point).

    `centred` is a [batch, sequence, 1] tensor of 128s for signed inputs, or None for the
    shifted, non-negative GELU outputs (zero point 0).
    """
    last_axis = e.const(np.array([-1], np.int64))
    if centred is None:
        xs = e.op("Mul", e.op("Add", x, e.const(np.float32(GELU_SHIFT))), e.const(inv_smooth))
        peak, levels, zero_points = e.op("ReduceMax", xs, last_axis, keepdims=1), 255.0, []
    else:
        xs = e.op("Mul", x, e.const(inv_smooth))
        peak, levels, zero_points = (
            e.op("ReduceMax", e.op("Abs", xs), last_axis, keepdims=1),
            127.0,
            [centred],
        )
    # The floor keeps an all-zero row from dividing by zero.
    scale = e.op("Max", e.op("Mul", peak, e.const(np.float32(1.0 / levels))), e.const(np.float32(1e-30)))
    values = e.op("QuantizeLinear", xs, scale, *zero_points, axis=-1, block_size=inv_smooth.size)
    return values, scale, e.const(np.uint8(128 if zero_points else 0))


def _centred_zero_points(e: _Emitter) -> str:
    """One [batch, sequence, 1] tensor of 128s, shared by every signed per-row quantization."""
    shape = e.op("Concat", e.op("Shape", INPUT_IDS), e.const(np.array([1], np.int64)), axis=0)
    return e.op("ConstantOfShape", shape, value=helper.make_tensor("zero", TensorProto.UINT8, [1], [128]))


def _int8_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / WEIGHT_LEVELS
    return np.clip(np.round(w / scale), -WEIGHT_LEVELS, WEIGHT_LEVELS).astype(np.int8), scale


def _quantize_group(
    e: _Emitter,
    x: str,
    matmuls: list[onnx.NodeProto],
    peak: np.ndarray,
    bias_of: Mapping[str, str],
    centred: str,
) -> list[onnx.NodeProto]:
    weights = [e.arrays[m.input[1]].astype(np.float64) for m in matmuls]
    w_peak = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    smooth = np.maximum(peak, 1e-5) ** SMOOTH_ALPHA / np.maximum(w_peak, 1e-5) ** (1 - SMOOTH_ALPHA)
    shifted = x.endswith(GELU_SUFFIX)
    inv_smooth = (1.0 / smooth).astype(np.float32)
    values, row_scale, zero = _quantize_rows(e, x, inv_smooth, None if shifted else centred)
    for m, w in zip(matmuls, weights, strict=True):
        w_int8, col_scale = _int8_columns(w * smooth[:, None])
        inputs = (values, e.const(w_int8), row_scale, e.const(col_scale.astype(np.float32)), zero)
        # No bias input: with per-row scales MatMulIntegerToFloat would scale the bias too.
        e.op("MatMulIntegerToFloat", *inputs, output=m.output[0], domain=MS_DOMAIN)
        if shifted:
            # What the +GELU_SHIFT on every input channel adds to each output, as quantized.
            excess = GELU_SHIFT * (w_int8 * col_scale / smooth[:, None]).sum(axis=0)
            bias = bias_of[m.output[0]]
            e.arrays[bias] = (e.arrays[bias] - excess).astype(np.float32)
    return e.take()


def _int8_gather(e: _Emitter, gather: onnx.NodeProto) -> list[onnx.NodeProto]:
    table = e.arrays[gather.input[0]].astype(np.float64)
    row_scale = np.maximum(np.abs(table).max(axis=1, keepdims=True), 1e-12) / 127.0
    table_int8 = np.clip(np.round(table / row_scale), -127, 127).astype(np.int8)
    ids = gather.input[1]
    rows = e.op("Cast", e.op("Gather", e.const(table_int8), ids), to=TensorProto.FLOAT)
    e.op("Mul", rows, e.op("Gather", e.const(row_scale.astype(np.float32)), ids), output=gather.output[0])
    return e.take()


def quantize_model(model: onnx.ModelProto, peaks: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """Return the int8 version of model; peaks[x] is the calibrated per-channel max |x|."""
    graph = model.graph
    e = _Emitter({t.name: numpy_helper.to_array(t) for t in graph.initializer})
    bias_of = {
        node.input[0]: node.input[1]
        for node in graph.node
        if node.op_type == "Add" and node.input[1] in e.arrays
    }
    centred = _centred_zero_points(e)
    prologue = e.take()
    replacements: dict[str, list[onnx.NodeProto]] = {}
    for x, matmuls in _linear_groups(graph).items():
        replacements[matmuls[0].name] = _quantize_group(e, x, matmuls, peaks[x], bias_of, centred)
        replacements.update((m.name, []) for m in matmuls[1:])
    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] == WORD_EMBEDDINGS:
            replacements[node.name] = _int8_gather(e, node)

    nodes = prologue + [new for node in graph.node for new in replacements.get(node.name, [node])]
    used = {name for node in nodes for name in node.input}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    del out.graph.initializer[:]
    out.graph.initializer.extend(
        numpy_helper.from_array(a, name) for name, a in e.arrays.items() if name in used
    )
    out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return out
