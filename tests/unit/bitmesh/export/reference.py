"""A torch reference for exports: fake_quantize applied directly, nothing else."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from bitmesh.export.onnx_qdq import ExportReport, export_onnx
from bitmesh.export.verify import VerifyReport, verify_onnx
from bitmesh.formats import QuantOption, parse_option
from bitmesh.quant.fake_quant import fake_quantize

LAYERS = ("conv1", "conv2", "conv3", "fc1", "fc2")
INPUT_SHAPE = (1, 8, 8)


def parse_config(spec: Mapping[str, str]) -> dict[str, QuantOption]:
    return {layer: parse_option(text) for layer, text in spec.items()}


def fake_quant_reference(
    model: nn.Module,
    config: Mapping[str, QuantOption],
    ranges: Mapping[str, float],
    report: ExportReport | None = None,
) -> nn.Module:
    """A copy of ``model`` with fake-quantized weights and inputs, built from
    ``fake_quantize`` alone. With a report, an input whose quantization the
    export says it does not represent stays float (what the ONNX file does)."""
    reference = copy.deepcopy(model).eval()
    modules = dict(reference.named_modules())
    for name, option in config.items():
        module = modules[name]
        with torch.no_grad():
            module.weight.copy_(
                fake_quantize(module.weight, option.weight, granularity=option.granularity)
            )
        if report is not None and report.layer(name).activation == "not_represented":
            continue
        fmt, clip = option.activation, ranges[name]

        def quantize_input(
            module: nn.Module, inputs: tuple[Tensor, ...], fmt: Any = fmt, clip: float = clip
        ) -> tuple[Tensor]:
            if fmt.is_quantized:
                return (fake_quantize(inputs[0], fmt, clip=clip),)
            return (fake_quantize(inputs[0], fmt),)

        module.register_forward_pre_hook(quantize_input)
    return reference


def export_and_verify(
    model: nn.Module,
    config: Mapping[str, QuantOption],
    ranges: Mapping[str, float],
    test: TensorDataset,
    path: Path,
    **kwargs: object,
) -> tuple[ExportReport, VerifyReport]:
    report = export_onnx(model, config, ranges, INPUT_SHAPE, path, **kwargs)  # type: ignore[arg-type]
    reference = fake_quant_reference(model, config, ranges, report)
    return report, verify_onnx(path, reference, test, batch_size=128)


def assert_agrees(report: ExportReport, verified: VerifyReport) -> None:
    assert report.checker_ok, report.checker_error
    assert report.onnxruntime_loadable, report.onnxruntime_error
    assert verified.onnxruntime_ok, verified.onnxruntime_error
    assert verified.samples == 360
    assert verified.agreement is not None and verified.agreement >= 0.99
    assert verified.onnx_accuracy is not None
    assert abs(verified.onnx_accuracy - verified.torch_accuracy) <= 0.01
