"""Block-scaled weights in ONNX: the most faithful form onnxruntime 1.31 runs.

Measured on onnxruntime 1.31.1 (CPU) with onnx 1.23: ``DequantizeLinear``
with ``axis``/``block_size`` (opset 21) runs for INT4/UINT4/INT8/UINT8 (and
INT2/UINT2 from opset 25) and FLOAT8E4M3FN/FLOAT8E5M2 codes, with FP32 or
FP16 scales, a UINT zero point, a partial last block (scale dim
``ceil(C / B)``) and scales computed in the graph. It has no kernel for
FLOAT4E2M1 (opset 23), none for a FLOAT8E8M0 scale (opset 24-25, with
``output_dtype``), refuses an E4M3 scale, and does not load FLOAT6 (opset 28,
IR 14). So each format is written as:

==============  ===========================================================
per-group INT   codes in INTb/UINTb, the FP16 (or FP32) scales as stored
                (FP16 cast to float in the graph), UINTb zero points:
                ``DequantizeLinear(axis=1, block_size=g)``
MXFP8, MXINT8   FP8 (INT8) codes; the E8M0 scales as UINT8 exponent codes,
                decoded ``2^(code - 127)`` in the graph (times 2^-6 for INT8)
MXFP4, NVFP4    E2M1 codes as UINT4 (sign bit and a 3-bit magnitude index);
                a 16-entry table maps them to twice their value as INT8 (E2M1
                values times 2 are the integers 0..12), which a blocked
                ``DequantizeLinear`` scales by half the block scale. MXFP4's
                scales are E8M0 codes as above; NVFP4's block scales are
                FLOAT8E4M3FN, decoded per tensor by ``DequantizeLinear`` with
                the FP32 tensor scale
MXFP6, INT3/5-7 not runnable in their own bits here: dequantized float32
==============  ===========================================================

Every stored tensor has the bits the cost model counts (E8M0 and E4M3 scales
8, FP16 16, codes their element width), and the decoded weights equal
``fake_quantize``'s bit for bit (the tests check it through onnxruntime). The
decode table and the constants are shared by the whole graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from onnx import helper
from torch import Tensor

from bitmesh.export.blocked_forms import BlockedForm, blocked_form_of
from bitmesh.export.onnx_types import qdq_type_of
from bitmesh.formats import BlockRecipe, FormatKind, NumericFormat, get_format
from bitmesh.quant.blocked import BlockCodes, quantize_blocked

if TYPE_CHECKING:  # qdq_rewrite imports this module
    from bitmesh.export.qdq_rewrite import GraphEditor as Graph

__all__ = ["BlockedForm", "blocked_form_of", "blocked_nodes"]

#: E2M1 code (sign << 3 | magnitude index) -> twice its value.
_E2M1_TIMES_TWO = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.int8)
_LUT_NAME = "bitmesh.e2m1_times_two"


class _Builder:
    """Adds initializers and nodes for one layer."""

    def __init__(self, graph: Graph, layer: str) -> None:
        self.graph = graph
        self.layer = layer
        self.nodes: list[onnx.NodeProto] = []

    def tensor(self, suffix: str, array: np.ndarray) -> str:
        return self.graph.add_initializer(f"{self.layer}.weight_{suffix}", array)

    def shared(self, name: str, array: np.ndarray) -> str:
        """A constant the whole graph shares (added once)."""
        if self.graph.initializer(name) is None:
            self.graph.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        out = output or self.graph.fresh(f"{self.layer}.weight_{op.lower()}")
        name = self.graph.fresh(f"{self.layer}.weight_{op.lower()}_node")
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out


def _onnx_layout(values: Tensor, codes: BlockCodes) -> np.ndarray:
    """A per-block tensor as ``(out, nb, *kernel)`` (ONNX's blocked layout)."""
    return codes.per_block(values).contiguous().numpy()


def _codes(codes: BlockCodes) -> np.ndarray:
    return codes.elements_in_shape().numpy()


def _e8m0_scale(b: _Builder, codes: BlockCodes, factor: float) -> str:
    """E8M0 exponent codes as UINT8, decoded to ``2^(code - 127) * factor``."""
    exponent = torch.log2(codes.block_scale).round()
    stored = b.tensor("scale_e8m0", (_onnx_layout(exponent, codes) + 127).astype(np.uint8))
    as_float = b.node("Cast", [stored], to=onnx.TensorProto.FLOAT)
    unbiased = b.node("Sub", [as_float, b.shared("bitmesh.e8m0_bias", np.array(127.0, np.float32))])
    power = b.node("Pow", [b.shared("bitmesh.two", np.array(2.0, np.float32)), unbiased])
    if factor == 1.0:
        return power
    constant = b.shared(f"bitmesh.times_{factor:g}", np.array(factor, np.float32))
    return b.node("Mul", [power, constant])


def _e2m1_indices(values: np.ndarray) -> np.ndarray:
    magnitudes = np.abs(values)
    index = np.searchsorted(np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32), magnitudes)
    return (index + 8 * np.signbit(values) * (magnitudes > 0)).astype(np.uint8)


