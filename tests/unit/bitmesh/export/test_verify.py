"""verify_onnx on a hand-built ONNX model (no exporter involved): it measures
agreement, catches a wrong reference, and reports a model onnxruntime refuses."""

from __future__ import annotations

from pathlib import Path

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
