"""Fake quantization: round a float tensor onto a format's grid and back.

The math is METHODS.md section 1. For a scaled format with largest code (or
magnitude) ``hi`` and clipping value ``clip``::

    s = clip / hi;  v = clamp(x / s, lo, hi);  x_hat = Q(v) * s

where ``Q`` rounds half to even onto the integers (INT) or onto the ExMy grid
(FP: step ``2^(max(floor(log2|v|), 1 - bias) - mantissa_bits)``, which yields
subnormals). ``clip`` is the max magnitude of the tensor (per tensor or per
channel) unless given. NATIVE formats are dtype casts.

Gradients: straight-through estimator for ``x`` (identity inside the
clipping range, zero outside). When ``clip`` is a tensor that requires grad it
gets the LSQ gradient (Esser et al. 2020, without LSQ's gradient-scale factor,
which the caller can fold into the clip's learning rate): with ``u = x / s``,
``d x_hat / d s`` is ``Q(v) - u`` inside the range and the clamped bound
outside, so ``d x_hat / d clip`` is that divided by ``hi``. Outside the range
this is PACT's gradient (``+-1``). It falls out of autograd with one custom
Function (clamp and round forward, the range mask backward) between the
division by ``s`` and the multiplication by it. The "detach trick"
``v + (Q(v) - v).detach()`` would give the same gradients but turns -0.0 into
+0.0, so it is not bit-exact with the no-grad path and torch's float8 casts.

Work is done in float32 (float64 for float64 inputs) and cast back, so bf16 and
fp16 inputs get the same grid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from bitmesh.errors import FailedPrecondition, InvalidArgument
from bitmesh.formats import FormatKind, Granularity, NumericFormat, QuantOption
from bitmesh.quant.grids import round_fp_grid_ as _round_fp_
from bitmesh.quant.grids import round_int_grid_ as _round_int_
from bitmesh.quant.range_estimators import RangeEstimator, update_range

__all__ = [
    "FakeQuantizer",
    "compute_scale",
    "fake_quantize",
    "quant_range",
    "weight_error_sq",
]

Clip = float | Tensor | None
Role = Literal["weight", "activation"]


# --- rounding onto a grid: bitmesh.quant.grids (shared with the block formats)

_Rounder = Callable[[Tensor, NumericFormat], Tensor]


class _QuantizeSTE(torch.autograd.Function):
    """Forward ``Q(clamp(u, lo, hi))``; backward passes the gradient where
    ``u`` lies in ``[mask_lo, mask_hi]`` (a ``None`` bound is not checked).

    The clamp lives inside the Function (rather than an autograd clamp before
    it) so that a scale taken from the data's own max passes the gradient of
    every element: ``x_max / (x_max / hi)`` can round to just above ``hi``,
    and an autograd clamp would then zero the gradient of the largest weight
    of every channel.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        u: Tensor,
        lo: float,
        hi: float,
        rounder: _Rounder,
        fmt: NumericFormat,
        mask_lo: float | None,
        mask_hi: float | None,
    ) -> Tensor:
        inside: Tensor | None = None
        if mask_lo is not None:
            inside = u >= mask_lo
        if mask_hi is not None:
            inside = u <= mask_hi if inside is None else inside.logical_and_(u <= mask_hi)
        ctx.inside = inside
        return rounder(u.clamp(lo, hi), fmt)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        inside = ctx.inside
        return (grad if inside is None else grad * inside, None, None, None, None, None, None)


# --- scales and ranges --------------------------------------------------------


def quant_range(fmt: NumericFormat) -> tuple[float, float]:
    """(lo, hi) of the scaled domain: [qmin, qmax] for INT, +-max for FP."""
    if fmt.kind is FormatKind.INT:
        return float(fmt.qmin), float(fmt.qmax)
    if fmt.kind is FormatKind.FP:
        return -fmt.max_value, fmt.max_value
    raise InvalidArgument(f"{fmt.name} is a plain dtype cast; it has no quantization range")


def _work_dtype(x: Tensor) -> torch.dtype:
    if not x.is_floating_point():
        raise InvalidArgument(f"fake quantization needs a floating-point tensor, got {x.dtype}")
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _channel_shape(x: Tensor, axis: int) -> list[int]:
    shape = [1] * x.dim()
    shape[axis] = x.shape[axis]
    return shape


def _normalise_axis(x: Tensor, granularity: Granularity, axis: int) -> int:
    if granularity is Granularity.PER_TENSOR:
        return axis
    if x.dim() == 0:
        raise InvalidArgument("per-channel quantization needs a tensor with at least one dim")
    if not -x.dim() <= axis < x.dim():
        raise InvalidArgument(f"channel axis {axis} out of range for a {x.dim()}-d tensor")
    return axis % x.dim()


