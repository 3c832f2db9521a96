"""Fake quantizers against independent references.

FP8 is checked bit for bit against torch's own float8 casts; FP6/FP4 against
grids enumerated from the ExMy definition; INT against the integer grid.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitmesh.errors import FailedPrecondition, InvalidArgument
from bitmesh.formats import (
    FORMATS,
    FormatKind,
    Granularity,
    NumericFormat,
    get_format,
    parse_option,
)
from bitmesh.quant import (
    FakeQuantizer,
    RangeEstimator,
    compute_scale,
    fake_quantize,
    quant_range,
    weight_error_sq,
)
from bitmesh.quant.fake_quant import _IMPLEMENTATIONS

pytestmark = pytest.mark.unit

PER_TENSOR = Granularity.PER_TENSOR
PER_CHANNEL = Granularity.PER_CHANNEL
FLOAT8 = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype == torch.float32 and torch.equal(
        a.view(torch.int32), b.view(torch.int32)
    )


# --- FP8: bit for bit against torch's casts ----------------------------------


def float8_sweep(name: str) -> torch.Tensor:
    """Every representable value, every midpoint (ties) and its neighbours,
    subnormals and below, the max and beyond, random values; both signs."""
    fmt = get_format(name)
    codes = torch.arange(256, dtype=torch.uint8).view(FLOAT8[name]).to(torch.float32)
    reps = np.unique(np.abs(codes[torch.isfinite(codes)].numpy().astype(np.float64)))
    mids = (reps[:-1] + reps[1:]) / 2
    mids32 = mids.astype(np.float32)
    assert np.array_equal(mids32.astype(np.float64), mids)  # ties are exact in float32
    up = np.nextafter(mids32, np.float32(np.inf))
    down = np.nextafter(mids32, np.float32(0))
    tiny = fmt.min_subnormal * np.array([0.25, 0.5, 0.75, 1.5, 2.5], dtype=np.float64)
    tiny32 = tiny.astype(np.float32)
    below = [1e-30, 1e-40, np.nextafter(np.float32(fmt.min_subnormal / 2), np.float32(1))]
    top = np.float32(fmt.max_value)
    beyond = [
        np.nextafter(top, np.float32(np.inf)),
        fmt.max_value * 1.0625,
        fmt.max_value * 1.125,  # a tie with the next (unrepresentable) grid point
        fmt.max_value * 1.5,
        1e10,
        3e38,
        np.inf,
    ]
    rng = np.random.default_rng(0)
    random = np.exp2(
        rng.uniform(math.log2(fmt.min_subnormal) - 2, math.log2(fmt.max_value) + 2, 20000)
    )
    positive = np.concatenate(
        [reps, mids32, up, down, tiny32, np.asarray(below), np.asarray(beyond), random]
    ).astype(np.float32)
    values = np.concatenate([positive, -positive, np.array([0.0, -0.0], dtype=np.float32)])
    return torch.from_numpy(values)


@pytest.mark.parametrize("name", ["e4m3", "e5m2"])
def test_float8_matches_torch_cast_bit_for_bit(name: str) -> None:
    fmt = get_format(name)
    x = float8_sweep(name)
    reference = x.clamp(-fmt.max_value, fmt.max_value).to(FLOAT8[name]).to(torch.float32)
    assert bits_equal(fake_quantize(x, fmt, clip=fmt.max_value), reference)
    # The autograd path (detach trick) must give the same bits.
    with_grad = fake_quantize(x.clone().requires_grad_(), fmt, clip=fmt.max_value)
    assert bits_equal(with_grad.detach(), reference)
    # float64 input: same grid.
    assert bits_equal(fake_quantize(x.double(), fmt, clip=fmt.max_value).float(), reference)


@pytest.mark.parametrize("name", ["e4m3", "e5m2"])
@pytest.mark.parametrize("power", [-7, -1, 3])
def test_float8_with_power_of_two_scale(name: str, power: int) -> None:
    """With s = 2^k the scaled result is exactly 2^k * cast(x / 2^k)."""
    fmt = get_format(name)
    x = float8_sweep(name)[:3000] * 2.0**power
    s = 2.0**power
    reference = (x / s).clamp(-fmt.max_value, fmt.max_value).to(FLOAT8[name]).float() * s
    assert bits_equal(fake_quantize(x, fmt, clip=fmt.max_value * s), reference)


@pytest.mark.parametrize("name", ["e4m3", "e5m2"])
def test_float8_scale_from_max(name: str) -> None:
    """Without a clip the tensor's max magnitude lands on max_value."""
    fmt = get_format(name)
    torch.manual_seed(0)
    x = torch.randn(4096) * 3.7
    out = fake_quantize(x, fmt)
    s = x.abs().max() / fmt.max_value
    assert torch.allclose(out.abs().max(), x.abs().max(), rtol=1e-6)
    assert torch.equal(compute_scale(x, fmt), s)
    reference = (x / s).to(FLOAT8[name]).float() * s
    assert torch.allclose(out, reference, rtol=0, atol=0)


