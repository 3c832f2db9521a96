"""Numeric formats, weight/activation options and the registry that names them.

Formats are small frozen value objects rather than strings or ``torch.dtype``s
so that the torch-free solver, the protos' converters and the torch
quantizers all speak about the same thing. This module must never import
torch: the solver image does not have it.

Conventions (METHODS.md section 1):

- ``INT``: integers with zero point 0. Signed formats are symmetric in scale
  (``s = clip / qmax``) but use the full two's-complement range
  ``[-2^(b-1), 2^(b-1) - 1]`` as HAWQ-V3 does; unsigned formats
  (``uintN``, for post-ReLU activations) use ``[0, 2^b - 1]``. ``max_value``
  is ``qmax``.
- ``FP``: scaled ExMy mini-floats (1 sign bit), OCP conventions: E5M2 keeps
  IEEE inf/NaN, E4M3 is the "fn" variant (no inf, NaN only at S.1111.111),
  the FP6/FP4 formats have neither, so their all-ones exponent holds normal
  numbers. ``max_value`` is the largest finite magnitude.
- ``NATIVE``: fp32/bf16/fp16, a dtype cast with no scale, so a search can
  leave a layer in high precision. fp32 is the identity.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from bitmesh.errors import InvalidArgument

__all__ = [
    "FORMATS",
    "FormatKind",
    "Granularity",
    "NumericFormat",
    "QuantOption",
    "format_from_spec",
    "get_format",
    "parse_option",
    "parse_options",
]


class FormatKind(StrEnum):
    """How a format turns a real number into a representable one."""

    INT = "int"
    FP = "fp"
    NATIVE = "native"


@dataclass(frozen=True)
class NumericFormat:
    """One numeric format; see the module docstring for the conventions.

    For INT formats ``exponent_bits``, ``mantissa_bits`` and ``bias`` are 0 and
    ``max_value`` is ``qmax``. For FP and NATIVE formats they describe the
    IEEE-like layout (1 sign bit + exponent + mantissa).
    """

    name: str
    kind: FormatKind
    bits: int
    signed: bool
    exponent_bits: int
    mantissa_bits: int
    bias: int
    max_value: float

    def __post_init__(self) -> None:
        if self.bits <= 0:
            raise InvalidArgument(f"format {self.name!r}: bits must be positive, got {self.bits}")
        if self.kind is not FormatKind.INT and (
            self.bits != 1 + self.exponent_bits + self.mantissa_bits
        ):
            raise InvalidArgument(
                f"format {self.name!r}: bits ({self.bits}) must equal 1 sign bit + "
                f"{self.exponent_bits} exponent + {self.mantissa_bits} mantissa bits"
            )

    @property
    def qmax(self) -> int:
        """Largest integer code (INT only): 2^(b-1) - 1 signed, 2^b - 1 unsigned."""
        self._require(FormatKind.INT, "qmax")
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def qmin(self) -> int:
        """Smallest integer code (INT only): -2^(b-1) signed, 0 unsigned."""
        self._require(FormatKind.INT, "qmin")
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def min_normal(self) -> float:
        """Smallest positive normal magnitude, 2^(1 - bias) (FP and NATIVE)."""
        self._require_float("min_normal")
        return 2.0 ** (1 - self.bias)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive subnormal magnitude, 2^(1 - bias - mantissa_bits)."""
        self._require_float("min_subnormal")
        return 2.0 ** (1 - self.bias - self.mantissa_bits)

    @property
    def is_quantized(self) -> bool:
        """True when the format needs a scale (INT and FP); NATIVE formats are
        plain dtype casts (bf16, fp16) or the identity (fp32)."""
        return self.kind is not FormatKind.NATIVE

    @property
    def is_identity(self) -> bool:
        """True for fp32: fake quantization leaves the tensor unchanged."""
        return self.kind is FormatKind.NATIVE and self.bits == 32

    def _require(self, kind: FormatKind, what: str) -> None:
        if self.kind is not kind:
            raise InvalidArgument(f"{what} is defined for {kind.value} formats, not {self.name}")

    def _require_float(self, what: str) -> None:
        if self.kind is FormatKind.INT:
            raise InvalidArgument(f"{what} is defined for floating-point formats, not {self.name}")


def _int_format(bits: int, signed: bool) -> NumericFormat:
    qmax = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    return NumericFormat(
        name=f"{'int' if signed else 'uint'}{bits}",
        kind=FormatKind.INT,
        bits=bits,
        signed=signed,
        exponent_bits=0,
        mantissa_bits=0,
        bias=0,
        max_value=float(qmax),
    )


