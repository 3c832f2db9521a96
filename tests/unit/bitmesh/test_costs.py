"""The cost model (METHODS.md section 2): size, BOPs, scales, sums; torch-free."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bitmesh.costs import (
    LayerCosts,
    layer_costs,
    option_costs,
    scale_count_for,
    total_costs,
)
from bitmesh.errors import InvalidArgument
from bitmesh.formats import Granularity, QuantOption, get_format, parse_option

pytestmark = pytest.mark.unit


def test_layer_costs_follow_the_formulas() -> None:
    costs = layer_costs(1000, 50_000, 4, 8, scale_count=16)
    assert costs.size_bytes == 1000 * 4 / 8
    assert costs.bops == 50_000 * 4 * 8
    assert costs.scale_bytes == 16 * 4
    assert costs.latency_ms == 0.0
    assert costs.total_bytes == 500 + 64


def test_hawq_resnet18_layer_at_w4a4_and_w8a8() -> None:
    # HAWQ-V3's stage1.unit1.quant_convbn1: 36864 weights, 115605504 MACs; its
    # notebook prices BOPs as MACs * b * b and size as P * b / 8.
    w8 = layer_costs(36864, 115_605_504, 8, 8)
    w4 = layer_costs(36864, 115_605_504, 4, 4)
    assert w8.bops == pytest.approx(115.605504e6 * 64)
    assert w4.bops == pytest.approx(115.605504e6 * 16)
    assert w8.size_bytes == 36864
    assert w4.size_bytes == 36864 / 2


def test_fp_formats_count_by_total_bits() -> None:
    e4m3 = option_costs(100, 10, parse_option("e4m3/e4m3"), output_channels=5)
    int8 = option_costs(100, 10, parse_option("int8/int8"), output_channels=5)
    e2m1 = option_costs(100, 10, parse_option("e2m1/bf16"), output_channels=5)
    assert e4m3.bops == int8.bops == 10 * 8 * 8
    assert e4m3.size_bytes == int8.size_bytes == 100
    assert e2m1.bops == 10 * 4 * 16
    assert e2m1.size_bytes == 50


def test_scale_count_by_granularity_and_native_formats() -> None:
    per_channel = parse_option("int4/int8")
    per_tensor = parse_option("int4/int8:pt")
    native = QuantOption(weight=get_format("bf16"), activation=get_format("bf16"))
    assert per_channel.granularity is Granularity.PER_CHANNEL
    assert scale_count_for(per_channel, 64) == 64
    assert scale_count_for(per_tensor, 64) == 1
    assert scale_count_for(native, 64) == 0
    assert option_costs(10, 1, per_channel, 64).scale_bytes == 64 * 4
    assert option_costs(10, 1, per_tensor, 64).scale_bytes == 4
    fp32 = option_costs(10, 3, parse_option("fp32"), 64)
    assert (fp32.size_bytes, fp32.bops, fp32.scale_bytes) == (40, 3 * 32 * 32, 0)


@dataclass(frozen=True)
class _Bits:
    bits: int


@dataclass(frozen=True)
class _Option:
    weight: _Bits
    activation: _Bits
    granularity: str


def test_duck_typed_options_are_accepted() -> None:
    costs = option_costs(8, 2, _Option(_Bits(3), _Bits(5), "per_channel"), output_channels=2)
    assert (costs.size_bytes, costs.bops, costs.scale_bytes) == (3, 30, 8)
    costs = option_costs(8, 2, _Option(_Bits(3), _Bits(5), "PER_TENSOR"), output_channels=2)
    assert costs.scale_bytes == 4


def test_unknown_granularity_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="granularity"):
        option_costs(8, 2, _Option(_Bits(3), _Bits(5), "per_group"), output_channels=2)


@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [
        ((-1, 10, 8, 8), {}, "parameters"),
        ((10, -1, 8, 8), {}, "macs"),
        ((10, 10, 0, 8), {}, "weight_bits"),
        ((10, 10, 8, 65), {}, "activation_bits"),
        ((10, 10, 8, 8), {"scale_count": -2}, "scale_count"),
        ((10.5, 10, 8, 8), {}, "parameters"),
        ((10, 10, True, 8), {}, "weight_bits"),
    ],
)
def test_bad_numbers_are_refused(args: tuple, kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        layer_costs(*args, **kwargs)


def test_layer_costs_refuses_negative_or_infinite_fields() -> None:
    with pytest.raises(InvalidArgument, match="bops"):
        LayerCosts(size_bytes=1.0, bops=-1.0)
    with pytest.raises(InvalidArgument, match="latency_ms"):
        LayerCosts(size_bytes=1.0, bops=1.0, latency_ms=float("inf"))


def test_add_zero_and_total() -> None:
    a = LayerCosts(1.0, 2.0, 3.0, 4.0)
    b = LayerCosts(10.0, 20.0, 30.0, 40.0)
    assert a + b == LayerCosts(11.0, 22.0, 33.0, 44.0)
    assert a + LayerCosts.zero() == a
    assert total_costs([]) == LayerCosts.zero()
    assert total_costs([a, b, a]) == LayerCosts(12.0, 24.0, 36.0, 48.0)
    assert total_costs(iter([a, b])) == a + b


_costs = st.builds(
    LayerCosts,
    size_bytes=st.integers(0, 10**9).map(float),
    bops=st.integers(0, 10**12).map(float),
    latency_ms=st.integers(0, 10**4).map(float),
    scale_bytes=st.integers(0, 10**6).map(float),
)


@given(st.lists(_costs, max_size=20))
def test_total_is_the_fieldwise_sum(items: list[LayerCosts]) -> None:
    total = total_costs(items)
    assert total.size_bytes == sum(c.size_bytes for c in items)
    assert total.bops == sum(c.bops for c in items)
    assert total.latency_ms == sum(c.latency_ms for c in items)
    assert total.scale_bytes == sum(c.scale_bytes for c in items)


@given(
    st.integers(0, 10**8),
    st.integers(0, 10**10),
    st.integers(1, 32),
    st.integers(1, 32),
)
def test_costs_scale_linearly_with_bits(params: int, macs: int, wb: int, ab: int) -> None:
    one = layer_costs(params, macs, wb, ab)
    doubled = layer_costs(params, macs, 2 * wb, ab)
    assert doubled.size_bytes == 2 * one.size_bytes
    assert doubled.bops == 2 * one.bops


def test_costs_module_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any 'import torch' now fails\n"
        "import bitmesh.costs, bitmesh.formats\n"
        "print(bitmesh.costs.layer_costs(8, 1, 4, 4).size_bytes)\n"
    )
    repo_root = Path(__file__).resolve().parents[3]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=repo_root
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "4.0"
