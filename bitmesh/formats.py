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

Block-scaled formats (METHODS.md section 10) are an element format plus a
:class:`BlockScaling`: consecutive elements along the reduction dimension
share one stored scale. They live in :data:`BLOCK_FORMATS` (``FORMATS`` keeps
the element formats, so code that walks every element grid is unchanged) and
are looked up by the same :func:`get_format`:

- ``mxfp8_e4m3``, ``mxfp8_e5m2``, ``mxfp6_e3m2``, ``mxfp6_e2m3``, ``mxfp4``
  (E2M1) and ``mxint8``: OCP Microscaling v1.0, blocks of 32 with an E8M0
  (power-of-two) scale. ``mxint8``'s elements are 8-bit two's complement
  codes with an implicit 2^-6 (its ``max_value`` is the code 127).
- ``nvfp4``: E2M1 in blocks of 16, an E4M3 block scale and one FP32 scale per
  tensor (NVIDIA's recipe).
- ``int{b}_g{g}[_fp32][_zp]``, b in 2..8, g in 32/64/128: per-group integers
  with one FP16 scale per group (``_fp32``: FP32 scales); ``_zp`` adds a
  b-bit zero point per group, and the codes are then unsigned (asymmetric).

Where blocks run: along dim 1 of a weight, the input channels, which is the
reduction dimension of a Linear and, for a convolution, the innermost part of
its reduction C x kh x kw in the channels-last order tensor cores read: each
kernel position of each output channel gets its own blocks (exactly ONNX's
``DequantizeLinear(axis=1, block_size=B)``). Activations block along their
channel axis. The last block of a row may be partial (C not a multiple of
the block size): it is padded with zeros for the scale computation, which
leaves its max |x| unchanged, and costs a full scale. See
:meth:`BlockScaling.blocks_along`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from types import MappingProxyType

from bitmesh.errors import InvalidArgument

__all__ = [
    "BLOCK_FORMATS",
    "FORMATS",
    "BlockRecipe",
    "BlockScaling",
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


class BlockRecipe(StrEnum):
    """How a block's shared scale is derived (one fake quantizer per recipe)."""

    #: OCP MX v1.0: X = 2^(floor(log2 amax) - emax_elem), stored as E8M0.
    MX = "mx"
    #: NVIDIA NVFP4: FP32 tensor scale amax / (6 * 448), E4M3 block scale
    #: amax_block / 6 / tensor scale (clamped to [2^-6, 448]).
    NVFP4 = "nvfp4"
    #: Per-group integers: s = amax / qmax (or range / (2^b - 1) with a zero
    #: point), rounded to the scale's storage format.
    GROUP = "group"


#: Bits of each scale storage format a block format may use.
SCALE_FORMAT_BITS: Mapping[str, int] = MappingProxyType(
    {"e8m0": 8, "e4m3": 8, "fp16": 16, "fp32": 32}
)
#: Bits of NVFP4's per-tensor scale (an FP32 number).
TENSOR_SCALE_BITS = 32
#: Block and group sizes the registry offers for per-group integers.
GROUP_SIZES: tuple[int, ...] = (32, 64, 128)


@dataclass(frozen=True)
class BlockScaling:
    """Which elements share a scale and how that scale is stored.

    ``block_size`` consecutive elements along the reduction dimension share
    one scale in ``scale_format``; ``zero_point`` adds one zero point per
    block at the element width; ``tensor_scale`` adds one FP32 scale for the
    whole tensor (NVFP4). What a tensor stores beyond its element codes is
    :meth:`overhead_bits`, which the cost model counts.
    """

    recipe: BlockRecipe
    block_size: int
    scale_format: str
    zero_point: bool = False
    tensor_scale: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.block_size, bool) or not (
            isinstance(self.block_size, int) and self.block_size >= 1
        ):
            raise InvalidArgument(f"block size must be a positive integer, got {self.block_size!r}")
        if self.scale_format not in SCALE_FORMAT_BITS:
            raise InvalidArgument(
                f"unknown block scale format {self.scale_format!r}; "
                f"use one of {', '.join(SCALE_FORMAT_BITS)}"
            )

    @property
    def scale_bits(self) -> int:
        """Bits of one stored block scale."""
        return SCALE_FORMAT_BITS[self.scale_format]

    def blocks_along(self, length: int, *, allow_partial: bool = True) -> int:
        """Blocks of one row of ``length`` elements: ``ceil(length / block_size)``.

        The partial-block rule: a last block with fewer elements is padded
        with zeros for its scale (the max |x| is unchanged) and stores a full
        scale. With ``allow_partial=False`` (a target whose kernels need whole
        blocks) a length that is not a multiple raises INVALID_ARGUMENT naming
        the block sizes that would divide it.
        """
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise InvalidArgument(f"a blocked dimension needs >= 1 element, got {length!r}")
        if not allow_partial and length % self.block_size:
            fits = [b for b in (16, *GROUP_SIZES) if length % b == 0]
            hint = (
                f"block sizes {', '.join(map(str, fits))} divide it"
                if fits
                else "no offered block size (16, 32, 64, 128) divides it"
            )
            raise InvalidArgument(
                f"the reduction dimension ({length}) is not a multiple of the block size "
                f"{self.block_size} and this target does not pad partial blocks; {hint}, "
                "or use a per-channel format for this layer"
            )
        return -(-length // self.block_size)

    def block_count(self, weight_shape: Sequence[int], *, allow_partial: bool = True) -> int:
        """Blocks of a weight of ``weight_shape``: every (output channel,
        kernel position) row of dim 1 gets :meth:`blocks_along` blocks."""
        shape = tuple(int(d) for d in weight_shape)
        if len(shape) < 2 or any(d < 1 for d in shape):
            raise InvalidArgument(
                f"a block-scaled weight needs a shape (out, in, ...) of positive sizes, got "
                f"{list(shape)}; blocks run along dim 1 (the input channels)"
            )
        rows = math.prod(shape) // shape[1]
        return rows * self.blocks_along(shape[1], allow_partial=allow_partial)

    def overhead_bits(
        self, weight_shape: Sequence[int], element_bits: int, *, allow_partial: bool = True
    ) -> int:
        """Every bit stored beyond the element codes: block scales, zero points
        (``element_bits`` each) and the tensor scale."""
        blocks = self.block_count(weight_shape, allow_partial=allow_partial)
        per_block = self.scale_bits + (element_bits if self.zero_point else 0)
        return blocks * per_block + (TENSOR_SCALE_BITS if self.tensor_scale else 0)

    def describe(self) -> str:
        """A short human description: ``"blocks of 32, e8m0 scale"``."""
        parts = [f"blocks of {self.block_size}", f"{self.scale_format} scale"]
        if self.zero_point:
            parts.append("zero point")
        if self.tensor_scale:
            parts.append("fp32 tensor scale")
        return ", ".join(parts)


@dataclass(frozen=True)
class NumericFormat:
    """One numeric format; see the module docstring for the conventions.

    For INT formats ``exponent_bits``, ``mantissa_bits`` and ``bias`` are 0 and
    ``max_value`` is ``qmax``. For FP and NATIVE formats they describe the
    IEEE-like layout (1 sign bit + exponent + mantissa).

    ``block`` is set for block-scaled formats: the other fields then describe
    the *element* (``bits`` is the element width, what BOPs count), and
    :attr:`element` is the plain registry format of the same grid.
    """

    name: str
    kind: FormatKind
    bits: int
    signed: bool
    exponent_bits: int
    mantissa_bits: int
    bias: int
    max_value: float
    block: BlockScaling | None = None

    def __post_init__(self) -> None:
        if self.bits <= 0:
            raise InvalidArgument(f"format {self.name!r}: bits must be positive, got {self.bits}")
        if self.block is not None and self.kind is FormatKind.NATIVE:
            raise InvalidArgument(f"format {self.name!r}: a native dtype cast has no block scales")
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

    @property
    def is_blocked(self) -> bool:
        """True for block-scaled formats (MX, NVFP4, per-group INT)."""
        return self.block is not None

    @property
    def element(self) -> NumericFormat:
        """The element grid as a plain registry format (itself when not
        blocked): ``mxfp4`` -> ``e2m1``, ``int4_g32`` -> ``int4``,
        ``int4_g32_zp`` -> ``uint4``. ``mxint8``'s codes are ``int8`` (the
        implicit 2^-6 is the MX recipe's)."""
        if self.block is None:
            return self
        if self.kind is FormatKind.INT:
            return FORMATS[f"{'int' if self.signed else 'uint'}{self.bits}"]
        return FORMATS[f"e{self.exponent_bits}m{self.mantissa_bits}"]

    @property
    def mx_emax(self) -> int:
        """emax_elem of OCP MX v1.0: the exponent of the element's largest
        normal (E5M2 15, E4M3 8, E3M2 4, E2M3 2, E2M1 2; INT8 0, since its
        implicit 2^-6 puts the largest code 127 at 1.984375)."""
        if self.kind is FormatKind.INT:
            return 0
        return math.floor(math.log2(self.max_value))

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


def _blocked(name: str, element: NumericFormat, block: BlockScaling) -> NumericFormat:
    """The element format's grid under ``block``'s scales."""
    return replace(element, name=name, block=block)


def _build_block_registry() -> dict[str, NumericFormat]:
    mx = BlockScaling(BlockRecipe.MX, 32, "e8m0")
    formats = [
        _blocked("mxfp8_e4m3", FORMATS["e4m3"], mx),
        _blocked("mxfp8_e5m2", FORMATS["e5m2"], mx),
        _blocked("mxfp6_e3m2", FORMATS["e3m2"], mx),
        _blocked("mxfp6_e2m3", FORMATS["e2m3"], mx),
        _blocked("mxfp4", FORMATS["e2m1"], mx),
        _blocked("mxint8", FORMATS["int8"], mx),
        _blocked(
            "nvfp4", FORMATS["e2m1"], BlockScaling(BlockRecipe.NVFP4, 16, "e4m3", tensor_scale=True)
        ),
    ]
    for bits in range(2, 9):
        for group in GROUP_SIZES:
            for scale in ("fp16", "fp32"):
                for zero_point in (False, True):
                    name = f"int{bits}_g{group}"
                    name += "_fp32" if scale == "fp32" else ""
                    name += "_zp" if zero_point else ""
                    element = FORMATS[f"{'uint' if zero_point else 'int'}{bits}"]
                    block = BlockScaling(BlockRecipe.GROUP, group, scale, zero_point=zero_point)
                    formats.append(_blocked(name, element, block))
    return {f.name: f for f in formats}


BLOCK_FORMATS: Mapping[str, NumericFormat] = MappingProxyType(_build_block_registry())
"""Block-scaled formats by canonical name (see the module docstring): the MX
family, nvfp4 and ``int{2..8}_g{32,64,128}[_fp32][_zp]``."""

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
        "mxfp4e2m1": "mxfp4",
        "mxfp8e4m3fn": "mxfp8_e4m3",
        "nvfp4e2m1": "nvfp4",
        **{
            f"int{b}g{g}fp16{zp}": f"int{b}_g{g}{'_zp' if zp else ''}"
            for b in range(2, 9)
            for g in GROUP_SIZES
            for zp in ("", "zp")
        },
    }
)


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", name.lower())