def _fp_format(
    name: str, exponent_bits: int, mantissa_bits: int, bias: int, max_value: float
) -> NumericFormat:
    return NumericFormat(
        name=name,
        kind=FormatKind.FP,
        bits=1 + exponent_bits + mantissa_bits,
        signed=True,
        exponent_bits=exponent_bits,
        mantissa_bits=mantissa_bits,
        bias=bias,
        max_value=max_value,
    )


def _native_format(
    name: str, exponent_bits: int, mantissa_bits: int, bias: int, max_value: float
) -> NumericFormat:
    return NumericFormat(
        name=name,
        kind=FormatKind.NATIVE,
        bits=1 + exponent_bits + mantissa_bits,
        signed=True,
        exponent_bits=exponent_bits,
        mantissa_bits=mantissa_bits,
        bias=bias,
        max_value=max_value,
    )


def _build_registry() -> dict[str, NumericFormat]:
    formats = [_int_format(b, s) for s in (True, False) for b in range(2, 9)]
    formats += [
        # The values are METHODS.md section 1's table (OCP conventions).
        _fp_format("e5m2", 5, 2, 15, 57344.0),
        _fp_format("e4m3", 4, 3, 7, 448.0),
        _fp_format("e3m2", 3, 2, 3, 28.0),
        _fp_format("e2m3", 2, 3, 1, 7.5),
        _fp_format("e2m1", 2, 1, 1, 6.0),
        _native_format("bf16", 8, 7, 127, (2.0 - 2.0**-7) * 2.0**127),
        _native_format("fp16", 5, 10, 15, 65504.0),
        _native_format("fp32", 8, 23, 127, (2.0 - 2.0**-23) * 2.0**127),
    ]
    return {f.name: f for f in formats}


FORMATS: Mapping[str, NumericFormat] = MappingProxyType(_build_registry())
"""Every known format by canonical name (int2..int8, uint2..uint8, e5m2,
e4m3, e3m2, e2m3, e2m1, bf16, fp16, fp32)."""

# Aliases are matched after lower-casing and dropping "_", "-", "." and spaces.
_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "fp8e4m3": "e4m3",
        "fp8e4m3fn": "e4m3",
        "e4m3fn": "e4m3",
        "float8e4m3fn": "e4m3",
        "fp8e5m2": "e5m2",
        "float8e5m2": "e5m2",
        "fp6e3m2": "e3m2",
        "fp6e2m3": "e2m3",
        "fp4": "e2m1",
        "fp4e2m1": "e2m1",
        "float32": "fp32",
        "float": "fp32",
        "bfloat16": "bf16",
        "float16": "fp16",
        "half": "fp16",
    }
)


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", name.lower())


def get_format(name: str) -> NumericFormat:
    """Look a format up by canonical name or alias, case-insensitively.

    Raises InvalidArgument naming the known formats when nothing matches, so
    the user can fix a typo in a request or on the command line.
    """
    key = _normalise(name)
    key = _ALIASES.get(key, key)
    fmt = FORMATS.get(key)
    if fmt is None:
        raise InvalidArgument(
            f"unknown numeric format {name!r}; known formats: {', '.join(FORMATS)} "
            f"(aliases: {', '.join(sorted(_ALIASES))})"
        )
    return fmt


def format_from_spec(
    kind: FormatKind | str,
    *,
    bits: int | None = None,
    signed: bool | None = None,
    exponent_bits: int | None = None,
    mantissa_bits: int | None = None,
) -> NumericFormat:
    """Resolve a structured description (as a proto carries it) to a registry entry.

    Every argument given must match; ``None`` means "any". Exactly one format
    must remain: e.g. ``(INT, bits=4, signed=False)`` is uint4,
    ``(FP, exponent_bits=4, mantissa_bits=3)`` is e4m3, ``(NATIVE, bits=32)``
    is fp32, while ``(NATIVE, bits=16)`` is ambiguous (bf16 or fp16) and needs
    ``exponent_bits``. FP and NATIVE formats are always signed.
    """
    try:
        kind = FormatKind(kind.lower() if isinstance(kind, str) else kind)
    except ValueError:
        raise InvalidArgument(
            f"unknown format kind {kind!r}; expected one of {[k.value for k in FormatKind]}"
        ) from None
    wanted = {
        "bits": bits,
        "signed": signed,
        "exponent_bits": exponent_bits,
        "mantissa_bits": mantissa_bits,
    }
    given = {k: v for k, v in wanted.items() if v is not None}
    matches = [
        f
        for f in FORMATS.values()
        if f.kind is kind and all(getattr(f, k) == v for k, v in given.items())
    ]
    described = ", ".join(f"{k}={v}" for k, v in given.items()) or "no fields"
    if not matches:
        candidates = ", ".join(f.name for f in FORMATS.values() if f.kind is kind)
        raise InvalidArgument(
            f"no {kind.value} format with {described}; {kind.value} formats: {candidates}"
        )
    if len(matches) > 1:
        raise InvalidArgument(
            f"{kind.value} format with {described} is ambiguous "
            f"({', '.join(f.name for f in matches)}); give more fields"
        )
    return matches[0]


