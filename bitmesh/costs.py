"""The per-layer cost model: model size, bit operations and latency.

METHODS.md section 2, in one place so that every service prices a
configuration the same way:

- size   = P * b_w / 8 bytes, P = the layer's weight elements. Quantization
  scales (one per tensor or one per output channel, 32 bits each) are kept
  apart in ``scale_bytes`` so a total can be compared with HAWQ-V3's numbers,
  which leave them out.
- BOPs   = MACs * b_w * b_a, with MACs for one sample at the model's input
  shape. A floating-point format counts by its total bits, as FLIQS does
  (E4M3 = 8, E2M1 = 4, BF16 = 16, FP32 = 32).
- latency comes from a hardware profile elsewhere; here it is only carried
  and added up.

This module must not import torch: the solver service imports it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from bitmesh.errors import InvalidArgument

__all__ = [
    "SCALE_BITS",
    "FormatLike",
    "LayerCosts",
    "QuantOptionLike",
    "layer_costs",
    "option_costs",
    "scale_count_for",
    "total_costs",
]

#: Bits stored per quantization scale (an FP32 number), as HAWQ-V3 and most
#: integer runtimes keep them.
SCALE_BITS = 32


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
) -> LayerCosts:
    """Cost of one layer with ``parameters`` weights and ``macs`` MACs per sample.

    ``scale_count`` is the number of 32-bit scales the weight quantizer stores
    (0 for an unquantized layer); ``latency_ms`` is passed through from a
    hardware profile.
    """
    _check_count("parameters", parameters)
    _check_count("macs", macs)
    _check_count("scale_count", scale_count)
    _check_bits("weight_bits", weight_bits)
    _check_bits("activation_bits", activation_bits)
    return LayerCosts(
        size_bytes=parameters * weight_bits / 8,
        bops=float(macs * weight_bits * activation_bits),
        latency_ms=float(latency_ms),
        scale_bytes=scale_count * SCALE_BITS / 8,
    )


def _is_per_channel(granularity: object) -> bool:
    """Read a granularity given as an enum (by name or value) or a string."""
    candidates = [
        getattr(granularity, "value", None),
        getattr(granularity, "name", None),
        granularity,
    ]
    for candidate in candidates:
        if isinstance(candidate, str):
            text = candidate.lower()
            if "channel" in text:
                return True
            if "tensor" in text:
                return False
    raise InvalidArgument(f"granularity must be per tensor or per channel, got {granularity!r}")


def _is_unscaled(fmt: FormatLike) -> bool:
    """True for formats stored natively (fp32/bf16/fp16): they need no scale.

    Reads ``NumericFormat.is_quantized`` when present, else a ``kind`` of "native".
    """
    is_quantized = getattr(fmt, "is_quantized", None)
    if isinstance(is_quantized, bool):
        return not is_quantized
    kind = getattr(fmt, "kind", None)
    return str(getattr(kind, "value", kind)).lower() == "native"


def scale_count_for(option: QuantOptionLike, output_channels: int) -> int:
    """Weight scales the option stores: one per output channel or one per tensor.

    A format that is not quantized (native fp32/bf16/fp16) stores none.
    """
    _check_count("output_channels", output_channels)
    if _is_unscaled(option.weight):
        return 0
    return output_channels if _is_per_channel(option.granularity) else 1


def option_costs(
    layer_parameters: int,
    layer_macs: int,
    option: QuantOptionLike,
    output_channels: int,
    *,
    latency_ms: float = 0.0,
) -> LayerCosts:
    """Cost of one layer at one weight/activation option (see ``layer_costs``)."""
    return layer_costs(
        layer_parameters,
        layer_macs,
        option.weight.bits,
        option.activation.bits,
        scale_count=scale_count_for(option, output_channels),
        latency_ms=latency_ms,
    )


def total_costs(costs: Iterable[LayerCosts]) -> LayerCosts:
    """Sum of per-layer costs (layers outside the search included by the caller)."""
    total = LayerCosts.zero()
    for item in costs:
        total = total + item
    return total
