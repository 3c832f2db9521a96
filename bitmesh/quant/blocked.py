"""Fake quantization of block-scaled formats: MX, NVFP4 and per-group integers.

A tensor is viewed as ``(pre, C, post)`` around its block axis (dim 1 of a
weight: the input channels; the channel axis of an activation), ``C`` split
into blocks of ``B`` (the last one padded with zeros for its scale, see
``bitmesh.formats``), so a block's elements are ``[:, j*B:(j+1)*B, :]`` of
one ``(pre, post)`` row. The work runs in a blocks-last copy
``(pre, post, nb, B)`` (channels last, as tensor cores read it): reductions
over the last dim vectorise where the strided ones over ``(pre, nb, B,
post)`` did not (measured 15 ms against 2 ms plus a 3 ms copy for a
512x512x3x3 weight), and the copy is the buffer every later step works in
place; the result is returned as a view in the input's shape (channels-last
strides for a convolution). Each recipe turns a block's max |x| into a
stored scale and rounds the elements in the scaled domain:

- MX (OCP Microscaling v1.0, section 6.3): ``X = 2^(floor(log2 amax) -
  emax_elem)``, the exponent clamped to E8M0's [-127, 127]; elements are
  ``V / X`` rounded half to even onto the element grid and saturated to its
  largest normal (MXINT8: codes ``round(V / X * 64)`` clamped to +-127, the
  symmetric range the microxcaling reference uses). An all-zero block gets
  the smallest scale 2^-127.
- NVFP4 (NVIDIA's recipe in the arithmetic of its kernels, which torchao's
  ``nvfp4_quantize`` reproduces): tensor scale ``s_t = amax_tensor / (6 *
  448)`` in FP32 (1 when the tensor is all zero), block scale
  ``s_b = E4M3(clamp(amax_block / 6 / s_t, 2^-6, 448))`` (never zero or
  subnormal), elements ``E2M1(V * ((1 / s_t) / s_b))`` (half to even,
  saturating at 6), decoded as ``q * (s_t * s_b)``. ``tensor_amax`` (an
  activation's calibrated range) replaces the tensor's own max; elements
  beyond it saturate.
- GROUP: ``s = amax / qmax`` (with a zero point: ``s = (max(x, 0) -
  min(x, 0)) / (2^b - 1)``, ``z = clamp(round(-min / s), 0, 2^b - 1)``),
  rounded to its storage format (FP16 with saturation at 65504, or FP32);
  codes ``clamp(round(V / s) [+ z])`` on the two's-complement (unsigned with a
  zero point) range, decoded as ``(q - z) * s``.

Special values, one rule for every recipe: a block holding a NaN or an
infinity decodes to all NaN (MX: its E8M0 scale is the NaN code 0xFF, which
makes every element NaN, as the spec and the microxcaling reference do); a
GROUP block whose stored scale rounds to zero (far below FP16's range)
decodes to zeros. NVFP4's tensor scale uses the finite elements only.

The work is done in float32 (the formats are defined on FP32 inputs), whatever
the input's dtype, and cast back. Gradients: straight-through (every element
passes; with ``tensor_amax``, the elements beyond it do not), as for the
other formats with a data-derived scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bitmesh.errors import InvalidArgument
from bitmesh.formats import BlockRecipe, BlockScaling, FormatKind, NumericFormat, get_format
from bitmesh.quant.grids import round_fp_grid_

__all__ = ["BlockCodes", "fake_quantize_blocked", "quantize_blocked"]

_E4M3 = get_format("e4m3")
_NVFP4_DENOMINATOR = 6.0 * 448.0
_FP16_MAX = 65504.0
#: MXINT8's implicit element scale 2^-6, as a multiplier into code units.
_MXINT8_CODE_SCALE = 64.0
#: float32 bits without the sign (a 0-dim tensor: ``& python_int`` is slow).
_MAGNITUDE_BITS = torch.tensor(0x7FFFFFFF, dtype=torch.int32)
#: Elements per chunk of the scale-and-round loop (1 MiB of float32: half this
#: machine's L2; 64K-1M all measured within 10 % of each other).
_CHUNK_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class BlockCodes:
    """A block-quantized tensor in the blocked layout ``(pre, post, nb, B)``.

    ``elements`` are the element values in the scaled domain (FP grid values,
    or integer codes for INT elements: MXINT8's in units of 2^-6);
    ``scale`` (``(pre, post, nb, 1)``) is what each block's elements are
    multiplied by when decoded (MX: 2^e; NVFP4: ``s_b * s_t``; GROUP: ``s``);
    ``block_scale`` is the stored scale as the target reads it (MX: 2^e;
    NVFP4: the E4M3 value ``s_b``; GROUP: ``s``), ``tensor_scale`` NVFP4's
    ``s_t`` (else None), ``zero_point`` the GROUP codes' zero point (else None).
    ``shape``/``axis``/``channels`` give the original layout back.
    """

    elements: Tensor
    scale: Tensor
    block_scale: Tensor
    tensor_scale: Tensor | None
    zero_point: Tensor | None
    shape: tuple[int, ...]
    axis: int
    channels: int

    def dequantize(self, *, in_place: bool = False) -> Tensor:
        """The decoded values in the original shape (float32; a view with the
        blocks-last strides). ``in_place`` reuses (and spoils) ``elements``."""
        q = self.elements
        if self.zero_point is not None:
            q = q.sub_(self.zero_point) if in_place else q - self.zero_point
            in_place = True
        q = q.mul_(self.scale) if in_place else q * self.scale
        return unblock(q, self.shape, self.axis, self.channels)

    def elements_in_shape(self) -> Tensor:
        """The element codes in the original shape (contiguous)."""
        return unblock(self.elements, self.shape, self.axis, self.channels).contiguous()

    def per_block(self, values: Tensor) -> Tensor:
        """A per-block tensor (``scale``, ``zero_point``) as ``(pre, nb, *post
        dims)``: ONNX's blocked layout for a weight ``(out, nb, kh, kw)``."""
        pre, post, blocks, _ = values.shape
        return (
            values.reshape(pre, post, blocks)
            .transpose(1, 2)
            .reshape((*self.shape[: self.axis], blocks, *self.shape[self.axis + 1 :]))
        )


def _block_axis(x: Tensor, axis: int) -> int:
    if x.dim() == 0:
        raise InvalidArgument("block quantization needs a tensor with at least one dim")
    if not -x.dim() <= axis < x.dim():
        raise InvalidArgument(f"block axis {axis} out of range for a {x.dim()}-d tensor")
    return axis % x.dim()


def _blocked_copy(
    x: Tensor, block: BlockScaling, axis: int, allow_partial: bool
) -> tuple[Tensor, bool, int]:
    """``x`` as ``(pre, post, nb, B)`` (zero padded when C % B), whether that
    is a fresh buffer the caller may overwrite, and C."""
    channels = int(x.shape[axis])
    blocks = block.blocks_along(channels, allow_partial=allow_partial)
    pre = int(torch.Size(x.shape[:axis]).numel())
    post = int(torch.Size(x.shape[axis + 1 :]).numel())
    rows = x.reshape(pre, channels, post).transpose(1, 2)
    padded = blocks * block.block_size
    owned = padded != channels or (post > 1 and not rows.is_contiguous())
    if padded != channels:
        buffer = x.new_zeros((pre, post, padded))
        buffer[:, :, :channels] = rows
        rows = buffer
    elif owned:
        rows = rows.contiguous()
    return rows.view(pre, post, blocks, block.block_size), owned, channels


def unblock(values: Tensor, shape: tuple[int, ...], axis: int, channels: int) -> Tensor:
    """Blocks-last values back in ``shape`` (a view where strides allow)."""
    pre, post, blocks, size = values.shape
    rows = values.reshape(pre, post, blocks * size)
    if blocks * size != channels:
        rows = rows[:, :, :channels]
    return rows.transpose(1, 2).reshape(shape)


def _amax(xb: Tensor) -> Tensor:
    """Max |x| per block, NaN where a block holds a NaN.

    For blocks of 32 and more, max(amax, -amin) allocates no |x| temporary
    (1.0 + 0.7 ms on 2.4M weights here). torch's float reduction over a last
    dim of 16 is 4-5x slower than over 32, its int32 one less so: NVFP4's
    blocks take the max of the bit patterns with the sign cleared (ordered
    as the magnitudes, a NaN above inf), 3.7 ms against 6.8 for
    ``abs().amax()``, a chunk at a time into one cache-sized scratch buffer
    (no full-size temporary).
    """
    size = xb.shape[3]
    if size >= 32:
        return torch.maximum(xb.amax(dim=3, keepdim=True), xb.amin(dim=3, keepdim=True).neg())
    rows = xb.reshape(-1, size).view(torch.int32)
    top = torch.empty((rows.shape[0], 1), dtype=torch.int32, device=xb.device)
    scratch = torch.empty_like(rows[: _chunk_rows(rows)])
    for start in range(0, rows.shape[0], scratch.shape[0]):
        stop = min(start + scratch.shape[0], rows.shape[0])
        bits = torch.bitwise_and(rows[start:stop], _MAGNITUDE_BITS, out=scratch[: stop - start])
        torch.amax(bits, dim=1, keepdim=True, out=top[start:stop])
    return top.view(torch.float32).view(*xb.shape[:3], 1)


def _chunk_rows(rows: Tensor) -> int:
    """Rows of blocks per chunk of a loop that works in the cache."""
    return min(max(1, _CHUNK_ELEMENTS // rows.shape[1]), rows.shape[0])


def _pow2(exponent: Tensor) -> Tensor:
    """2^e as float32, exact for integer e in [-149, 127] (subnormals too),
    built from the bit pattern (exp2 is not guaranteed exact)."""
    normal = (exponent + 127).clamp_min(0) << 23
    subnormal = torch.ones_like(exponent) << (exponent + 149).clamp(0, 30)
    return torch.where(exponent >= -126, normal, subnormal).view(torch.float32)


def _floor_log2(amax: Tensor) -> Tensor:
    """floor(log2 amax) from the exponent field; -127 for zero and float32
    subnormals (every caller clamps at -127 anyway), 128 for inf/NaN."""
    return ((amax.view(torch.int32) >> 23) & 0xFF) - 127


def _round_elements_(v: Tensor, element: NumericFormat, scratch: Tensor | None = None) -> Tensor:
    """Saturate and round half to even onto an FP element grid, in place."""
    return round_fp_grid_(v.clamp_(-element.max_value, element.max_value), element, scratch)


def _scaled_elements(xb: Tensor, owned: bool, factor: Tensor, element: NumericFormat) -> Tensor:
    """``xb * factor`` (one factor per block) rounded onto ``element``'s grid.

    Done a chunk of blocks at a time: the scaling and the seven passes of the
    rounding then run on data in the core's L2 cache instead of main memory
    (5x faster on resnet18's largest weight, 2.4M elements: 14.6 ms in one
    piece against 3.0 ms in chunks of 256K), and the rounding's scratch is
    one chunk-sized buffer reused. Written in place when ``owned``.
    """
    size = xb.shape[-1]
    rows = xb.view(-1, size) if owned else xb.reshape(-1, size)
    factors = factor.reshape(-1, 1)
    out = rows if owned else torch.empty_like(rows)
    scratch = torch.empty_like(rows[: _chunk_rows(rows)], dtype=torch.int32)
    for start in range(0, rows.shape[0], scratch.shape[0]):
        stop = min(start + scratch.shape[0], rows.shape[0])
        chunk = torch.mul(rows[start:stop], factors[start:stop], out=out[start:stop])
        _round_elements_(chunk, element, scratch[: stop - start])
    return out.view(xb.shape)


def _scaled(xb: Tensor, owned: bool, factor: Tensor, divide: bool = False) -> Tensor:
    """``xb * factor`` (or ``/``), in place when the buffer is the caller's."""
    if owned:
        return xb.div_(factor) if divide else xb.mul_(factor)
    return xb / factor if divide else xb * factor


def _mx(xb: Tensor, owned: bool, fmt: NumericFormat) -> tuple[Tensor, Tensor, Tensor]:
    amax = _amax(xb)
    top = _floor_log2(amax)
    exponent = (top - fmt.mx_emax).clamp_(-127, 127)
    scale = _pow2(exponent)
    inverse = _pow2(-exponent)
    special = top > 127  # the block's max is inf or NaN: the scale is E8M0's NaN
    scale = scale.masked_fill(special, float("nan"))
    inverse = inverse.masked_fill(special, float("nan"))
    if fmt.kind is FormatKind.INT:
        # Two exact multiplications: 2^-e * 64 alone overflows at e = -127.
        # (+0: integer codes have no -0, see _group.)
        codes = _scaled(xb, owned, inverse).mul_(_MXINT8_CODE_SCALE)
        codes.round_().clamp_(-127, 127).add_(0.0)
        return codes, scale / _MXINT8_CODE_SCALE, scale
    return _scaled_elements(xb, owned, inverse, fmt.element), scale, scale


def _stored_e4m3(value: Tensor) -> Tensor:
    """Round to E4M3 (half to even), clamped to [2^-6, 448]: NVFP4 block
    scales are never zero or subnormal, as NVIDIA's kernels clamp them."""
    return round_fp_grid_(value.clamp(_E4M3.min_normal, _E4M3.max_value), _E4M3)


def _nvfp4(
    xb: Tensor, owned: bool, fmt: NumericFormat, tensor_amax: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    amax = _amax(xb)
    finite = torch.isfinite(amax)
    if tensor_amax is None:
        top = torch.where(finite, amax, torch.zeros_like(amax)).amax()
    else:
        top = tensor_amax.to(torch.float32).reshape(())
    tensor_scale = top / _NVFP4_DENOMINATOR
    tensor_scale = torch.where(tensor_scale > 0, tensor_scale, torch.ones_like(tensor_scale))
    block_scale = _stored_e4m3(amax / 6.0 / tensor_scale)
    # Encode with the reciprocal of the decode scale, in the kernels' order:
    # x * ((1 / s_t) / s_b); decode q * (s_t * s_b).
    encode = (1.0 / tensor_scale) / block_scale
    special = ~finite
    scale = (tensor_scale * block_scale).masked_fill_(special, float("nan"))
    encode = encode.masked_fill_(special, float("nan"))
    elements = _scaled_elements(xb, owned, encode, fmt.element)
    return elements, scale, block_scale, tensor_scale


def _stored_scale(scale: Tensor, block: BlockScaling) -> Tensor:
    if block.scale_format == "fp16":
        return scale.clamp_max(_FP16_MAX).to(torch.float16).to(torch.float32)
    return scale


def _group(xb: Tensor, owned: bool, fmt: NumericFormat) -> tuple[Tensor, Tensor, Tensor | None]:
    block = fmt.block
    assert block is not None
    top = xb.amax(dim=3, keepdim=True)
    bottom = xb.amin(dim=3, keepdim=True)
    special = ~(torch.isfinite(top) & torch.isfinite(bottom))
    if block.zero_point:
        hi = float((1 << fmt.bits) - 1)
        lo = 0.0
        raw = (top.clamp_min(0.0) - bottom.clamp_max(0.0)) / hi
    else:
        hi = float((1 << (fmt.bits - 1)) - 1)
        lo = -hi - 1.0
        raw = torch.maximum(top, bottom.neg()) / hi
    scale = _stored_scale(raw, block).masked_fill(special, float("nan"))
    zero = scale == 0
    scale = scale.masked_fill(zero, 0.0)  # +0, also where the block's max was -0.0
    divisor = scale.masked_fill(zero, 1.0)
    # Integer codes have no -0: adding +0 turns round(-0.3) = -0.0 into 0, so
    # a code 0 decodes to +0 as DequantizeLinear's does (with a zero point,
    # adding it does the same).
    codes = _scaled(xb, owned, divisor, divide=True).round_()
    if not block.zero_point:
        codes.add_(0.0)
    point: Tensor | None = None
    if block.zero_point:
        point = (bottom.clamp_max(0.0).neg() / divisor).round_().clamp_(0.0, hi)
        point = point.masked_fill(special, 0.0)
        codes.add_(point)
    # A scale stored as zero decodes its group to zeros (codes and point 0).
    codes.clamp_(lo, hi)
    if bool(zero.any()):  # rare; a full pass over the codes otherwise
        codes.masked_fill_(zero, 0.0)
    if point is not None:
        point = point.masked_fill(zero, 0.0)
    return codes, scale, point


def quantize_blocked(
    x: Tensor,
    fmt: NumericFormat,
    *,
    axis: int = 1,
    tensor_amax: Tensor | float | None = None,
    allow_partial: bool = True,
) -> BlockCodes:
    """Codes and scales of ``x`` in a block-scaled ``fmt`` (no grad): what an
    exporter writes; ``fake_quantize_blocked`` is ``.dequantize()`` of this."""
    block = fmt.block
    if block is None:
        raise InvalidArgument(f"{fmt.name} is not a block-scaled format")
    if not x.is_floating_point():
        raise InvalidArgument(f"block quantization needs a floating-point tensor, got {x.dtype}")
    axis = _block_axis(x, axis)
    with torch.no_grad():
        xw = x.detach().to(torch.float32)
        xb, owned, channels = _blocked_copy(xw, block, axis, allow_partial)
        # A dtype conversion made xw a fresh tensor: the work may overwrite it.
        owned = owned or xw.data_ptr() != x.data_ptr()
        tensor_scale: Tensor | None = None
        point: Tensor | None = None
        if block.recipe is BlockRecipe.MX:
            elements, scale, stored = _mx(xb, owned, fmt)
        elif block.recipe is BlockRecipe.NVFP4:
            amax = None if tensor_amax is None else torch.as_tensor(tensor_amax)
            elements, scale, stored, tensor_scale = _nvfp4(xb, owned, fmt, amax)
        else:
            elements, scale, point = _group(xb, owned, fmt)
            stored = scale
    return BlockCodes(
        elements=elements,
        scale=scale,
        block_scale=stored,
        tensor_scale=tensor_scale,
        zero_point=point,
        shape=tuple(x.shape),
        axis=axis,
        channels=channels,
    )


class _BlockSTE(torch.autograd.Function):
    """Forward: the block fake quantization; backward: straight through,
    masked to |x| <= tensor_amax when a tensor range was given."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        fmt: NumericFormat,
        axis: int,
        tensor_amax: Tensor | None,
        allow_partial: bool,
    ) -> Tensor:
        ctx.inside = None if tensor_amax is None else x.abs() <= tensor_amax
        codes = quantize_blocked(
            x, fmt, axis=axis, tensor_amax=tensor_amax, allow_partial=allow_partial
        )
        return codes.dequantize(in_place=True).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        inside = ctx.inside
        return (grad if inside is None else grad * inside, None, None, None, None)


def fake_quantize_blocked(
    x: Tensor,
    fmt: NumericFormat,
    *,
    axis: int = 1,
    tensor_amax: Tensor | float | None = None,
    allow_partial: bool = True,
) -> Tensor:
    """Quantize ``x`` to the block-scaled ``fmt`` along ``axis`` and decode,
    in ``x``'s dtype (see the module docstring for each recipe).

    ``tensor_amax`` is NVFP4's tensor range (an activation's calibrated clip);
    the other recipes derive every scale from their block and ignore it.
    ``allow_partial=False`` refuses a ``C`` that is not a multiple of the block.
    """
    if x.numel() == 0:
        return x.clone()
    amax = None
    if tensor_amax is not None and fmt.block is not None and fmt.block.tensor_scale:
        amax = torch.as_tensor(tensor_amax, dtype=torch.float32, device=x.device).detach()
    if torch.is_grad_enabled() and x.requires_grad:
        out: Tensor = _BlockSTE.apply(x, fmt, axis, amax, allow_partial)
        return out
    codes = quantize_blocked(x, fmt, axis=axis, tensor_amax=amax, allow_partial=allow_partial)
    return codes.dequantize(in_place=True).to(x.dtype)