def _max_clip(x: Tensor, fmt: NumericFormat, granularity: Granularity, axis: int) -> Tensor:
    """The clip that just covers the data: max |x| (max x for unsigned INT,
    whose negatives clamp to 0 anyway), per tensor or per channel. No grad."""
    # max(amax, -amin) reads x twice but allocates no |x| temporary: 2-3x
    # faster than x.abs().amax() and far faster than an inf-norm on this CPU.
    with torch.no_grad():
        unsigned = fmt.kind is FormatKind.INT and not fmt.signed
        if granularity is Granularity.PER_TENSOR:
            top = x.amax()
            return top.clamp_min(0.0) if unsigned else torch.maximum(top, x.amin().neg())
        dims = [d for d in range(x.dim()) if d != axis]
        if not dims:  # a 1-d tensor: every element is its own channel
            return x.clamp_min(0.0) if unsigned else x.abs()
        top = x.amax(dim=dims, keepdim=True)
        if unsigned:
            return top.clamp_min(0.0)
        return torch.maximum(top, x.amin(dim=dims, keepdim=True).neg())


def _given_clip(clip: float | Tensor, x: Tensor, granularity: Granularity, axis: int) -> Tensor:
    if not isinstance(clip, Tensor):
        value = float(clip)
        if not (value > 0.0 and value < float("inf")):
            raise InvalidArgument(f"clip must be a positive finite number, got {clip}")
        return torch.tensor(value, dtype=x.dtype, device=x.device)
    clip = clip.to(dtype=x.dtype, device=x.device)
    if clip.numel() == 1:
        return clip.reshape(())
    if granularity is Granularity.PER_CHANNEL and clip.numel() == x.shape[axis]:
        return clip.reshape(_channel_shape(x, axis))
    raise InvalidArgument(
        f"clip of shape {tuple(clip.shape)} does not fit a {granularity.value} quantization "
        f"of a tensor of shape {tuple(x.shape)} (axis {axis}); give one value, or one per channel"
    )


def _scale(
    x: Tensor, fmt: NumericFormat, granularity: Granularity, axis: int, clip: Clip
) -> Tensor:
    """s = clip / hi, broadcastable to ``x``; a zero (or non-positive) clip
    becomes 1 so an all-zero tensor or channel never divides by zero."""
    c = (
        _max_clip(x, fmt, granularity, axis)
        if clip is None
        else _given_clip(clip, x, granularity, axis)
    )
    c = torch.where(c > 0, c, torch.ones_like(c))
    return c / quant_range(fmt)[1]


def compute_scale(
    x: Tensor,
    fmt: NumericFormat,
    *,
    granularity: Granularity = Granularity.PER_TENSOR,
    axis: int = 0,
    clip: Clip = None,
) -> Tensor:
    """The scale ``s`` fake quantization uses (0-dim, or shaped to broadcast
    per channel), in float32 (float64 for float64 inputs): what an exporter
    writes next to the codes. Block formats: ``blocked.quantize_blocked``."""
    if fmt.block is not None:
        raise InvalidArgument(
            f"{fmt.name} has one scale per block; read them with "
            "bitmesh.quant.blocked.quantize_blocked"
        )
    axis = _normalise_axis(x, granularity, axis)
    return _scale(x.to(_work_dtype(x)), fmt, granularity, axis, clip)


# --- one implementation per format kind ---------------------------------------


class _Impl(Protocol):
    def __call__(
        self, x: Tensor, fmt: NumericFormat, granularity: Granularity, axis: int, clip: Clip
    ) -> Tensor: ...


def _fake_quantize_scaled(
    x: Tensor,
    fmt: NumericFormat,
    granularity: Granularity,
    axis: int,
    clip: Clip,
    rounder: _Rounder,
) -> Tensor:
    if x.numel() == 0:
        return x.clone()
    axis = _normalise_axis(x, granularity, axis)
    lo, hi = quant_range(fmt)
    xw = x.to(_work_dtype(x))
    scale = _scale(xw, fmt, granularity, axis, clip)
    if torch.is_grad_enabled() and (xw.requires_grad or scale.requires_grad):
        # With a data-derived clip every element is inside the range by
        # construction, except the negatives an unsigned format clamps to 0.
        mask_lo, mask_hi = (lo, hi) if clip is not None else (0.0 if lo == 0 else None, None)
        u = xw / scale
        out = _QuantizeSTE.apply(u, lo, hi, rounder, fmt, mask_lo, mask_hi) * scale
    else:
        with torch.no_grad():
            out = rounder((xw / scale).clamp_(lo, hi), fmt).mul_(scale)
    return out.to(x.dtype)


def _fake_quantize_int(
    x: Tensor, fmt: NumericFormat, granularity: Granularity, axis: int, clip: Clip
) -> Tensor:
    return _fake_quantize_scaled(x, fmt, granularity, axis, clip, _round_int_)


def _fake_quantize_fp(
    x: Tensor, fmt: NumericFormat, granularity: Granularity, axis: int, clip: Clip
) -> Tensor:
    return _fake_quantize_scaled(x, fmt, granularity, axis, clip, _round_fp_)


