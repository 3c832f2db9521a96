"""Which block formats onnxruntime 1.31 runs in their own bits, and how
(torch-free: the pipeline asks before any training; ``blocked_weights``
writes the graph and documents the measurements)."""

from __future__ import annotations

from dataclasses import dataclass

from bitmesh.export.onnx_types import OnnxQuantType, qdq_type_of
from bitmesh.formats import BlockRecipe, FormatKind, NumericFormat, get_format

__all__ = ["BlockedForm", "blocked_form_of"]


@dataclass(frozen=True)
class BlockedForm:
    """How one block format is written: the codes' ONNX type (its
    ``min_opset`` is the opset the form needs) and a description."""

    codes: OnnxQuantType
    description: str


#: DequantizeLinear takes ``block_size`` from opset 21.
_BLOCKED_OPSET = 21


def _blocked_type(qtype: OnnxQuantType) -> OnnxQuantType:
    return OnnxQuantType(
        qtype.onnx_name, max(qtype.min_opset, _BLOCKED_OPSET), runtime_opset=qtype.runtime_opset
    )


def blocked_form_of(fmt: NumericFormat) -> BlockedForm | None:
    """The runnable form of a block format, or None (dequantize it)."""
    block = fmt.block
    if block is None:
        return None
    if block.recipe is BlockRecipe.GROUP:
        qtype = qdq_type_of(fmt.element)
        if qtype is None:
            return None
        scale = "FP16" if block.scale_format == "fp16" else "FP32"
        zp = f", {qtype.onnx_name} zero points" if block.zero_point else ""
        return BlockedForm(
            _blocked_type(qtype),
            f"{qtype.onnx_name} codes, {scale} scales{zp}, DequantizeLinear block_size "
            f"{block.block_size}",
        )
    if fmt.element.name in ("e4m3", "e5m2") or fmt.kind is FormatKind.INT:
        qtype = qdq_type_of(get_format("int8") if fmt.kind is FormatKind.INT else fmt.element)
        assert qtype is not None
        return BlockedForm(
            _blocked_type(qtype),
            f"{qtype.onnx_name} codes, E8M0 scales as UINT8 exponents, DequantizeLinear "
            "block_size 32",
        )
    if fmt.element.name == "e2m1":
        scales = (
            "FLOAT8E4M3FN block scales and an FP32 tensor scale"
            if block.tensor_scale
            else "E8M0 scales as UINT8 exponents"
        )
        return BlockedForm(
            OnnxQuantType("UINT4", _BLOCKED_OPSET),
            f"E2M1 codes as UINT4 through a 16-entry table, {scales}, DequantizeLinear "
            f"block_size {block.block_size}",
        )
    return None
