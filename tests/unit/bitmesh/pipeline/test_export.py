"""export_result on a weights file in the trainer's format: the QDQ ONNX file
agrees with the fake-quantized torch model rebuilt from the same file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bitmesh.data.datasets import DatasetSpec, load_dataset
from bitmesh.export.torch_to_onnx import OnnxExportBlocked
from bitmesh.formats import parse_option
from bitmesh.models.digits_cnn import DigitsCNN
from bitmesh.models.loading import ModelSpec
from bitmesh.pipeline.export import export_result
from bitmesh.quant.qmodel import QuantSettings, observing, wrap_with_config
from trainer_svc.outcome import weights_bytes

pytestmark = pytest.mark.unit

_MODEL = ModelSpec(source="architecture", name_or_path="digits_cnn", input_shape=(1, 8, 8))
_TEST = DatasetSpec("digits", split="test")


def _weights_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = DigitsCNN()
    train = load_dataset(DatasetSpec("digits", split="train"))
    x = train.tensors[0]  # type: ignore[attr-defined]
    config = {"conv1": parse_option("int8"), "conv2": parse_option("int4")}
    layers = wrap_with_config(model, config, QuantSettings(), x[:32])
    model.eval()
    with observing(layers), torch.no_grad():
        model(x[:256])
    weights = tmp_path / "w.pt"
    weights.write_bytes(weights_bytes(model, layers, {n: q.option for n, q in layers.items()}))
    return weights


def test_export_of_a_trainer_weights_file_agrees(tmp_path: Path) -> None:
    weights = _weights_file(tmp_path)
    out = export_result(_MODEL, str(weights), _TEST, tmp_path / "m.onnx")
    export, verify = out["export"], out["verify"]
    assert export["exported"] and export["checker_ok"], export
    assert {entry["layer"] for entry in export["layers"]} == {"conv1", "conv2"}
    assert verify["onnxruntime_ok"] and verify["samples"] == 360
    assert verify["agreement"] >= 0.99, verify


def test_a_blocked_export_names_the_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bitmesh.pipeline.export as export_module
    from bitmesh.pipeline.report import summary_markdown

    def blocked(*args: object, **kwargs: object) -> None:
        raise OnnxExportBlocked("aten::frobnicate has no ONNX form", ("aten::frobnicate",))

    monkeypatch.setattr(export_module, "export_onnx", blocked)
    weights = _weights_file(tmp_path)
    out = export_result(_MODEL, str(weights), _TEST, tmp_path / "m.onnx")
    assert out["verify"] is None
    assert out["export"]["exported"] is False
    assert out["export"]["unsupported_ops"] == ["aten::frobnicate"]
    report = {
        "inputs": {"model": "m", "dataset": "digits", "method": "lcpaq", "budgets": {}},
        "trained": {},
        "onnx": out,
    }
    assert "export blocked (aten::frobnicate)" in summary_markdown(report)
