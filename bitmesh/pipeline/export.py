"""ONNX export and verification of a trained result (torch-only module).

The trainer's weights file holds the plain state_dict, the activation clips
and the option keys; from them this rebuilds both the fake-quantized torch
model (the reference, clips fixed as trained) and the QDQ ONNX file, then
compares their predictions on the test split (the run's own test split,
``eval_subset`` samples of it, normalised as the services read it).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bitmesh.data.datasets import DatasetSpec, load_dataset
from bitmesh.export.onnx_qdq import export_onnx
from bitmesh.export.onnx_types import ONNXRUNTIME_CPU_MISSING
from bitmesh.export.torch_to_onnx import OnnxExportBlocked
from bitmesh.export.verify import verify_onnx
from bitmesh.formats import parse_option
from bitmesh.models.loading import ModelSpec, load_model
from bitmesh.quant.qmodel import QuantSettings, wrap_with_config


def export_result(
    model: ModelSpec, weights_path: str, test_split: DatasetSpec | None, out: Path
) -> dict[str, Any]:
    """Export and verify on ``test_split``; a model with an op ONNX lacks gives
    ``exported: False`` and the blocking op (the trained artifacts stay as they
    are). ``model`` names the architecture or program, without weights: they
    come from the trainer's ``weights_path``."""
    payload = torch.load(weights_path, map_location="cpu", weights_only=True)
    config = {name: parse_option(key) for name, key in payload["config"].items()}
    clips = {
        key.removesuffix(".activation_clip"): float(value)
        for key, value in payload["quantizers"].items()
    }
    input_shape = model.input_shape
    plain = load_model(replace(model, weights_path=None))
    plain.load_state_dict(payload["state_dict"])
    plain.eval()
    try:
        report = export_onnx(
            plain, config, clips, input_shape, out, dequantize_formats=ONNXRUNTIME_CPU_MISSING
        )
    except OnnxExportBlocked as exc:
        return {"export": exc.to_dict(), "verify": None}
    result: dict[str, Any] = {"export": report.to_dict(), "verify": None}
    test = load_dataset(test_split) if test_split is not None else None
    if test is not None:
        reference = fake_quantized(plain, config, clips, test[0][0].unsqueeze(0))
        result["verify"] = verify_onnx(out, reference, test).to_dict()
    return result


def fake_quantized(
    plain: torch.nn.Module, config: dict[str, Any], clips: dict[str, float], example: torch.Tensor
) -> torch.nn.Module:
    """The trained fake-quantized model: wrapped layers with their trained clips."""
    wrapped = copy.deepcopy(plain)
    layers = wrap_with_config(wrapped, config, QuantSettings(), example)
    with torch.no_grad():
        for name, layer in layers.items():
            layer.act_range.fill_(clips[name])
            layer.act_seen.fill_(True)
            layer.clip_ratio.fill_(1.0)
    wrapped.eval()
    return wrapped
