"""Block-scaled input quantization as standard ONNX ops (opset 18+).

An input's scales come from each block of the live tensor, so they cannot be
initializers: the graph computes them. onnxruntime 1.31 has no operator for
it (no FLOAT4E2M1 kernel, no FLOAT8E8M0 scale), so the recipes of
``bitmesh.quant.blocked`` are spelt out, exactly:

- blocks: the channel axis moved last (Transpose), padded with zeros to a
  multiple of B (Pad), viewed ``(-1, nb, B)`` (Reshape), ``ReduceMax(Abs)``;
- ``floor(log2 a)``: ``Floor(Log(a) / ln 2)`` corrected by one either way
  against ``Pow(2, e)`` (exact for integer e), so powers of two land right;
- rounding onto an ExMy grid: ``Round(v / step) * step`` with ``step =
  2^(max(floor(log2|v|), 1 - bias) - m)`` (``Round`` is half to even), after
  a Clip to the element's range; integers: ``Round`` and ``Clip``.

The tests check the result against ``fake_quantize_blocked`` bit for bit
through onnxruntime. A Conv's input blocks along dim 1, a Gemm/MatMul's along
its last dim, as ``QuantLayer`` does.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from onnx import helper

from bitmesh.formats import BlockRecipe, FormatKind, NumericFormat, get_format

if TYPE_CHECKING:  # qdq_rewrite imports this module
    from bitmesh.export.qdq_rewrite import GraphEditor as Graph

__all__ = ["blocked_input_nodes"]

_F = onnx.TensorProto.FLOAT


class _Ops:
    """Appends nodes with fresh names; constants as initializers."""

    def __init__(self, graph: Graph, prefix: str) -> None:
        self.graph = graph
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []

    def const(self, value: float | list[int], dtype: Any = np.float32) -> str:
        return self.graph.add_initializer(f"{self.prefix}_c", np.array(value, dtype=dtype))

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        out = self.graph.fresh(f"{self.prefix}_{op_type.lower()}")
        name = self.graph.fresh(f"{self.prefix}_{op_type.lower()}_node")
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name, **attrs))
        return out

    def floor_log2(self, a: str) -> str:
        """Exact floor(log2 a) for a > 0 (-inf for 0)."""
        guess = self.op("Floor", self.op("Div", self.op("Log", a), self.const(math.log(2.0))))
        power = self.op("Pow", self.const(2.0), guess)
        one = self.const(1.0)
        too_big = self.op("Greater", power, a)
        too_small = self.op("LessOrEqual", self.op("Mul", power, self.const(2.0)), a)
        lowered = self.op("Where", too_big, self.op("Sub", guess, one), guess)
        return self.op("Where", too_small, self.op("Add", guess, one), lowered)

    def round_fp(self, v: str, element: NumericFormat) -> str:
        """Saturate and round half to even onto an ExMy grid."""
        limit = element.max_value
        clipped = self.op("Clip", v, self.const(-limit), self.const(limit))
        exponent = self.op(
            "Max", self.floor_log2(self.op("Abs", clipped)), self.const(float(1 - element.bias))
        )
        step = self.op(
            "Pow",
            self.const(2.0),
            self.op("Sub", exponent, self.const(float(element.mantissa_bits))),
        )
        return self.op("Mul", self.op("Round", self.op("Div", clipped, step)), step)


def _mx(ops: _Ops, blocks: str, amax: str, fmt: NumericFormat) -> str:
    shared = ops.op(
        "Clip",
        ops.op("Sub", ops.floor_log2(amax), ops.const(float(fmt.mx_emax))),
        ops.const(-127.0),
        ops.const(127.0),
    )
    scale = ops.op("Pow", ops.const(2.0), shared)
    inverse = ops.op("Pow", ops.const(2.0), ops.op("Neg", shared))
    v = ops.op("Mul", blocks, inverse)
    if fmt.kind is FormatKind.INT:
        codes = ops.op("Round", ops.op("Mul", v, ops.const(64.0)))
        codes = ops.op(
            "Add", ops.op("Clip", codes, ops.const(-127.0), ops.const(127.0)), ops.const(0.0)
        )
        return ops.op("Mul", codes, ops.op("Div", scale, ops.const(64.0)))
    return ops.op("Mul", ops.round_fp(v, fmt.element), scale)


def _nvfp4(ops: _Ops, blocks: str, amax: str, fmt: NumericFormat, clip: float) -> str:
    with torch.no_grad():
        tensor_scale = torch.tensor(clip, dtype=torch.float32) / (6.0 * 448.0)
        if not float(tensor_scale) > 0:
            tensor_scale = torch.ones(())
        reciprocal = 1.0 / tensor_scale
    e4m3 = get_format("e4m3")
    raw = ops.op("Div", ops.op("Div", amax, ops.const(6.0)), ops.const(float(tensor_scale)))
    raw = ops.op("Clip", raw, ops.const(e4m3.min_normal), ops.const(e4m3.max_value))
    block_scale = ops.round_fp(raw, e4m3)
    encode = ops.op("Div", ops.const(float(reciprocal)), block_scale)
    q = ops.round_fp(ops.op("Mul", blocks, encode), fmt.element)
    return ops.op("Mul", q, ops.op("Mul", ops.const(float(tensor_scale)), block_scale))


def _group(ops: _Ops, blocks: str, fmt: NumericFormat) -> str:
    block = fmt.block
    assert block is not None
    top = ops.op("ReduceMax", blocks, ops.const([-1], np.int64), keepdims=1)
    bottom = ops.op("ReduceMin", blocks, ops.const([-1], np.int64), keepdims=1)
    zero = ops.const(0.0)
    if block.zero_point:
        hi, lo = float((1 << fmt.bits) - 1), 0.0
        low = ops.op("Min", bottom, zero)
        raw = ops.op("Div", ops.op("Sub", ops.op("Max", top, zero), low), ops.const(hi))
    else:
        hi = float((1 << (fmt.bits - 1)) - 1)
        lo = -hi - 1.0
        raw = ops.op("Div", ops.op("Max", top, ops.op("Neg", bottom)), ops.const(hi))
    if block.scale_format == "fp16":
        raw = ops.op("Min", raw, ops.const(65504.0))
        raw = ops.op("Cast", ops.op("Cast", raw, to=onnx.TensorProto.FLOAT16), to=_F)
    is_zero = ops.op("Equal", raw, zero)
    divisor = ops.op("Where", is_zero, ops.const(1.0), raw)
    codes = ops.op("Round", ops.op("Div", blocks, divisor))
    if block.zero_point:
        point = ops.op(
            "Clip",
            ops.op("Round", ops.op("Div", ops.op("Neg", low), divisor)),
            zero,
            ops.const(hi),
        )
        codes = ops.op("Clip", ops.op("Add", codes, point), ops.const(lo), ops.const(hi))
        return ops.op("Mul", ops.op("Sub", codes, point), raw)
    codes = ops.op("Clip", ops.op("Add", codes, zero), ops.const(lo), ops.const(hi))
    return ops.op("Mul", codes, raw)


def blocked_input_nodes(
    graph: Graph,
    prefix: str,
    fmt: NumericFormat,
    clip: float,
    source: str,
    *,
    channel_axis: int,
    rank: int,
    channels: int,
) -> tuple[list[onnx.NodeProto], str]:
    """Nodes quantizing ``source`` (rank ``rank``, ``channels`` along
    ``channel_axis``) to the block format ``fmt``; returns (nodes, output)."""
    block = fmt.block
    assert block is not None
    ops = _Ops(graph, prefix)
    axis = channel_axis % rank
    perm = [d for d in range(rank) if d != axis] + [axis]
    moved = source if axis == rank - 1 else ops.op("Transpose", source, perm=perm)
    blocks_count = -(-channels // block.block_size)
    pad = blocks_count * block.block_size - channels
    padded = moved
    if pad:
        pads = [0] * rank + [0] * (rank - 1) + [pad]
        padded = ops.op("Pad", moved, ops.const(pads, np.int64))
    blocks = ops.op("Reshape", padded, ops.const([-1, blocks_count, block.block_size], np.int64))
    amax = ops.op("ReduceMax", ops.op("Abs", blocks), ops.const([-1], np.int64), keepdims=1)
    if block.recipe is BlockRecipe.MX:
        out = _mx(ops, blocks, amax, fmt)
    elif block.recipe is BlockRecipe.NVFP4:
        out = _nvfp4(ops, blocks, amax, fmt, clip)
    else:
        out = _group(ops, blocks, fmt)
    out = ops.op("Reshape", out, ops.op("Shape", padded))
    if pad:
        out = ops.op(
            "Slice",
            out,
            ops.const([0], np.int64),
            ops.const([channels], np.int64),
            ops.const([-1], np.int64),
        )
    if axis != rank - 1:
        inverse = [perm.index(d) for d in range(rank)]
        out = ops.op("Transpose", out, perm=inverse)
    return ops.nodes, out