# --- FP6 / FP4: against a grid enumerated from the ExMy definition ----------


def exmy_grid(fmt: NumericFormat) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative representable values and their mantissa codes, from the
    definition (no inf/NaN: every code is a number)."""
    values, mantissas = [], []
    for exponent in range(2**fmt.exponent_bits):
        for mantissa in range(2**fmt.mantissa_bits):
            fraction = mantissa / 2**fmt.mantissa_bits
            if exponent == 0:
                value = fraction * 2.0 ** (1 - fmt.bias)
            else:
                value = (1 + fraction) * 2.0 ** (exponent - fmt.bias)
            values.append(value)
            mantissas.append(mantissa)
    order = np.argsort(values)
    return np.asarray(values)[order], np.asarray(mantissas)[order]


def nearest_even(x: np.ndarray, fmt: NumericFormat) -> np.ndarray:
    """Round to the nearest grid value; ties go to the even mantissa code."""
    grid, mantissas = exmy_grid(fmt)
    mag = np.minimum(np.abs(x.astype(np.float64)), grid[-1])
    hi = np.clip(np.searchsorted(grid, mag), 1, len(grid) - 1)
    lo = hi - 1
    d_lo, d_hi = mag - grid[lo], grid[hi] - mag
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (mantissas[hi] % 2 == 0))
    return np.copysign(np.where(pick_hi, grid[hi], grid[lo]), x)


@pytest.mark.parametrize("name", ["e3m2", "e2m3", "e2m1"])
def test_small_fp_grid_matches_the_table(name: str) -> None:
    fmt = get_format(name)
    grid, _ = exmy_grid(fmt)
    assert grid[-1] == fmt.max_value
    assert grid[1] == fmt.min_subnormal


@pytest.mark.parametrize("name", ["e3m2", "e2m3", "e2m1"])
def test_small_fp_representable_values_and_ties(name: str) -> None:
    fmt = get_format(name)
    grid, _ = exmy_grid(fmt)
    mids = (grid[:-1] + grid[1:]) / 2
    offsets = [0.0, 1e-3, -1e-3]
    positive = np.concatenate([grid, *[mids * (1 + o) for o in offsets], [fmt.max_value * 3, 1e9]])
    x = np.concatenate([positive, -positive]).astype(np.float32)
    out = fake_quantize(torch.from_numpy(x), fmt, clip=fmt.max_value).numpy()
    np.testing.assert_array_equal(out, nearest_even(x, fmt))
    # every output is a grid value
    assert np.isin(np.abs(out), grid).all()


@pytest.mark.parametrize("name", ["e3m2", "e2m3", "e2m1"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_small_fp_nearest_property(name: str, data: st.DataObject) -> None:
    fmt = get_format(name)
    limit = 2.5 * fmt.max_value
    xs = data.draw(
        st.lists(st.floats(-limit, limit, allow_nan=False, width=32), min_size=1, max_size=64)
    )
    x = np.asarray(xs, dtype=np.float32)
    out = fake_quantize(torch.from_numpy(x), fmt, clip=fmt.max_value).numpy()
    np.testing.assert_array_equal(out, nearest_even(x, fmt))


# --- INT ----------------------------------------------------------------------


INT_NAMES = [f"int{b}" for b in range(2, 9)] + [f"uint{b}" for b in range(2, 9)]


@pytest.mark.parametrize("name", INT_NAMES)
def test_int_grid_round_trip_is_exact(name: str) -> None:
    fmt = get_format(name)
    step = 0.25
    grid = torch.arange(fmt.qmin, fmt.qmax + 1, dtype=torch.float32) * step
    out = fake_quantize(grid, fmt, clip=fmt.qmax * step)
    assert torch.equal(out, grid)
    # and with the scale from the data: the max is qmax * step here
    if fmt.signed:
        out_max = fake_quantize(grid[1:], fmt)  # symmetric range, max |x| = qmax * step
        assert torch.equal(out_max, grid[1:])


@pytest.mark.parametrize("name", ["int2", "int4", "int8", "uint4"])
def test_int_outputs_lie_on_the_grid(name: str) -> None:
    fmt = get_format(name)
    torch.manual_seed(1)
    x = torch.randn(10000, dtype=torch.float64)
    out = fake_quantize(x, fmt)
    top = x.clamp_min(0).max() if not fmt.signed else x.abs().max()
    s = top / fmt.qmax
    q = out / s
    assert torch.allclose(q, q.round(), atol=1e-9)
    assert q.round().min() >= fmt.qmin and q.round().max() <= fmt.qmax
    reference = (x / s).round().clamp(fmt.qmin, fmt.qmax) * s
    assert torch.allclose(out, reference, rtol=0, atol=1e-12)
    in_range = (x >= fmt.qmin * s) & (x <= top)
    assert (out - x).abs()[in_range].max() <= s / 2 + 1e-12


def test_int_rounds_half_to_even_and_saturates() -> None:
    fmt = get_format("int4")
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 6.5, 7.4, 100.0, -7.5, -8.5, -100.0])
    out = fake_quantize(x, fmt, clip=7.0)  # s = 1
    assert out.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 6.0, 7.0, 7.0, -8.0, -8.0, -8.0]


def test_unsigned_clamps_negatives_to_zero() -> None:
    fmt = get_format("uint4")
    torch.manual_seed(2)
    x = torch.randn(1000)
    out = fake_quantize(x, fmt)
    assert (out[x < 0] == 0).all()
    s = x.max() / 15
    assert torch.allclose(out[x >= 0], (x[x >= 0] / s).round() * s)
    assert torch.equal(compute_scale(x, fmt), s)


@pytest.mark.parametrize("name", ["int4", "uint8", "e4m3", "e2m1"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_per_channel_uses_each_channels_max(name: str, axis: int) -> None:
    fmt = get_format(name)
    torch.manual_seed(3)
    w = torch.randn(6, 5, 4) * torch.logspace(-2, 2, 5).reshape(1, 5, 1)
    w = w * torch.rand(6, 1, 1)
    out = fake_quantize(w, fmt, granularity=PER_CHANNEL, axis=axis)
    slices = [
        fake_quantize(w.select(axis, c), fmt, granularity=PER_TENSOR) for c in range(w.shape[axis])
    ]
    assert torch.equal(out, torch.stack(slices, dim=axis % w.dim()))
    scale = compute_scale(w, fmt, granularity=PER_CHANNEL, axis=axis)
    magnitude = w.clamp_min(0) if name.startswith("uint") else w.abs()
    dims = [d for d in range(3) if d != axis % 3]
    assert torch.equal(scale, magnitude.amax(dim=dims, keepdim=True) / quant_range(fmt)[1])
    # one channel's max is reproduced (to rounding of the scale)
    assert not torch.equal(out, fake_quantize(w, fmt))


def test_per_channel_clip_tensor_and_bad_shapes() -> None:
    fmt = get_format("int8")
    torch.manual_seed(4)
    w = torch.randn(3, 10)
    clip = torch.tensor([0.5, 1.0, 2.0])
    out = fake_quantize(w, fmt, granularity=PER_CHANNEL, clip=clip)
    for c in range(3):
        assert torch.equal(out[c], fake_quantize(w[c], fmt, clip=float(clip[c])))
    with pytest.raises(InvalidArgument):
        fake_quantize(w, fmt, granularity=PER_CHANNEL, clip=torch.ones(4))
    with pytest.raises(InvalidArgument):
        fake_quantize(w, fmt, clip=torch.ones(3))  # per tensor needs one value
    with pytest.raises(InvalidArgument):
        fake_quantize(w, fmt, clip=-1.0)
    with pytest.raises(InvalidArgument):
        fake_quantize(w, fmt, granularity=PER_CHANNEL, axis=2)
    with pytest.raises(InvalidArgument):
        fake_quantize(torch.arange(4), fmt)  # integer tensor


# --- edge cases shared by every format --------------------------------------


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_zeros_and_zero_channels_stay_finite(name: str) -> None:
    fmt = get_format(name)
    zeros = torch.zeros(4, 8)
    assert torch.equal(fake_quantize(zeros, fmt), zeros)
    w = torch.randn(4, 8, generator=torch.Generator().manual_seed(5))
    w[2] = 0
    out = fake_quantize(w, fmt, granularity=PER_CHANNEL)
    assert torch.isfinite(out).all()
    assert (out[2] == 0).all()
    assert fake_quantize(torch.empty(0, 3), fmt).shape == (0, 3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_output_keeps_input_dtype(dtype: torch.dtype) -> None:
    x = torch.randn(64, generator=torch.Generator().manual_seed(6)).to(dtype)
    for name in ("int4", "e4m3", "bf16", "fp32"):
        out = fake_quantize(x, get_format(name))
        assert out.dtype == dtype
    if dtype != torch.float64:  # half types are worked in float32
        expected = fake_quantize(x.float(), get_format("int4")).to(dtype)
        assert torch.equal(fake_quantize(x, get_format("int4")), expected)


def test_native_formats_are_casts() -> None:
    x = torch.randn(1000, generator=torch.Generator().manual_seed(7)) * 1e3
    assert bits_equal(fake_quantize(x, get_format("bf16")), x.to(torch.bfloat16).float())
    assert bits_equal(fake_quantize(x, get_format("half")), x.to(torch.float16).float())
    assert fake_quantize(x, get_format("fp32")) is x
    assert not torch.equal(fake_quantize(x, get_format("bf16")), x)


def test_every_format_kind_has_an_implementation() -> None:
    assert set(_IMPLEMENTATIONS) == set(FormatKind)


# --- gradients ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["int4", "uint4", "int8", "e4m3", "e5m2", "e2m1"])
def test_ste_gradient_is_one_inside_and_zero_outside(name: str) -> None:
    fmt = get_format(name)
    clip = 3.0
    lo, hi = quant_range(fmt)
    s = clip / hi
    x = torch.linspace(-2.5 * clip, 2.5 * clip, 1001)
    x = x[((x - lo * s).abs() > 1e-4) & ((x - hi * s).abs() > 1e-4)]  # off the boundaries
    x.requires_grad_(True)
    fake_quantize(x, fmt, clip=clip).sum().backward()
    assert x.grad is not None
    inside = (x.detach() > lo * s) & (x.detach() < hi * s)
    assert torch.equal(x.grad, inside.float())
    assert inside.any() and (~inside).any()


def test_native_gradient_passes_through() -> None:
    x = torch.randn(10, requires_grad=True)
    fake_quantize(x, get_format("bf16")).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.ones(10))


@pytest.mark.parametrize("name", ["int4", "uint8", "e4m3"])
def test_learned_clip_gets_the_lsq_gradient(name: str) -> None:
    """d sum(x_hat) / d clip = sum((Q(u) - u) inside, clamped bound outside) / hi,
    with u = x / s (LSQ; PACT's +-1 outside)."""
    fmt = get_format(name)
    lo, hi = quant_range(fmt)
    torch.manual_seed(8)
    x = torch.randn(500, dtype=torch.float64) * 2
    clip = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    fake_quantize(x, fmt, clip=clip).sum().backward()
    u = x / (1.7 / hi)
    if fmt.kind is FormatKind.INT:
        q = u.round()
    else:
        q = u.float().clamp(lo, hi).to(torch.float8_e4m3fn).double()
    expected = torch.where(u < lo, lo, torch.where(u > hi, hi, q - u)).sum() / hi
    assert clip.grad is not None
    assert torch.allclose(clip.grad, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["int4", "int8", "e4m3"])
def test_scale_from_data_passes_every_gradient(name: str) -> None:
    """Without a clip the scale comes from the data and carries no gradient;
    every element is inside the range, including each channel's max even
    when x_max / (x_max / hi) rounds to just above hi."""
    fmt = get_format(name)
    hi = quant_range(fmt)[1]
    torch.manual_seed(13)
    w = torch.randn(2000, 7)
    top = w.abs().amax(dim=1)
    assert (top / (top / hi) > hi).any()  # the rounding case does occur here
    w.requires_grad_(True)
    fake_quantize(w, fmt, granularity=PER_CHANNEL).sum().backward()
    assert w.grad is not None and torch.equal(w.grad, torch.ones_like(w))


def test_unsigned_scale_from_data_blocks_negatives() -> None:
    x = torch.tensor([-1.0, -0.0, 0.5, 3.0], requires_grad=True)
    fake_quantize(x, get_format("uint4")).sum().backward()
    assert x.grad is not None and x.grad.tolist() == [0.0, 1.0, 1.0, 1.0]


# --- weight_error_sq --------------------------------------------------------------


def test_weight_error_sq() -> None:
    torch.manual_seed(9)
    w = torch.randn(16, 32) * torch.logspace(-1, 1, 16).reshape(16, 1)
    errors = {n: weight_error_sq(w, get_format(n), PER_CHANNEL) for n in ("int2", "int4", "int8")}
    manual = float(((fake_quantize(w, get_format("int4"), granularity=PER_CHANNEL) - w) ** 2).sum())
    assert errors["int4"] == pytest.approx(manual, rel=1e-6)
    assert errors["int2"] > errors["int4"] > errors["int8"] > 0
    assert weight_error_sq(w, get_format("int4"), PER_TENSOR) > errors["int4"]
    assert weight_error_sq(w, get_format("fp32"), PER_CHANNEL) == 0.0
    on_grid = torch.arange(-8, 8, dtype=torch.float32).reshape(2, 8) * 0.5
    on_grid[:, 0] = -3.5  # max |w| = 3.5 = 7 * 0.5 in each row
    assert weight_error_sq(on_grid, get_format("int4"), PER_CHANNEL) == 0.0


# --- the module -------------------------------------------------------------------


def test_weight_quantizer_from_option() -> None:
    option = parse_option("int4/uint8")
    quantizer = FakeQuantizer.from_option(option, "weight")
    w = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(10))
    expected = fake_quantize(w, get_format("int4"), granularity=PER_CHANNEL, axis=0)
    assert torch.equal(quantizer(w), expected)
    assert torch.equal(quantizer.eval()(w), expected)
    per_tensor = FakeQuantizer.from_option(parse_option("int4:pt"), "weight")
    assert torch.equal(per_tensor(w), fake_quantize(w, get_format("int4")))
    with pytest.raises(InvalidArgument):
        FakeQuantizer.from_option(option, "bias")  # type: ignore[arg-type]


