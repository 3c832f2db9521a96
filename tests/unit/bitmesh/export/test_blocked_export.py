"""Block-scaled weights in ONNX: runnable in onnxruntime, decoded bit for bit,
and stored in exactly the bytes the cost model counts (issue 18's export test)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch.utils.data import TensorDataset

from bitmesh.costs import option_costs
from bitmesh.export.onnx_qdq import export_onnx
from bitmesh.formats import QuantOption, get_format
from bitmesh.models.digits_cnn import DigitsCNN
from bitmesh.models.layers import discover_layers
from bitmesh.quant.fake_quant import fake_quantize

from .reference import INPUT_SHAPE, LAYERS, assert_agrees, export_and_verify, parse_config

pytestmark = pytest.mark.unit


def uniform(weight: str, first_input: str = "int8", later_inputs: str = "uint8") -> dict[str, str]:
    """``weight`` everywhere; conv1 sees signed pixels, the rest follow a ReLU."""
    return {
        layer: f"{weight}/{first_input if layer == 'conv1' else later_inputs}" for layer in LAYERS
    }


def budgeted_bytes(model: DigitsCNN, config: dict[str, QuantOption]) -> dict[str, float]:
    profiles = {p.name: p for p in discover_layers(model, INPUT_SHAPE)}
    return {
        name: option_costs(
            profiles[name].parameters,
            profiles[name].macs,
            option,
            profiles[name].output_channels,
            weight_shape=profiles[name].weight_shape,
        ).total_bytes
        for name, option in config.items()
    }


def test_group_int4_runs_agrees_and_stores_what_the_budget_counts(
    trained_model: DigitsCNN,
    activation_ranges: dict[str, float],
    digits: tuple[TensorDataset, TensorDataset],
    tmp_path: Path,
) -> None:
    config = parse_config(uniform("int4_g32"))
    report, verified = export_and_verify(
        trained_model, config, activation_ranges, digits[1], tmp_path / "g32.onnx"
    )
    assert_agrees(report, verified)
    assert report.opset == 21
    assert {e.weight for e in report.layers} == {"blocked"}
    assert {e.weight_onnx_type for e in report.layers} == {"INT4"}
    # The file's weights are the cost model's bytes exactly: INT4 codes, one
    # FP16 scale per 32 input channels per (output channel, kernel position).
    expected = budgeted_bytes(trained_model, config)
    assert report.weight_bytes == expected
    assert expected["conv1"] == 16 * 9 * 0.5 + 16 * 9 * 2  # partial blocks (1 input channel)
    assert expected["fc1"] == 64 * 128 * 0.5 + 64 * 4 * 2
    scales = sum(
        option_costs(
            0, 0, o, 1, weight_shape=trained_model.get_submodule(n).weight.shape
        ).scale_bytes
        for n, o in config.items()
    )
    # The whole file: weights, biases, BN parameters and the graph itself.
    others = report.file_bytes - sum(report.weight_bytes.values())
    assert 0 < others < 16_000  # digits: 1.6 KB of biases and BN, ~13 KB of graph
    assert scales > 0


def decoded_weights(path: Path, layers: list[str]) -> dict[str, np.ndarray]:
    """Run the file with each layer's decoded weight as an extra output."""
    model = onnx.load(str(path))
    for layer in layers:
        model.graph.output.append(onnx.helper.make_tensor_value_info(f"{layer}.weight", 1, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.zeros((1, *INPUT_SHAPE), np.float32)}
    outputs = session.run([f"{n}.weight" for n in layers], feed)
    return dict(zip(layers, outputs, strict=True))


def assert_decodes_bit_for_bit(
    path: Path, model: DigitsCNN, config: dict[str, QuantOption]
) -> None:
    got = decoded_weights(path, list(config))
    for layer, option in config.items():
        weight = model.get_submodule(layer).weight.detach()
        want = fake_quantize(weight, option.weight).numpy()
        assert np.array_equal(got[layer], want), layer  # -0.0 == 0.0: E2M1 codes keep no -0


def test_mx_and_nvfp4_forms_run_agree_and_decode_bit_for_bit(
    trained_model: DigitsCNN,
    activation_ranges: dict[str, float],
    digits: tuple[TensorDataset, TensorDataset],
    tmp_path: Path,
) -> None:
    config = parse_config(
        {
            "conv1": "mxint8/int8",
            "conv2": "mxfp8_e4m3/uint8",
            "conv3": "nvfp4/e4m3",
            "fc1": "mxfp4/uint8",
            "fc2": "int4_g64_zp/uint8",
        }
    )
    path = tmp_path / "mixed.onnx"
    report, verified = export_and_verify(trained_model, config, activation_ranges, digits[1], path)
    assert_agrees(report, verified)
    assert report.opset == 21
    assert {e.weight for e in report.layers} == {"blocked"}
    assert report.layer("fc1").weight_onnx_type == "UINT4"  # E2M1 codes through the table
    assert report.weight_bytes == budgeted_bytes(trained_model, config)
    assert_decodes_bit_for_bit(path, trained_model, config)


def test_other_forms_decode_and_unrunnable_formats_are_dequantized_with_the_format_recorded(
    trained_model: DigitsCNN, activation_ranges: dict[str, float], tmp_path: Path
) -> None:
    config = parse_config(
        {
            "conv1": "int2_g32/fp32",
            "conv2": "mxfp8_e5m2/fp32",
            "conv3": "int8_g64_fp32/fp32",
            "fc1": "mxfp6_e3m2/mxfp8_e4m3",
            "fc2": "int3_g32/fp32",
        }
    )
    path = tmp_path / "others.onnx"
    report = export_onnx(trained_model, config, activation_ranges, INPUT_SHAPE, path)
    assert report.onnxruntime_loadable, report.onnxruntime_error
    assert report.opset == 25  # INT2
    assert_decodes_bit_for_bit(path, trained_model, config)
    runnable = {"conv1", "conv2", "conv3"}
    assert {e.layer for e in report.layers if e.weight == "blocked"} == runnable
    for layer in ("fc1", "fc2"):
        entry = report.layer(layer)
        assert entry.weight == "dequantized" and "cannot run" in entry.reason
        assert report.weight_bytes[layer] == trained_model.get_submodule(layer).weight.numel() * 4
    budget = budgeted_bytes(trained_model, config)
    assert {k: v for k, v in report.weight_bytes.items() if k in runnable} == {
        k: v for k, v in budget.items() if k in runnable
    }
    assert report.layer("fc1").activation == "blocked"  # MXFP8 scales computed in the graph
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    recorded = json.loads(metadata["bitmesh.quantization"])
    assert recorded["fc1"] == {
        "activation": "blocked",
        "option": "mxfp6_e3m2/mxfp8_e4m3",
        "weight": "dequantized",
        "weight_onnx_type": None,
    }


class _Branches(torch.nn.Module):
    """Every layer reads the graph input itself, so onnxruntime and torch
    quantize the very same values: conv branches block along channels (40:
    a partial block of 32), linear branches along the flattened input."""

    CONVS = ("mxfp4", "nvfp4", "int4_g32_zp", "mxfp6_e3m2")
    LINEARS = ("mxfp8_e4m3", "mxint8", "int8_g32_fp32")

    def __init__(self) -> None:
        super().__init__()
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(40, 2, 1) for _ in self.CONVS)
        self.linears = torch.nn.ModuleList(torch.nn.Linear(640, 2) for _ in self.LINEARS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [conv(x).flatten(1) for conv in self.convs]
        outs += [linear(x.flatten(1)) for linear in self.linears]
        return torch.cat(outs, dim=1)


def test_block_inputs_are_computed_in_the_graph_bit_for_bit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Branches().eval()
    x = torch.randn(3, 40, 4, 4) * 2
    x[0, :, 0, 0] = 0.0  # an all-zero block
    clip = float(x.abs().max()) * 0.8  # NVFP4 saturates beyond its tensor range
    names = [f"convs.{i}" for i in range(4)] + [f"linears.{i}" for i in range(3)]
    formats = _Branches.CONVS + _Branches.LINEARS
    config = parse_config({n: f"fp32/{f}" for n, f in zip(names, formats, strict=True)})
    path = tmp_path / "inputs.onnx"
    # Only NVFP4 (convs.1) needs a range: MX and group scales come from the blocks.
    report = export_onnx(model, config, {"convs.1": clip}, (40, 4, 4), path)
    assert report.onnxruntime_loadable, report.onnxruntime_error
    assert {e.activation for e in report.layers} == {"blocked"}
    proto = onnx.load(str(path))
    quantized_inputs = {}
    for node in proto.graph.node:
        weight = next((i for i in node.input if i.endswith(".weight")), None)
        if node.op_type in ("Conv", "Gemm", "MatMul") and weight is not None:
            quantized_inputs[weight.removesuffix(".weight")] = node.input[0]
    for value in quantized_inputs.values():
        proto.graph.output.append(onnx.helper.make_tensor_value_info(value, 1, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.run(
        list(quantized_inputs.values()), {session.get_inputs()[0].name: x.numpy()}
    )
    got = dict(zip(quantized_inputs, outputs, strict=True))
    for name, fmt in zip(names, formats, strict=True):
        source = x if name.startswith("convs") else x.flatten(1)
        want = fake_quantize(
            source, get_format(fmt), clip=clip, block_axis=1 if name.startswith("convs") else -1
        )
        assert np.array_equal(got[name].reshape(want.shape), want.numpy()), (name, fmt)
