"""verify_onnx on a hand-built ONNX model (no exporter involved): it measures
agreement, catches a wrong reference, and reports a model onnxruntime refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.utils.data import TensorDataset

from bitmesh.errors import InvalidArgument, NotFound
from bitmesh.export.verify import verify_onnx

pytestmark = pytest.mark.unit


def _linear_onnx(linear: nn.Linear, path: Path) -> Path:
    """Flatten + Gemm computing ``linear`` on (batch, 1, 8, 8) inputs."""
    weight = numpy_helper.from_array(linear.weight.detach().numpy(), "w")
    bias = numpy_helper.from_array(linear.bias.detach().numpy(), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1),
        ],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


@pytest.fixture
def linear() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def test_the_same_function_agrees(
    linear: nn.Sequential, digits: tuple[TensorDataset, TensorDataset], tmp_path: Path
) -> None:
    path = _linear_onnx(linear[1], tmp_path / "linear.onnx")
    linear.train()
    report = verify_onnx(path, linear, digits[1], batch_size=100)
    assert linear.training, "the reference's mode must come back"
    assert report.onnxruntime_ok and report.onnxruntime_optimization == "all"
    assert report.samples == len(digits[1])
    assert report.agreement == 1.0
    assert report.onnx_accuracy == report.torch_accuracy
    assert report.max_abs_logit_diff is not None and report.max_abs_logit_diff < 1e-4
    assert report.to_dict()["agreement"] == 1.0


def test_a_different_reference_disagrees(
    linear: nn.Sequential, digits: tuple[TensorDataset, TensorDataset], tmp_path: Path
) -> None:
    path = _linear_onnx(linear[1], tmp_path / "linear.onnx")
    report = verify_onnx(path, lambda x: -linear(x), digits[1])
    assert report.agreement is not None and report.agreement < 0.5
    assert report.max_abs_logit_diff is not None and report.max_abs_logit_diff > 0.1


def test_a_model_onnxruntime_refuses_is_reported_not_raised(
    linear: nn.Sequential, digits: tuple[TensorDataset, TensorDataset], tmp_path: Path
) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not an onnx model")
    report = verify_onnx(path, linear, digits[1])
    assert not report.onnxruntime_ok
    assert report.onnxruntime_error and "onnxruntime cannot load" in report.onnxruntime_error
    assert report.agreement is None and report.onnx_accuracy is None
    with torch.no_grad():
        predictions = linear(digits[1].tensors[0]).argmax(1)
    expected = float((predictions == digits[1].tensors[1]).float().mean())
    assert report.torch_accuracy == pytest.approx(expected)


def test_missing_file_and_empty_dataset(linear: nn.Sequential, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        verify_onnx(tmp_path / "absent.onnx", linear, TensorDataset(torch.zeros(1, 1, 8, 8)))
    path = _linear_onnx(linear[1], tmp_path / "linear.onnx")
    empty = TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(InvalidArgument, match="empty"):
        verify_onnx(path, linear, empty)
    with pytest.raises(InvalidArgument, match="logits"):
        verify_onnx(path, lambda x: x.sum(), TensorDataset(torch.zeros(2, 1, 8, 8), torch.zeros(2)))


def _quantized_matmul_onnx(path: Path, weight: torch.Tensor, tokens: int | None) -> Path:
    """x -> Q/DQ (int8, scale 1/32) -> MatMul with an int8 DQ weight
    [-> ReduceMean over the tokens]: a quantized Linear on a rank-3 input
    (``tokens`` given) or on a rank-2 one."""
    codes = torch.round(weight.T * 16).clamp(-127, 127).to(torch.int8)
    initializers = [
        numpy_helper.from_array(codes.numpy(), "w_q"),
        numpy_helper.from_array(np.array(1 / 16, dtype=np.float32), "w_s"),
        numpy_helper.from_array(np.array(1 / 32, dtype=np.float32), "x_s"),
        numpy_helper.from_array(np.array(0, dtype=np.int8), "x_z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_s", "x_z"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_z"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w_dq"]),
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["y" if tokens else "logits"]),
    ]
    shape: list[object] = ["batch", 8]
    if tokens:
        initializers.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"))
        nodes.append(helper.make_node("ReduceMean", ["y", "axes"], ["logits"], keepdims=0))
        shape = ["batch", tokens, 8]
    graph = helper.make_graph(
        nodes,
        "quantized_linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(("tokens", "level"), [(5, "basic"), (None, "all")])
def test_a_quantized_matmul_on_a_rank3_input_runs_at_the_basic_level(
    tmp_path: Path, tokens: int | None, level: str
) -> None:
    torch.manual_seed(0)
    weight = torch.randn(10, 8) * 0.3
    path = _quantized_matmul_onnx(tmp_path / "q.onnx", weight, tokens)
    w = torch.round(weight.T * 16).clamp(-127, 127) / 16

    def reference(x: torch.Tensor) -> torch.Tensor:
        y = (torch.round(x * 32).clamp(-128, 127) / 32) @ w
        return y.mean(dim=1) if tokens else y

    shape = (tokens, 8) if tokens else (8,)
    x = torch.randn(64, *shape)
    data = TensorDataset(x, reference(x).argmax(1))
    report = verify_onnx(path, reference, data)
    assert report.onnxruntime_ok and report.onnxruntime_optimization == level
    assert report.agreement == 1.0
    assert report.max_abs_logit_diff is not None and report.max_abs_logit_diff < 1e-5
    if tokens:
        assert report.onnxruntime_error and "rank > 2" in report.onnxruntime_error
    else:
        assert report.onnxruntime_error is None