#: Every format by its normalised name (block names contain "_", which the
#: normalisation drops).
_BY_KEY: Mapping[str, NumericFormat] = MappingProxyType(
    {_normalise(f.name): f for f in (*FORMATS.values(), *BLOCK_FORMATS.values())}
)


def get_format(name: str) -> NumericFormat:
    """Look a format up by canonical name or alias, case-insensitively.

    Raises InvalidArgument naming the known formats when nothing matches, so
    the user can fix a typo in a request or on the command line.
    """
    key = _normalise(name)
    key = _normalise(_ALIASES.get(key, key))
    fmt = _BY_KEY.get(key)
    if fmt is None:
        plain_aliases = sorted(a for a in _ALIASES if not re.match(r"int\dg", a))
        raise InvalidArgument(
            f"unknown numeric format {name!r}; known formats: {', '.join(FORMATS)}; "
            "block-scaled: mxfp8_e4m3, mxfp8_e5m2, mxfp6_e3m2, mxfp6_e2m3, mxfp4, mxint8, "
            "nvfp4, and per-group integers int{2..8}_g{32,64,128} (FP16 scales; add _fp32 "
            "for FP32 scales, _zp for a zero point), e.g. int4_g128 "
            f"(aliases: {', '.join(plain_aliases)})"
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
    must remain (block-scaled formats are named, never matched here):
    e.g. ``(INT, bits=4, signed=False)`` is uint4,
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
    """How many scales a quantized tensor gets: one, one per output channel,
    or (block-scaled formats, fixed by the format) one per block."""

    PER_TENSOR = "per_tensor"
    PER_CHANNEL = "per_channel"
    PER_BLOCK = "per_block"


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
    granularity of the *weight* scale (activations get one scale per tensor,
    from a running range estimate, or a block format's own block scales).

    A block-scaled weight format fixes its granularity: whatever is given
    becomes ``PER_BLOCK`` (so a search-wide "per channel" default applies to
    the other formats and leaves these alone), and ``PER_BLOCK`` without a
    block format is refused.
    """

    weight: NumericFormat
    activation: NumericFormat
    granularity: Granularity = Granularity.PER_CHANNEL

    def __post_init__(self) -> None:
        if self.weight.is_blocked:
            object.__setattr__(self, "granularity", Granularity.PER_BLOCK)
        elif self.granularity is Granularity.PER_BLOCK:
            raise InvalidArgument(
                f"per-block granularity needs a block-scaled weight format (e.g. mxfp4, nvfp4, "
                f"int4_g128), not {self.weight.name}; use per_channel or per_tensor"
            )
        if (
            self.weight.kind is FormatKind.INT
            and not self.weight.signed
            and not self.weight.is_blocked
        ):
            raise InvalidArgument(
                f"weight format {self.weight.name} is unsigned; weights are quantized "
                f"symmetrically with zero point 0, use int{self.weight.bits}"
            )

    @property
    def key(self) -> str:
        """Stable, unambiguous label: ``"int4/int8"``, ``"e4m3/e4m3:pt"``.

        The ``:pt`` suffix marks per-tensor weight scales; per-channel (the
        default) and per-block (implied by the format) have none, so
        ``parse_option(o.key) == o``.
        """
        suffix = ":pt" if self.granularity is Granularity.PER_TENSOR else ""
        return f"{self.weight.name}/{self.activation.name}{suffix}"

    @property
    def weight_bits(self) -> int:
        """Bits of a weight's code (what BOPs count; sizes add the scales,
        see ``bitmesh.costs``). For a block format, the element bits."""
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
    if sep and weight.is_blocked:
        assert weight.block is not None
        raise InvalidArgument(
            f"option {text!r}: {weight.name} has its own block scales "
            f"({weight.block.describe()}); drop the {':' + suffix!r} suffix"
        )
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
