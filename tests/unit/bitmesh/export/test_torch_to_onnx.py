"""Float export: parameter names kept, BatchNorm not folded, blocked ops named."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from bitmesh.errors import FailedPrecondition
from bitmesh.export.torch_to_onnx import (
    INPUT_NAME,
    OnnxExportBlocked,
    export_float_graph,
    unsupported_ops_of,
)
from bitmesh.models.digits_cnn import DigitsCNN

from .reference import INPUT_SHAPE

pytestmark = pytest.mark.unit


class _CumMaxNet(nn.Module):
    """A running maximum: aten.cummax has no ONNX function in torch 2.14's exporter."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.cummax(x, dim=-1).values)


def test_initializers_are_the_parameters_and_batchnorm_stays() -> None:
    torch.manual_seed(0)
    model = DigitsCNN()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # statistics a fold would change
            module.running_mean.uniform_(-1.0, 1.0)
            module.running_var.uniform_(0.5, 2.0)
    proto = export_float_graph(model, INPUT_SHAPE, 18)
    assert model.training, "the caller's mode must come back"
    model.eval()
    initializers = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for name, param in model.state_dict().items():
        if name.endswith(("weight", "running_mean")):
            np.testing.assert_array_equal(initializers[name], param.numpy())
    assert "BatchNormalization" in {n.op_type for n in proto.graph.node}
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.randn(5, *INPUT_SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(session.run(None, {INPUT_NAME: x.numpy()})[0], expected, atol=1e-4)


def test_an_op_without_onnx_form_is_named() -> None:
    with pytest.raises(OnnxExportBlocked) as caught:
        export_float_graph(_CumMaxNet(), (8, 8), 18)
    error = caught.value
    assert isinstance(error, FailedPrecondition)
    assert error.unsupported_ops == ("aten.cummax",)
    assert "aten.cummax" in error.message
    record = error.to_dict()
    assert record == json.loads(json.dumps(record))
    assert record["exported"] is False and record["unsupported_ops"] == ["aten.cummax"]


def test_unsupported_ops_are_read_through_the_exception_chain() -> None:
    try:
        try:
            raise RuntimeError(
                "No ONNX function found for <OpOverload(op='aten.kthvalue', overload='default')>"
            )
        except RuntimeError as inner:
            raise ValueError("conversion failed") from inner
    except ValueError as outer:
        assert unsupported_ops_of(outer) == ("aten.kthvalue",)
    legacy = RuntimeError(
        "Exporting the operator 'aten::fft_fft' to ONNX opset version 17 is not supported"
    )
    assert unsupported_ops_of(legacy) == ("aten::fft_fft",)
    assert unsupported_ops_of(RuntimeError("shape mismatch")) == ()