_NATIVE_DTYPES: Mapping[str, torch.dtype] = MappingProxyType(
    {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
)


def _fake_quantize_native(
    x: Tensor, fmt: NumericFormat, granularity: Granularity, axis: int, clip: Clip
) -> Tensor:
    # Granularity and clip mean nothing for a cast; they are accepted so a
    # caller can switch formats without special cases. fp32 is "full
    # precision": the identity, whatever x's dtype.
    if fmt.is_identity:
        return x
    return x.to(_NATIVE_DTYPES[fmt.name]).to(x.dtype)


_IMPLEMENTATIONS: Mapping[FormatKind, _Impl] = MappingProxyType(
    {
        FormatKind.INT: _fake_quantize_int,
        FormatKind.FP: _fake_quantize_fp,
        FormatKind.NATIVE: _fake_quantize_native,
    }
)


def fake_quantize(
    x: Tensor,
    fmt: NumericFormat,
    *,
    granularity: Granularity = Granularity.PER_TENSOR,
    axis: int = 0,
    clip: Clip = None,
    block_axis: int = 1,
) -> Tensor:
    """Quantize ``x`` to ``fmt`` and dequantize, in ``x``'s dtype.

    ``clip`` (a float, a 0-dim tensor, or one value per channel along
    ``axis``) sets the scale; without it the scale comes from max |x| (per
    tensor or per channel), without gradient.

    Block-scaled formats (``fmt.block``) go to ``bitmesh.quant.blocked``:
    blocks run along ``block_axis`` (dim 1: a weight's input channels, a
    convolution input's channels; a Linear input blocks along its last dim),
    ``granularity`` and ``axis`` do not apply, and ``clip`` is only NVFP4's
    tensor range.
    """
    if fmt.block is not None:
        from bitmesh.quant.blocked import fake_quantize_blocked

        amax = clip if fmt.block.tensor_scale else None
        return fake_quantize_blocked(x, fmt, axis=block_axis, tensor_amax=amax)
    return _IMPLEMENTATIONS[fmt.kind](x, fmt, granularity, axis, clip)


def weight_error_sq(
    w: Tensor, fmt: NumericFormat, granularity: Granularity, *, axis: int = 0
) -> float:
    """||Q(w) - w||_2^2 with the scale from max |w| (block formats: from
    each block): the perturbation factor of Omega_l(f) in METHODS.md
    section 3 (summed in float64)."""
    with torch.no_grad():
        diff = fake_quantize(w, fmt, granularity=granularity, axis=axis) - w
        return float(diff.to(torch.float64).square().sum().item())


# --- the module ---------------------------------------------------------------


class FakeQuantizer(nn.Module):
    """A fake quantizer for one tensor role, built from its parts.

    Without an ``estimator`` the scale comes from each input's own range
    (weights). With one (activations) the quantizer keeps a running range in
    the buffer ``running_range``: training-mode calls update it from the
    batch and quantize with the updated range; eval-mode calls use it as
    stored. Running ranges are per tensor.
    """

    running_range: Tensor
    calibrated: Tensor

    def __init__(
        self,
        fmt: NumericFormat,
        granularity: Granularity = Granularity.PER_TENSOR,
        axis: int = 0,
        *,
        estimator: RangeEstimator | str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(estimator, str):
            estimator = RangeEstimator(name=estimator)
        if estimator is not None and granularity is not Granularity.PER_TENSOR:
            raise InvalidArgument(
                "a running activation range is per tensor; use granularity per_tensor"
            )
        self.fmt = fmt
        self.granularity = granularity
        self.axis = axis
        self.estimator = estimator
        if estimator is not None:
            self.register_buffer("running_range", torch.zeros((), dtype=torch.float32))
            self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))

    @classmethod
    def from_option(
        cls,
        option: QuantOption,
        role: Role,
        *,
        estimator: RangeEstimator | str = "minmax",
    ) -> FakeQuantizer:
        """The weight quantizer (option's granularity, output channels on axis
        0) or the activation quantizer (per tensor, running range) of an option."""
        if role == "weight":
            return cls(option.weight, option.granularity, axis=0)
        if role == "activation":
            return cls(option.activation, Granularity.PER_TENSOR, estimator=estimator)
        raise InvalidArgument(f"unknown quantizer role {role!r}; use 'weight' or 'activation'")

    def forward(self, x: Tensor) -> Tensor:
        if self.estimator is None or not self.fmt.is_quantized:
            return fake_quantize(x, self.fmt, granularity=self.granularity, axis=self.axis)
        if self.training:
            unsigned = self.fmt.kind is FormatKind.INT and not self.fmt.signed
            previous = self.running_range if bool(self.calibrated) else None
            self.running_range.copy_(update_range(previous, x, self.estimator, unsigned=unsigned))
            self.calibrated.fill_(True)
        elif not bool(self.calibrated):
            raise FailedPrecondition(
                f"activation quantizer ({self.fmt.name}) has no range yet: run some batches "
                "in training mode (or calibrate) before evaluating"
            )
        return fake_quantize(x, self.fmt, clip=self.running_range)

    def extra_repr(self) -> str:
        parts = [f"fmt={self.fmt.name}", f"granularity={self.granularity.value}"]
        if self.granularity is Granularity.PER_CHANNEL:
            parts.append(f"axis={self.axis}")
        if self.estimator is not None:
            parts.append(f"estimator={self.estimator.name}")
        return ", ".join(parts)
