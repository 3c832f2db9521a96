"""The Omega table and the report's JSON round trip."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from bitmesh.costs import option_costs
from bitmesh.errors import InvalidArgument
from bitmesh.formats import Granularity, QuantOption, get_format, parse_option
from bitmesh.models.layers import LayerProfile
from sensitivity_svc.report import (
    REPORT_SCHEMA_VERSION,
    EstimatorInfo,
    SensitivityReport,
    layer_sensitivity,
)

pytestmark = pytest.mark.unit

OPTIONS = [
    parse_option(text)
    for text in ("int8", "int4/int8", "int4/int8:pt", "e4m3/e4m3", "e4m3:pt", "e2m1/e4m3", "fp32")
]


def _weight() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, 3, 3, generator=generator)
    w[2] *= 10  # channels of very different ranges: per-channel differs from per-tensor
    return w


def _profile(weight: torch.Tensor, name: str = "block.conv") -> LayerProfile:
    return LayerProfile(
        name=name,
        kind="conv2d",
        parameters=weight.numel(),
        weight_shape=tuple(weight.shape),
        output_channels=weight.shape[0],
        macs=weight.numel() * 25,
    )


def _int_error_sq(w: torch.Tensor, bits: int, per_channel: bool) -> float:
    """Symmetric INT with the full two's-complement range, scale max|w| / qmax."""
    qmax = 2 ** (bits - 1) - 1
    peak = w.abs().amax(dim=(1, 2, 3), keepdim=True) if per_channel else w.abs().max()
    scale = peak / qmax
    q = torch.clamp(torch.round(w / scale), -qmax - 1, qmax) * scale
    return float((q - w).double().square().sum())


def _e4m3_error_sq(w: torch.Tensor, per_channel: bool) -> float:
    """Scaled E4M3 through torch's own float8 cast (METHODS.md section 1)."""
    peak = w.abs().amax(dim=(1, 2, 3), keepdim=True) if per_channel else w.abs().max()
    scale = peak / 448.0
    q = (w / scale).to(torch.float8_e4m3fn).to(torch.float32) * scale
    return float((q - w).double().square().sum())


def test_omega_is_normalised_trace_times_weight_error() -> None:
    w = _weight()
    trace = 37.5
    entry = layer_sensitivity(_profile(w), w, trace, 1.25, 40, OPTIONS)
    assert entry.parameters == w.numel()
    assert entry.normalized_trace == pytest.approx(trace / w.numel())
    assert entry.normalized_standard_error == pytest.approx(1.25 / w.numel())
    direct = {
        "int8/int8": _int_error_sq(w, 8, per_channel=True),
        "int4/int8": _int_error_sq(w, 4, per_channel=True),
        "int4/int8:pt": _int_error_sq(w, 4, per_channel=False),
        "e4m3/e4m3": _e4m3_error_sq(w, per_channel=True),
        "e4m3/e4m3:pt": _e4m3_error_sq(w, per_channel=False),
        "fp32/fp32": 0.0,
    }
    for key, error_sq in direct.items():
        p = entry.perturbation(key)
        assert p.weight_error_sq == pytest.approx(error_sq, rel=1e-5, abs=1e-12)
        assert p.omega == pytest.approx(trace / w.numel() * error_sq, rel=1e-5, abs=1e-12)
    # Fewer bits, bigger error; per-tensor worse than per-channel here.
    e = {p.option_key: p.weight_error_sq for p in entry.perturbations}
    assert e["int8/int8"] < e["int4/int8"] < e["int4/int8:pt"]
    assert e["e4m3/e4m3"] < e["e2m1/e4m3"]
    assert e["e4m3/e4m3"] < e["e4m3/e4m3:pt"]


def test_costs_come_from_the_shared_cost_model() -> None:
    w = _weight()
    profile = _profile(w)
    entry = layer_sensitivity(profile, w, 1.0, 0.1, 10, OPTIONS)
    for option, p in zip(OPTIONS, entry.perturbations, strict=True):
        assert p.option_key == option.key
        assert p.option == option
        assert p.costs == option_costs(
            profile.parameters, profile.macs, option, profile.output_channels
        )


def test_negative_traces_keep_their_sign() -> None:
    w = _weight()
    entry = layer_sensitivity(_profile(w), w, -4.0, 1.0, 10, OPTIONS[:2])
    assert entry.normalized_trace < 0
    assert all(p.omega < 0 for p in entry.perturbations)


def _report() -> SensitivityReport:
    w = _weight()
    layers = (
        layer_sensitivity(_profile(w), w, 12.0, 0.5, 33, OPTIONS),
        layer_sensitivity(
            _profile(w, "head"),
            w * 0.5,
            -1.0,
            0.2,
            200,
            OPTIONS,
            activation_trace=3.5,
            activation_standard_error=0.25,
        ),
    )
    return SensitivityReport(
        layers=layers,
        options=tuple(o.key for o in OPTIONS),
        estimator=EstimatorInfo(
            method="test",
            target_relative_se=0.05,
            max_samples=200,
            min_samples=10,
            sketch_size=16,
            sketch_budget=1000,
            seed=7,
            num_batches=2,
            batch_sizes=(32, 16),
        ),
        seconds=1.5,
        model_hash="abc",
        dataset_hash="def",
    )


def test_report_round_trips_through_json() -> None:
    report = _report()
    text = json.dumps(report.to_dict())
    assert SensitivityReport.from_dict(json.loads(text)) == report
    table = report.omega_table()
    assert table["block.conv"]["int4/int8"] == report.layers[0].perturbation("int4/int8").omega


def test_report_refuses_other_schema_versions_and_unknown_names() -> None:
    twice = _report().layers[0]
    with pytest.raises(InvalidArgument, match="repeated"):
        SensitivityReport(
            layers=(twice, twice), options=(), estimator=_report().estimator, seconds=0
        )
    data = _report().to_dict()
    data["schema_version"] = REPORT_SCHEMA_VERSION + 1
    with pytest.raises(InvalidArgument, match="schema version"):
        SensitivityReport.from_dict(data)
    report = _report()
    with pytest.raises(InvalidArgument, match="no option"):
        report.layers[0].perturbation("int3/int3")
    with pytest.raises(InvalidArgument, match="no layer"):
        report.layer("missing")


def test_interval_and_relative_error() -> None:
    entry = _report().layers[0]
    low, high = entry.interval95()
    assert low == pytest.approx(12.0 - 1.96 * 0.5) and high == pytest.approx(12.0 + 1.96 * 0.5)
    assert entry.relative_se == pytest.approx(0.5 / 12.0)
    zero = layer_sensitivity(_profile(_weight()), _weight(), 0.0, 0.0, 10, [])
    assert zero.relative_se == 0.0
    assert math.isinf(
        layer_sensitivity(_profile(_weight()), _weight(), 0.0, 1.0, 10, []).relative_se
    )


def test_option_granularity_is_used() -> None:
    w = _weight()
    per_channel = QuantOption(get_format("int4"), get_format("int8"), Granularity.PER_CHANNEL)
    per_tensor = QuantOption(get_format("int4"), get_format("int8"), Granularity.PER_TENSOR)
    entry = layer_sensitivity(_profile(w), w, 1.0, 0.1, 10, [per_channel, per_tensor])
    errors = [p.weight_error_sq for p in entry.perturbations]
    assert errors[0] < errors[1]


def test_report_module_imports_without_torch() -> None:
    # A stored report can be read where torch is not installed.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import sensitivity_svc.report as r\n"
        "print(r.REPORT_SCHEMA_VERSION)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
