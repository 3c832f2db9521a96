"""The format -> ONNX type table agrees with onnx's own operator schemas."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from bitmesh.errors import InvalidArgument
from bitmesh.export.onnx_types import (
    CAST_TYPES,
    ONNXRUNTIME_CPU_MISSING,
    QDQ_TYPES,
    ir_version_for,
    qdq_type_of,
)
from bitmesh.formats import FORMATS, FormatKind
from bitmesh.quant.fake_quant import fake_quantize

pytestmark = pytest.mark.unit


def _accepted(op: str, opset: int, *, output: bool = False) -> set[str]:
    """Types of the op's first input (DequantizeLinear's codes) or first
    output (QuantizeLinear's codes) at ``opset``."""
    schema = onnx.defs.get_schema(op, opset)
    param = (schema.outputs if output else schema.inputs)[0].type_str
    for constraint in schema.type_constraints:
        if constraint.type_param_str == param:
            return set(constraint.allowed_type_strs)
    raise AssertionError(f"{op}: no type constraint for {param}")


@pytest.mark.parametrize("name", sorted(QDQ_TYPES))
def test_min_opset_is_the_first_whose_dequantize_linear_takes_the_type(name: str) -> None:
    qtype = QDQ_TYPES[name]
    type_str = f"tensor({qtype.onnx_name.lower()})"
    assert type_str in _accepted("DequantizeLinear", qtype.min_opset)
    assert type_str in _accepted("QuantizeLinear", qtype.min_opset, output=True)
    if name in ("int8", "uint8"):
        # 8-bit QDQ is older (opset 10); per-channel scales (axis) came in 13.
        assert "axis" in onnx.defs.get_schema("DequantizeLinear", qtype.min_opset).attributes
        assert "axis" not in onnx.defs.get_schema("DequantizeLinear", 12).attributes
    else:
        assert type_str not in _accepted("DequantizeLinear", qtype.min_opset - 1)
    assert qtype.default_opset >= qtype.min_opset


def test_every_scaled_format_without_an_onnx_type_is_a_narrow_integer() -> None:
    missing = {n for n, f in FORMATS.items() if f.is_quantized and qdq_type_of(f) is None}
    assert missing == {f"{s}int{b}" for s in ("", "u") for b in (3, 5, 6, 7)}
    assert set(CAST_TYPES) == {n for n, f in FORMATS.items() if f.kind is FormatKind.NATIVE} - {
        "fp32"
    }
    assert set(QDQ_TYPES) >= ONNXRUNTIME_CPU_MISSING


@pytest.mark.parametrize("name", sorted(QDQ_TYPES))
def test_every_grid_value_survives_the_numpy_type(name: str) -> None:
    """Codes produced in float32 convert to the ONNX numpy dtype exactly."""
    fmt = FORMATS[name]
    x = torch.linspace(-1.2, 1.2, 4001) * fmt.max_value
    codes = fake_quantize(x, fmt, clip=fmt.max_value).numpy()
    converted = codes.astype(QDQ_TYPES[name].numpy_dtype).astype(np.float32)
    np.testing.assert_array_equal(converted, codes)


def test_ir_version_is_the_lowest_that_has_the_opset() -> None:
    for opset in (18, 19, 21, 23, 25, 28):
        ir = ir_version_for(opset)
        releases = onnx.helper.VERSION_TABLE
        assert any(row[1] == ir and row[2] >= opset for row in releases)
        assert not any(row[1] < ir and row[2] >= opset for row in releases)
    assert ir_version_for(21) == 10  # what onnxruntime 1.31 needs for INT4
    with pytest.raises(InvalidArgument, match="newer"):
        ir_version_for(10_000)
