"""Formats onnxruntime cannot run (FP4, FP6), the opt-out that dequantizes them,
and an explicit opset: the report must say what happened, never fail."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.utils.data import TensorDataset

from bitmesh.export.onnx_qdq import export_onnx
from bitmesh.export.onnx_types import ONNXRUNTIME_CPU_MISSING
from bitmesh.models.digits_cnn import DigitsCNN

from .reference import INPUT_SHAPE, LAYERS, assert_agrees, export_and_verify, parse_config

pytestmark = pytest.mark.unit


def test_fp4_reports_what_onnxruntime_cannot_run(
    trained_model: DigitsCNN,
    activation_ranges: dict[str, float],
    digits: tuple[TensorDataset, TensorDataset],
    tmp_path: Path,
) -> None:
    config = parse_config({layer: "e2m1" for layer in LAYERS})
    report, verified = export_and_verify(
        trained_model, config, activation_ranges, digits[1], tmp_path / "fp4.onnx"
    )
    assert report.checker_ok, report.checker_error
    assert (report.opset, report.ir_version) == (23, 11)
    assert report.layer("conv1").weight_onnx_type == "FLOAT4E2M1"
    if report.onnxruntime_loadable:  # a newer onnxruntime may have the kernel
        assert_agrees(report, verified)
    else:
        assert report.onnxruntime_error and "onnxruntime" in report.onnxruntime_error
        assert not verified.onnxruntime_ok and verified.agreement is None
        assert verified.onnxruntime_error
        assert verified.torch_accuracy > 0.5


def test_fp4_dequantized_on_request_runs_and_agrees(
    trained_model: DigitsCNN,
    activation_ranges: dict[str, float],
    digits: tuple[TensorDataset, TensorDataset],
    tmp_path: Path,
) -> None:
    config = parse_config({layer: "e2m1" for layer in LAYERS})
    report, verified = export_and_verify(
        trained_model,
        config,
        activation_ranges,
        digits[1],
        tmp_path / "fp4.onnx",
        dequantize_formats=ONNXRUNTIME_CPU_MISSING,
    )
    assert_agrees(report, verified)
    assert {(e.weight, e.activation) for e in report.layers} == {("dequantized", "not_represented")}
    assert all("not represented" in e.reason for e in report.layers)


def test_fp6_needs_opset_28(
    trained_model: DigitsCNN, activation_ranges: dict[str, float], tmp_path: Path
) -> None:
    config = parse_config({"conv2": "e3m2/e2m3"})
    report = export_onnx(
        trained_model, config, activation_ranges, INPUT_SHAPE, tmp_path / "fp6.onnx"
    )
    assert report.checker_ok, report.checker_error
    assert (report.opset, report.ir_version) == (28, 14)
    entry = report.layer("conv2")
    assert (entry.weight_onnx_type, entry.activation_onnx_type) == ("FLOAT6E3M2", "FLOAT6E2M3")
    if not report.onnxruntime_loadable:
        assert report.onnxruntime_error


def test_explicit_opset_19_is_allowed_for_fp8_weights(
    trained_model: DigitsCNN, activation_ranges: dict[str, float], tmp_path: Path
) -> None:
    config = parse_config({"conv1": "e4m3/fp32"})
    report = export_onnx(
        trained_model, config, activation_ranges, INPUT_SHAPE, tmp_path / "fp8.onnx", opset=19
    )
    assert (report.opset, report.ir_version) == (19, 10)
    assert report.checker_ok and report.onnxruntime_loadable, report.onnxruntime_error
    assert report.layer("conv1").activation == "float"