def test_activation_minmax_and_eval() -> None:
    quantizer = FakeQuantizer.from_option(parse_option("int4/int8"), "activation")
    a, b = torch.randn(64) * 2, torch.randn(64) * 5
    quantizer.train()
    quantizer(a)
    out_b = quantizer(b)
    expected_range = torch.maximum(a.abs().max(), b.abs().max())
    assert torch.equal(quantizer.running_range, expected_range)
    assert torch.equal(out_b, fake_quantize(b, get_format("int8"), clip=expected_range))
    quantizer.eval()
    c = torch.randn(64) * 100
    out_c = quantizer(c)
    assert torch.equal(quantizer.running_range, expected_range)  # frozen in eval
    assert torch.equal(out_c, fake_quantize(c, get_format("int8"), clip=expected_range))


def test_activation_ema_and_percentile() -> None:
    a = torch.randn(1000, generator=torch.Generator().manual_seed(11))
    b = torch.randn(1000, generator=torch.Generator().manual_seed(12)) * 3
    ema = FakeQuantizer(get_format("int8"), estimator=RangeEstimator("ema", momentum=0.9))
    ema(a)
    ema(b)
    expected = 0.9 * a.abs().max() + 0.1 * b.abs().max()
    assert torch.allclose(ema.running_range, expected, rtol=1e-6)

    pct = FakeQuantizer(get_format("int8"), estimator=RangeEstimator("percentile", percentile=99.0))
    pct(a)
    reference = np.percentile(a.abs().numpy(), 99.0, method="inverted_cdf")
    assert float(pct.running_range) == pytest.approx(float(reference), rel=0, abs=0)
    assert float(pct.running_range) < float(a.abs().max())