class Granularity(StrEnum):
    """How many scales a quantized tensor gets: one, or one per output channel."""

    PER_TENSOR = "per_tensor"
    PER_CHANNEL = "per_channel"


_GRANULARITY_SUFFIXES: Mapping[str, Granularity] = MappingProxyType(
    {
        "pt": Granularity.PER_TENSOR,
        "pertensor": Granularity.PER_TENSOR,
        "pc": Granularity.PER_CHANNEL,
        "perchannel": Granularity.PER_CHANNEL,
    }
)


@dataclass(frozen=True)
class QuantOption:
    """One choice for a layer: weight format, activation format, and the
    granularity of the *weight* scale (activations always get one scale per
    tensor, from a running range estimate)."""

    weight: NumericFormat
    activation: NumericFormat
    granularity: Granularity = Granularity.PER_CHANNEL

    def __post_init__(self) -> None:
        if self.weight.kind is FormatKind.INT and not self.weight.signed:
            raise InvalidArgument(
                f"weight format {self.weight.name} is unsigned; weights are quantized "
                f"symmetrically with zero point 0, use int{self.weight.bits}"
            )

    @property
    def key(self) -> str:
        """Stable, unambiguous label: ``"int4/int8"``, ``"e4m3/e4m3:pt"``.

        The ``:pt`` suffix marks per-tensor weight scales; per-channel (the
        default) has none, so ``parse_option(o.key) == o``.
        """
        suffix = ":pt" if self.granularity is Granularity.PER_TENSOR else ""
        return f"{self.weight.name}/{self.activation.name}{suffix}"

    @property
    def weight_bits(self) -> int:
        """Total bits of a weight (what sizes and BOPs count)."""
        return self.weight.bits

    @property
    def activation_bits(self) -> int:
        """Total bits of an activation (what BOPs count)."""
        return self.activation.bits


def parse_option(
    text: str, default_granularity: Granularity = Granularity.PER_CHANNEL
) -> QuantOption:
    """Parse ``"W[/A][:pt|:pc]"``: ``"int4"`` is W int4 / A int4, ``"int4/uint8"``,
    ``"fp8_e4m3/e4m3:pt"``. Names go through :func:`get_format` (aliases allowed).
    """
    body, sep, suffix = text.strip().partition(":")
    granularity = default_granularity
    if sep:
        found = _GRANULARITY_SUFFIXES.get(_normalise(suffix))
        if found is None:
            raise InvalidArgument(
                f"option {text!r}: unknown granularity suffix {suffix!r}; use ':pt' (per "
                "tensor) or ':pc' (per channel)"
            )
        granularity = found
    parts = [p.strip() for p in body.split("/")]
    if len(parts) > 2 or not all(parts):
        raise InvalidArgument(
            f"option {text!r} must be 'W' or 'W/A' (format names) with an optional "
            "':pt'/':pc' suffix, e.g. 'int4/int8' or 'e4m3:pt'"
        )
    weight = get_format(parts[0])
    activation = get_format(parts[-1])
    return QuantOption(weight=weight, activation=activation, granularity=granularity)


def parse_options(
    csv: str, default_granularity: Granularity = Granularity.PER_CHANNEL
) -> list[QuantOption]:
    """Parse a comma-separated list of options (``"int4,int8,e4m3/e4m3:pt"``),
    keeping the order; empty lists and repeated options are rejected since a
    search over them is almost certainly a mistake in the request."""
    items = [item.strip() for item in csv.split(",") if item.strip()]
    if not items:
        raise InvalidArgument(f"no quantization options in {csv!r}; e.g. 'int4,int8'")
    options = [parse_option(item, default_granularity) for item in items]
    keys = [o.key for o in options]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise InvalidArgument(f"options repeated in {csv!r}: {', '.join(repeated)}")
    return options