def blocked_nodes(
    graph: Graph, layer: str, fmt: NumericFormat, form: BlockedForm, weight: Tensor, output: str
) -> list[onnx.NodeProto]:
    """Initializers (added to ``graph``) and nodes computing the decoded weight
    into ``output``; the caller inserts the nodes."""
    block = fmt.block
    assert block is not None
    with torch.no_grad():
        codes = quantize_blocked(weight.detach().to(torch.float32).cpu(), fmt, axis=1)
    b = _Builder(graph, layer)
    attrs = {"axis": 1, "block_size": block.block_size}
    if block.recipe is BlockRecipe.GROUP:
        qdtype = form.codes.numpy_dtype
        inputs = [b.tensor("quantized", _codes(codes).astype(qdtype))]
        scales = _onnx_layout(codes.scale, codes)
        if block.scale_format == "fp16":
            stored = b.tensor("scale_fp16", scales.astype(np.float16))
            inputs.append(b.node("Cast", [stored], to=onnx.TensorProto.FLOAT))
        else:
            inputs.append(b.tensor("scale", scales.astype(np.float32)))
        if codes.zero_point is not None:
            inputs.append(
                b.tensor("zero_point", _onnx_layout(codes.zero_point, codes).astype(qdtype))
            )
        b.node("DequantizeLinear", inputs, output, **attrs)
        return b.nodes
    if fmt.element.name == "e2m1":
        stored = b.tensor("quantized", _e2m1_indices(_codes(codes)).astype(form.codes.numpy_dtype))
        index = b.node("Cast", [stored], to=onnx.TensorProto.INT32)
        doubled = b.node("Gather", [b.shared(_LUT_NAME, _E2M1_TIMES_TWO), index])
        if block.tensor_scale:
            assert codes.tensor_scale is not None
            e4m3 = get_format("e4m3")
            e4m3_type = qdq_type_of(e4m3)
            assert e4m3_type is not None
            block_scales = b.tensor(
                "block_scale_e4m3",
                _onnx_layout(codes.block_scale, codes).astype(e4m3_type.numpy_dtype),
            )
            tensor_scale = b.tensor(
                "tensor_scale", codes.tensor_scale.reshape(()).numpy().astype(np.float32)
            )
            decoded = b.node("DequantizeLinear", [block_scales, tensor_scale])
            half = b.shared("bitmesh.times_0.5", np.array(0.5, np.float32))
            scale = b.node("Mul", [decoded, half])
        else:
            scale = _e8m0_scale(b, codes, 0.5)
        b.node("DequantizeLinear", [doubled, scale], output, **attrs)
        return b.nodes
    qdtype = form.codes.numpy_dtype
    stored = b.tensor("quantized", _codes(codes).astype(qdtype))
    factor = 2.0**-6 if fmt.kind is FormatKind.INT else 1.0
    b.node("DequantizeLinear", [stored, _e8m0_scale(b, codes, factor)], output, **attrs)
    return b.nodes