def test_unsigned_activation_range_ignores_negatives() -> None:
    quantizer = FakeQuantizer.from_option(parse_option("int8/uint8"), "activation")
    x = torch.tensor([-10.0, 0.5, 2.0])
    out = quantizer(x)
    assert float(quantizer.running_range) == 2.0
    assert out[0] == 0 and out[2] == 2.0


def test_activation_eval_before_calibration_fails_and_state_round_trips() -> None:
    quantizer = FakeQuantizer(get_format("e4m3"), estimator="minmax").eval()
    with pytest.raises(FailedPrecondition):
        quantizer(torch.ones(3))
    quantizer.train()(torch.randn(32) * 4)
    restored = FakeQuantizer(get_format("e4m3"), estimator="minmax")
    restored.load_state_dict(quantizer.state_dict())
    x = torch.randn(32) * 4
    assert torch.equal(restored.eval()(x), quantizer.eval()(x))


def test_bad_quantizer_configs() -> None:
    with pytest.raises(InvalidArgument):
        FakeQuantizer(get_format("int8"), estimator="median")
    with pytest.raises(InvalidArgument):
        FakeQuantizer(get_format("int8"), PER_CHANNEL, estimator="minmax")
    with pytest.raises(InvalidArgument):
        RangeEstimator("ema", momentum=1.0)
    with pytest.raises(InvalidArgument):
        RangeEstimator("percentile", percentile=0.0)


def test_native_activation_quantizer_is_a_cast() -> None:
    quantizer = FakeQuantizer.from_option(parse_option("bf16"), "activation").eval()
    x = torch.randn(16)
    assert torch.equal(quantizer(x), x.to(torch.bfloat16).float())
