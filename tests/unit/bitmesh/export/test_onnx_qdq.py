"""QDQ export of the digits CNN: checker, onnxruntime, and agreement with torch.

The reference is built here from ``fake_quantize`` alone (weights per
channel, inputs with the calibrated clips), so the tests check the exporter
against bitmesh's quantization math, not against the exporter's own view.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch.utils.data import TensorDataset

from bitmesh.errors import InvalidArgument
from bitmesh.export.onnx_qdq import export_onnx
from bitmesh.export.verify import verify_onnx
from bitmesh.formats import Granularity, QuantOption
from bitmesh.models.digits_cnn import DigitsCNN
from bitmesh.quant.fake_quant import compute_scale, fake_quantize

from .reference import INPUT_SHAPE, LAYERS, assert_agrees, export_and_verify, parse_config

pytestmark = pytest.mark.unit

#: Inputs of conv2..fc2 follow a ReLU, so their INT formats are unsigned (as
#: bitmesh's wrapper applies them); conv1 sees normalised pixels.
_UNIFORM = {
    "int8": ("int8/int8", "int8/uint8"),
    "int4": ("int4/int4", "int4/uint4"),
    "e4m3": ("e4m3/e4m3", "e4m3/e4m3"),
    "e5m2": ("e5m2/e5m2", "e5m2/e5m2"),
}
_MIXED = {
    "conv1": "int8/int8",
    "conv2": "int4/uint4",
    "conv3": "e4m3/e4m3",
    "fc1": "int3/uint3",
    "fc2": "int8/uint8:pt",
}
_EXOTIC = {
    "conv1": "int5/int6",
    "conv2": "int2/uint8",
    "conv3": "fp16/fp16",
    "fc1": "bf16/bf16",
}


def _uniform(kind: str) -> dict[str, QuantOption]:
    first, rest = _UNIFORM[kind]
    return parse_config({layer: first if layer == "conv1" else rest for layer in LAYERS})


def _dequantized_weights(path: Path) -> dict[str, np.ndarray]:
    """codes x scale of every weight DequantizeLinear in the file, by layer."""
    model = onnx.load(str(path))
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0].endswith(".weight"):
            codes = arrays[node.input[0]].astype(np.float32)
            scale = arrays[node.input[1]]
            shape = (-1,) + (1,) * (codes.ndim - 1) if scale.ndim else ()
            weights[node.output[0].removesuffix(".weight")] = codes * scale.reshape(shape)
    return weights


@pytest.mark.parametrize(
    ("kind", "opset", "weight_type"),
    [
        ("int8", 18, "INT8"),
        ("int4", 21, "INT4"),
        ("e4m3", 21, "FLOAT8E4M3FN"),
        ("e5m2", 21, "FLOAT8E5M2"),
    ],
)
def test_uniform_export_runs_and_agrees(
    kind: str,
    opset: int,
    weight_type: str,
    trained_model: DigitsCNN,
    activation_ranges: dict[str, float],
    digits: tuple[TensorDataset, TensorDataset],
    tmp_path: Path,
) -> None:
    config = _uniform(kind)
    path = tmp_path / f"{kind}.onnx"
    report, verified = export_and_verify(trained_model, config, activation_ranges, digits[1], path)
    assert_agrees(report, verified)
    assert (report.opset, report.ir_version) == (opset, 10)
    assert {(e.weight, e.weight_onnx_type, e.activation) for e in report.layers} == {
        ("qdq", weight_type, "qdq")
    }
    # The file holds the fake-quantized weights bit for bit, per channel.
    stored = _dequantized_weights(path)
    modules = dict(trained_model.named_modules())
    for layer, option in config.items():
        expected = fake_quantize(
            modules[layer].weight.detach(), option.weight, granularity=Granularity.PER_CHANNEL
        )
        np.testing.assert_array_equal(stored[layer], expected.numpy())
    # ... and every input scale is clip / max in float32.
    arrays = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    for layer, option in config.items():
        clip = activation_ranges[layer]
        expected_scale = compute_scale(torch.zeros(()), option.activation, clip=clip)
        assert arrays[f"{layer}.input_scale"] == expected_scale.item()
    record = report.to_dict()
    assert json.loads(json.dumps(record)) == record


def test_mixed_config_keeps_each_layer_in_its_format(
    trained_model: DigitsCNN,
    activation_ranges: dict[str, float],
    digits: tuple[TensorDataset, TensorDataset],
    tmp_path: Path,
) -> None:
    config = parse_config(_MIXED)
    report, verified = export_and_verify(
        trained_model, config, activation_ranges, digits[1], tmp_path / "mixed.onnx"
    )
    assert_agrees(report, verified)
    assert report.opset == 21
    how = {
        e.layer: (e.weight, e.weight_onnx_type, e.activation, e.activation_onnx_type)
        for e in report.layers
    }
    assert how == {
        "conv1": ("qdq", "INT8", "qdq", "INT8"),
        "conv2": ("qdq", "INT4", "qdq", "UINT4"),
        "conv3": ("qdq", "FLOAT8E4M3FN", "qdq", "FLOAT8E4M3FN"),
        "fc1": ("dequantized", None, "qdq_clipped", "UINT8"),
        "fc2": ("qdq", "INT8", "qdq", "UINT8"),
    }
    assert "no int3 type" in report.layer("fc1").reason
    scale = numpy_helper.to_array(
        next(
            t
            for t in onnx.load(str(tmp_path / "mixed.onnx")).graph.initializer
            if t.name == "fc2.weight_scale"
        )
    )
    assert scale.shape == ()  # ":pt" means one scale for the tensor


def test_formats_without_onnx_type_and_casts_still_agree(
    trained_model: DigitsCNN,
    activation_ranges: dict[str, float],
    digits: tuple[TensorDataset, TensorDataset],
    tmp_path: Path,
) -> None:
    config = parse_config(_EXOTIC)
    report, verified = export_and_verify(
        trained_model, config, activation_ranges, digits[1], tmp_path / "exotic.onnx"
    )
    assert_agrees(report, verified)
    assert (report.opset, report.ir_version) == (25, 13)  # INT2 weights
    assert [(e.weight, e.activation) for e in report.layers] == [
        ("dequantized", "qdq_clipped"),
        ("qdq", "qdq"),
        ("dequantized", "cast"),
        ("dequantized", "cast"),
    ]


@pytest.mark.parametrize(
    ("config", "ranges", "kwargs", "message"),
    [
        ({"bn1": "int8"}, {"bn1": 1.0}, {}, "BatchNorm2d"),
        ({"nope": "int8"}, {}, {}, "no such layer"),
        ({"conv1": "int8"}, {}, {}, "no clip"),
        ({"conv1": "int8"}, {"conv1": 0.0}, {}, "positive finite"),
        ({"conv1": "int8"}, {"conv1": float("nan")}, {}, "positive finite"),
        ({"conv2": "int4/uint4"}, {"conv2": 1.0}, {"opset": 19}, "needs opset 21"),
        ({"conv1": "e4m3"}, {"conv1": 1.0}, {"opset": 10_000}, "newer"),
    ],
)
def test_bad_requests_are_refused_before_exporting(
    config: dict[str, str],
    ranges: dict[str, float],
    kwargs: dict[str, int],
    message: str,
    trained_model: DigitsCNN,
    tmp_path: Path,
) -> None:
    path = tmp_path / "bad.onnx"
    with pytest.raises(InvalidArgument, match=message):
        export_onnx(trained_model, parse_config(config), ranges, INPUT_SHAPE, path, **kwargs)
    assert not path.exists()


def test_export_agrees_with_bitmesh_fake_quantized_model(
    trained_model: DigitsCNN,
    digits: tuple[TensorDataset, TensorDataset],
    tmp_path: Path,
) -> None:
    """The real pipeline: wrap with bitmesh's quantizers, calibrate, then export
    the plain weights with the wrapper's effective config and clips."""
    from bitmesh.quant.qmodel import (
        QuantSettings,
        effective_config,
        observing,
        plain_state_dict,
        quantizer_state,
        wrap_with_config,
    )

    train, test = digits
    wrapped = copy.deepcopy(trained_model)
    config = parse_config({"conv1": "int8", "conv2": "int4", "conv3": "e4m3", "fc1": "int4"})
    layers = wrap_with_config(wrapped, config, QuantSettings(), train.tensors[0][:64])
    wrapped.eval()
    with observing(layers), torch.no_grad():
        wrapped(train.tensors[0])
    applied = effective_config(layers)
    assert applied["conv2"].activation.name == "uint4"  # after a ReLU
    clips = {
        k.removesuffix(".activation_clip"): float(v) for k, v in quantizer_state(layers).items()
    }
    plain = DigitsCNN()
    plain.load_state_dict(plain_state_dict(wrapped, layers))
    path = tmp_path / "wrapped.onnx"
    report = export_onnx(plain, applied, clips, INPUT_SHAPE, path)
    verified = verify_onnx(path, wrapped, test)
    assert_agrees(report, verified)
