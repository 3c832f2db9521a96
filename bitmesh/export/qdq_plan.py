"""Decide, per layer, how its quantization is written in ONNX (pure, no graph).

=========================  ======================================================
weight ``qdq``             codes in the format's ONNX type + DequantizeLinear
weight ``dequantized``     no ONNX type (int3, int5..7), a cast (bf16, fp16), or
                           asked for (``dequantize_formats``): the fake-quantized
                           float32 values
weight ``float``           fp32: untouched
weight ``blocked``         a block format in its own bits (codes, block scales,
                           zero points): ``blocked_weights`` says how
activation ``qdq``         QuantizeLinear/DequantizeLinear in the format's type
activation ``qdq_clipped`` INT without an ONNX type: INT8/UINT8 codes, a Clip to
                           the format's range, DequantizeLinear (exact, e.g. int3)
activation ``cast``        bf16/fp16: a Cast there and back
activation ``blocked``     a block format: scales from each block of the live
                           input, computed with standard ops (``blocked_inputs``)
``not_represented``        FP without a usable ONNX type (FP6/FP4 when asked to
                           dequantize them): the input stays float32
activation ``float``       fp32: nothing to do
=========================  ======================================================

The opset follows from the types: by default the lowest each type runs at in
onnxruntime (``OnnxQuantType.default_opset``), at least the lowest the
standard allows when the caller names one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import onnx

from bitmesh.errors import InvalidArgument
from bitmesh.export.blocked_forms import blocked_form_of
from bitmesh.export.onnx_types import (
    CAST_TYPES,
    MIN_EXPORT_OPSET,
    OnnxQuantType,
    qdq_type_of,
)
from bitmesh.formats import FormatKind, NumericFormat, QuantOption, get_format
from bitmesh.quant.fake_quant import quant_range

__all__ = [
    "ActivationExport",
    "LayerExport",
    "LayerPlan",
    "WeightExport",
    "choose_opset",
    "plan_layer",
]

WeightExport = Literal["qdq", "blocked", "dequantized", "float"]
ActivationExport = Literal["qdq", "qdq_clipped", "blocked", "cast", "not_represented", "float"]

#: Activation exports that need the layer's clip (a block format's: NVFP4's
#: tensor range; the others ignore it).
USES_CLIP: frozenset[str] = frozenset({"qdq", "qdq_clipped", "blocked"})
#: Clip and Cast on the types used here exist since opset 13.
_CLIP_CAST_OPSET = 13


@dataclass(frozen=True)
class LayerExport:
    """How one configured layer was written (see the module docstring)."""

    layer: str
    weight_format: str
    granularity: str
    weight: WeightExport
    weight_onnx_type: str | None
    activation_format: str
    activation: ActivationExport
    activation_onnx_type: str | None
    activation_clip: float | None
    reason: str


@dataclass(frozen=True)
class LayerPlan:
    """A layer's report entry plus what the graph rewrite needs."""

    entry: LayerExport
    option: QuantOption
    weight_type: OnnxQuantType | None
    activation_type: OnnxQuantType | None

    def opset(self, *, default: bool) -> int:
        """The lowest opset the standard allows, or (``default``) the one to pick."""
        needed = [MIN_EXPORT_OPSET]
        for qtype in (self.weight_type, self.activation_type):
            if qtype is not None:
                needed.append(qtype.default_opset if default else qtype.min_opset)
        if self.entry.activation in ("qdq_clipped", "cast"):
            needed.append(_CLIP_CAST_OPSET)
        return max(needed)


