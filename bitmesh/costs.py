"""The per-layer cost model: model size, bit operations and latency.

METHODS.md sections 2 and 10, in one place so that every service prices a
configuration the same way:

- size   = P * b_w / 8 bytes of element codes, P = the layer's weight
  elements, in ``size_bytes``; everything else the weight stores is in
  ``scale_bytes``: one FP32 scale per tensor or per output channel, or for a
  block format every block scale (E8M0, E4M3, FP16 or FP32), every zero point
  (at the element width) and NVFP4's FP32 tensor scale. ``total_bytes`` is
  their sum, what a file holds and what size budgets constrain by default
  (``weights_only`` budgets, HAWQ-V3's convention, leave the scales out).
  Uniform MXFP4 is thus 4.25 bits per weight, NVFP4 4.5 plus 32 bits per
  tensor, INT4 in groups of 32 with FP16 scales 4.5.
- BOPs   = MACs * b_w * b_a, with MACs for one sample at the model's input
  shape. A floating-point format counts by its total bits, as FLIQS does
  (E4M3 = 8, E2M1 = 4, BF16 = 16, FP32 = 32); a block format counts its
  element bits (MXFP4 and NVFP4 = 4, MXFP8 = 8, INT4-g128 = 4): the shared
  scales are applied once per block, outside the multiply-accumulate.
- latency comes from a hardware profile elsewhere; here it is only carried
  and added up.

This module must not import torch: the solver service imports it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from bitmesh.errors import InvalidArgument

__all__ = [
    "SCALE_BITS",
    "SIZE_ACCOUNTING",
    "FormatLike",
    "LayerCosts",
    "QuantOptionLike",
    "SizeAccounting",
    "average_weight_bits",
    "budgeted_bytes",
    "check_size_accounting",
    "layer_costs",
    "option_costs",
    "scale_bits_for",
    "scale_count_for",
    "total_costs",
]

#: Bits stored per quantization scale (an FP32 number), as HAWQ-V3 and most
#: integer runtimes keep them (per tensor and per channel; block formats say
#: their own).
SCALE_BITS = 32

SizeAccounting = Literal["weights_and_scales", "weights_only"]
#: What a size budget counts: everything the weights store (the default), or
#: the element codes only (HAWQ-V3's published sizes leave scales out).
SIZE_ACCOUNTING: tuple[str, ...] = ("weights_and_scales", "weights_only")


def check_size_accounting(value: str) -> SizeAccounting:
    """``value`` if it names a size accounting, else INVALID_ARGUMENT."""
    if value not in SIZE_ACCOUNTING:
        raise InvalidArgument(
            f"unknown size accounting {value!r}; use {' or '.join(SIZE_ACCOUNTING)}"
        )
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class LayerCosts:
    """What one layer (or, summed, a whole model) costs at one configuration.

    Fields are floats because totals of huge models exceed what a proto int32
    holds and because latencies are fractional; all must be finite and >= 0.
    """

    size_bytes: float
    bops: float
    latency_ms: float = 0.0
    scale_bytes: float = 0.0

    def __post_init__(self) -> None:
        for field_name in ("size_bytes", "bops", "latency_ms", "scale_bytes"):
            value = getattr(self, field_name)
            if not math.isfinite(value) or value < 0:
                raise InvalidArgument(
                    f"LayerCosts.{field_name} must be a finite number >= 0, got {value!r}"
                )

    def __add__(self, other: LayerCosts) -> LayerCosts:
        if not isinstance(other, LayerCosts):
            return NotImplemented
        return LayerCosts(
            size_bytes=self.size_bytes + other.size_bytes,
            bops=self.bops + other.bops,
            latency_ms=self.latency_ms + other.latency_ms,
            scale_bytes=self.scale_bytes + other.scale_bytes,
        )

    @classmethod
    def zero(cls) -> LayerCosts:
        """The neutral element of ``+`` (a model with no layers)."""
        return cls(size_bytes=0.0, bops=0.0, latency_ms=0.0, scale_bytes=0.0)

    @property
    def total_bytes(self) -> float:
        """Weights plus scales: what a deployed file of this layer holds."""
        return self.size_bytes + self.scale_bytes


def budgeted_bytes(costs: LayerCosts, accounting: SizeAccounting = "weights_and_scales") -> float:
    """The bytes a size budget compares: all of them, or the codes only."""
    check_size_accounting(accounting)
    return costs.total_bytes if accounting == "weights_and_scales" else costs.size_bytes


def average_weight_bits(
    costs: LayerCosts, parameters: int, accounting: SizeAccounting = "weights_and_scales"
) -> float:
    """Bits per weight of ``costs`` over ``parameters`` weights (MXFP4: 4.25
    with its scales, 4 without); 0 for no weights."""
    return budgeted_bytes(costs, accounting) * 8 / parameters if parameters > 0 else 0.0


class FormatLike(Protocol):
    """The part of ``bitmesh.formats.NumericFormat`` the cost model needs."""

    @property
    def bits(self) -> int: ...


class QuantOptionLike(Protocol):
    """The part of ``bitmesh.formats.QuantOption`` the cost model needs.

    Duck-typed so this module depends on no particular format registry.
    ``granularity`` may be an enum or a string whose value names "tensor" or
    "channel" (e.g. ``Granularity.PER_CHANNEL`` or ``"per_tensor"``).
    """

    @property
    def weight(self) -> FormatLike: ...

    @property
    def activation(self) -> FormatLike: ...

    @property
    def granularity(self) -> object: ...


class _BlockLike(Protocol):
    def block_count(self, weight_shape: Sequence[int]) -> int: ...

    def overhead_bits(self, weight_shape: Sequence[int], element_bits: int) -> int: ...


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{name} must be an integer >= 0, got {value!r}")


def _check_bits(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
        raise InvalidArgument(f"{name} must be an integer number of bits in 1..64, got {value!r}")


def layer_costs(
    parameters: int,
    macs: int,
    weight_bits: int,
    activation_bits: int,
    *,
    scale_count: int = 0,
    latency_ms: float = 0.0,
    overhead_bits: int = 0,
) -> LayerCosts:
    """Cost of one layer with ``parameters`` weights and ``macs`` MACs per sample.

    ``scale_count`` is the number of 32-bit scales the weight quantizer stores
    (0 for an unquantized layer); ``overhead_bits`` any other bits it stores
    (a block format's scales, zero points and tensor scale); both land in
    ``scale_bytes``. ``latency_ms`` is passed through from a hardware profile.
    """
    _check_count("parameters", parameters)
    _check_count("macs", macs)
    _check_count("scale_count", scale_count)
    _check_count("overhead_bits", overhead_bits)
    _check_bits("weight_bits", weight_bits)
    _check_bits("activation_bits", activation_bits)
    return LayerCosts(
        size_bytes=parameters * weight_bits / 8,
        bops=float(macs * weight_bits * activation_bits),
        latency_ms=float(latency_ms),
        scale_bytes=(scale_count * SCALE_BITS + overhead_bits) / 8,
    )


def _granularity_kind(granularity: object) -> str:
    """ "tensor", "channel" or "block" from an enum (by name or value) or a string."""
    candidates = [
        getattr(granularity, "value", None),
        getattr(granularity, "name", None),
        granularity,
    ]
    for candidate in candidates:
        if isinstance(candidate, str):
            text = candidate.lower()
            for kind in ("channel", "tensor", "block"):
                if kind in text:
                    return kind
    raise InvalidArgument(
        f"granularity must be per tensor, per channel or per block, got {granularity!r}"
    )


def _is_unscaled(fmt: FormatLike) -> bool:
    """True for formats stored natively (fp32/bf16/fp16): they need no scale.

    Reads ``NumericFormat.is_quantized`` when present, else a ``kind`` of "native".
    """
    is_quantized = getattr(fmt, "is_quantized", None)
    if isinstance(is_quantized, bool):
        return not is_quantized
    kind = getattr(fmt, "kind", None)
    return str(getattr(kind, "value", kind)).lower() == "native"


def _block_of(option: QuantOptionLike, weight_shape: Sequence[int] | None) -> _BlockLike | None:
    block: _BlockLike | None = getattr(option.weight, "block", None)
    if block is not None and weight_shape is None:
        name = getattr(option.weight, "name", "a block format")
        raise InvalidArgument(
            f"{name} stores one scale per block of input channels; its cost needs the "
            "layer's weight shape (out, in, ...)"
        )
    return block


def scale_count_for(
    option: QuantOptionLike, output_channels: int, weight_shape: Sequence[int] | None = None
) -> int:
    """Weight scales the option stores: one per output channel, one per
    tensor, or (block formats, which need ``weight_shape``) one per block.

    A format that is not quantized (native fp32/bf16/fp16) stores none.
    """
    _check_count("output_channels", output_channels)
    if _is_unscaled(option.weight):
        return 0
    block = _block_of(option, weight_shape)
    if block is not None:
        assert weight_shape is not None
        return block.block_count(weight_shape)
    kind = _granularity_kind(option.granularity)
    if kind == "block":
        raise InvalidArgument("per-block granularity needs a block-scaled weight format")
    return output_channels if kind == "channel" else 1


def scale_bits_for(
    option: QuantOptionLike, output_channels: int, weight_shape: Sequence[int] | None = None
) -> int:
    """Every bit the weight stores beyond its element codes: 32 per scale per
    tensor or channel, or a block format's scales, zero points and tensor
    scale (``BlockScaling.overhead_bits``)."""
    if _is_unscaled(option.weight):
        return 0
    block = _block_of(option, weight_shape)
    if block is not None:
        assert weight_shape is not None
        return block.overhead_bits(weight_shape, option.weight.bits)
    return scale_count_for(option, output_channels) * SCALE_BITS


def option_costs(
    layer_parameters: int,
    layer_macs: int,
    option: QuantOptionLike,
    output_channels: int,
    *,
    latency_ms: float = 0.0,
    weight_shape: Sequence[int] | None = None,
) -> LayerCosts:
    """Cost of one layer at one weight/activation option (see ``layer_costs``).

    ``weight_shape`` (out, in, ...) is needed for block formats, whose scales
    are counted per block of input channels."""
    _check_count("output_channels", output_channels)
    return layer_costs(
        layer_parameters,
        layer_macs,
        option.weight.bits,
        option.activation.bits,
        latency_ms=latency_ms,
        overhead_bits=scale_bits_for(option, output_channels, weight_shape),
    )


def total_costs(costs: Iterable[LayerCosts]) -> LayerCosts:
    """Sum of per-layer costs (layers outside the search included by the caller)."""
    total = LayerCosts.zero()
    for item in costs:
        total = total + item
    return total