def _plan_weight(
    fmt: NumericFormat, dequantize: frozenset[str]
) -> tuple[WeightExport, OnnxQuantType | None, str]:
    if fmt.is_blocked:
        form = blocked_form_of(fmt)
        if form is not None and fmt.name not in dequantize:
            return "blocked", form.codes, form.description
        if form is not None:
            return "dequantized", None, f"{fmt.name} weights stored as dequantized float32 (asked)"
        return (
            "dequantized",
            None,
            f"onnxruntime 1.31 cannot run {fmt.name} in its own bits (no kernel for its "
            "element type): weights stored as dequantized float32, the format in the metadata",
        )
    qtype = qdq_type_of(fmt)
    if fmt.is_identity:
        return "float", None, ""
    if qtype is not None and fmt.name not in dequantize:
        return "qdq", qtype, ""
    if qtype is not None:
        why = f"{fmt.name} weights stored as dequantized float32 (dequantize_formats)"
    elif fmt.kind is FormatKind.NATIVE:
        why = f"{fmt.name} weights stored as their float32 values (a cast has no scale)"
    else:
        why = f"ONNX has no {fmt.name} type: weights stored as dequantized float32"
    return "dequantized", None, why


def _container(fmt: NumericFormat) -> OnnxQuantType:
    """INT8 or UINT8: the type whose codes hold a narrower INT format's."""
    qtype = qdq_type_of(get_format("int8" if fmt.signed else "uint8"))
    assert qtype is not None
    return qtype


def _plan_activation(
    fmt: NumericFormat, dequantize: frozenset[str]
) -> tuple[ActivationExport, OnnxQuantType | None, str]:
    if fmt.is_blocked:
        why = (
            f"{fmt.name} input quantization computed in the graph from each block of the live "
            "input (standard ops: onnxruntime has no block-scaled QuantizeLinear)"
        )
        return "blocked", None, why
    qtype = qdq_type_of(fmt)
    if fmt.is_identity:
        return "float", None, ""
    if qtype is not None and fmt.name not in dequantize:
        return "qdq", qtype, ""
    if fmt.kind is FormatKind.NATIVE:
        return "cast", CAST_TYPES[fmt.name], ""
    if fmt.kind is FormatKind.INT:
        container = _container(fmt)
        lo, hi = quant_range(fmt)
        why = (
            f"{fmt.name} input as {container.onnx_name} codes clipped to "
            f"[{int(lo)}, {int(hi)}] (exact)"
        )
        return "qdq_clipped", container, why
    why = f"{fmt.name} input quantization is not represented: the input stays float32"
    return "not_represented", None, why


def plan_layer(layer: str, option: QuantOption, dequantize: frozenset[str]) -> LayerPlan:
    """How ``layer`` will be written; ``activation_clip`` is left for the caller."""
    weight, weight_type, weight_why = _plan_weight(option.weight, dequantize)
    activation, activation_type, activation_why = _plan_activation(option.activation, dequantize)
    entry = LayerExport(
        layer=layer,
        weight_format=option.weight.name,
        granularity=option.granularity.value,
        weight=weight,
        weight_onnx_type=None if weight_type is None else weight_type.onnx_name,
        activation_format=option.activation.name,
        activation=activation,
        activation_onnx_type=None if activation_type is None else activation_type.onnx_name,
        activation_clip=None,
        reason="; ".join(why for why in (weight_why, activation_why) if why),
    )
    return LayerPlan(entry, option, weight_type, activation_type)


def choose_opset(plans: list[LayerPlan], opset: int | None) -> int:
    """``opset`` checked against the plans, or the default the plans call for."""
    if opset is None:
        return max([MIN_EXPORT_OPSET, *(p.opset(default=True) for p in plans)])
    needed = max([MIN_EXPORT_OPSET, *(p.opset(default=False) for p in plans)])
    if opset < needed:
        layer = "the exporter"
        if plans:
            worst = max(plans, key=lambda p: p.opset(default=False))
            layer = f"layer {worst.entry.layer!r} ({worst.option.key})"
        raise InvalidArgument(
            f"opset {opset} is too old for this configuration: {layer} needs opset "
            f"{needed}; omit opset to get the lowest that works"
        )
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise InvalidArgument(
            f"opset {opset} is newer than onnx {onnx.__version__} knows ({newest})"
        )
    return opset
