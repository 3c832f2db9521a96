"""Which bitmesh formats ONNX can represent, with which type, from which opset.

One table maps a format to its ONNX element type and the first opset whose
QuantizeLinear/DequantizeLinear accept it (read from the operator schemas of
onnx 1.23). The semantics match bitmesh's (METHODS.md section 1): INT types
are two's-complement or unsigned with zero point 0; FLOAT8E4M3FN, FLOAT8E5M2,
FLOAT6E2M3, FLOAT6E3M2 and FLOAT4E2M1 are the OCP mini-floats bitmesh's
e4m3, e5m2, e2m3, e3m2 and e2m1 are. QuantizeLinear divides by the scale and
rounds half to even (saturating for the float types), as bitmesh's fake
quantizer does, so an exported model reproduces its numbers exactly.

Formats missing from the table (int3, int5..7, their unsigned twins) have no
ONNX type; bf16 and fp16 are plain casts. Measured on onnxruntime 1.31.1
(CPU): it runs QDQ for every type here up to INT2/UINT2 (opset 25, IR 13),
FP8 only from opset 21 when an FP8-quantized input follows a Reshape (see
the table); it has no kernel for FLOAT4E2M1 and does not load IR 14 (opset
28), so FP6 cannot run there (``ONNXRUNTIME_CPU_MISSING``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import onnx

from bitmesh.errors import InvalidArgument
from bitmesh.formats import NumericFormat

__all__ = [
    "CAST_TYPES",
    "MIN_EXPORT_OPSET",
    "ONNXRUNTIME_CPU_MISSING",
    "QDQ_TYPES",
    "OnnxQuantType",
    "ir_version_for",
    "qdq_type_of",
]

#: The lowest opset torch's exporter writes (its torch.export-based exporter
#: starts at 18); per-channel QDQ of INT8 needs 13, so 18 covers it.
MIN_EXPORT_OPSET = 18


@dataclass(frozen=True)
class OnnxQuantType:
    """An ONNX element type a format is quantized to: ``min_opset`` is the
    first opset whose QuantizeLinear/DequantizeLinear take it (the standard);
    ``default_opset`` the one an export picks (higher where onnxruntime needs it)."""

    onnx_name: str
    min_opset: int
    runtime_opset: int = 0

    @property
    def default_opset(self) -> int:
        return max(self.min_opset, self.runtime_opset)

    @property
    def tensor_type(self) -> int:
        """The ``onnx.TensorProto`` enum value."""
        return int(onnx.TensorProto.DataType.Value(self.onnx_name))

    @property
    def numpy_dtype(self) -> np.dtype:
        """numpy (ml_dtypes for the sub-byte and float8 types) dtype of the codes."""
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self.tensor_type))


QDQ_TYPES: Mapping[str, OnnxQuantType] = MappingProxyType(
    {
        "int8": OnnxQuantType("INT8", 13),
        "uint8": OnnxQuantType("UINT8", 13),
        # onnxruntime 1.31's QDQ propagation moves an FP8 QuantizeLinear
        # ahead of a Reshape (a flatten before a Linear), and its CPU Reshape
        # takes FP8 only from opset 21: at 19-20 the model does not load.
        "e4m3": OnnxQuantType("FLOAT8E4M3FN", 19, runtime_opset=21),
        "e5m2": OnnxQuantType("FLOAT8E5M2", 19, runtime_opset=21),
        "int4": OnnxQuantType("INT4", 21),
        "uint4": OnnxQuantType("UINT4", 21),
        "e2m1": OnnxQuantType("FLOAT4E2M1", 23),
        "int2": OnnxQuantType("INT2", 25),
        "uint2": OnnxQuantType("UINT2", 25),
        "e2m3": OnnxQuantType("FLOAT6E2M3", 28),
        "e3m2": OnnxQuantType("FLOAT6E3M2", 28),
    }
)
"""bitmesh format name -> the ONNX type QuantizeLinear/DequantizeLinear use."""

CAST_TYPES: Mapping[str, OnnxQuantType] = MappingProxyType(
    {"bf16": OnnxQuantType("BFLOAT16", 13), "fp16": OnnxQuantType("FLOAT16", 13)}
)
"""NATIVE formats an activation reaches by a Cast there and back (round to
nearest even in onnxruntime, as torch's casts)."""

ONNXRUNTIME_CPU_MISSING: frozenset[str] = frozenset({"e2m1", "e2m3", "e3m2"})
"""Formats whose QDQ onnxruntime 1.31.1 cannot run on CPU (measured): pass it
as ``dequantize_formats`` to get a model onnxruntime runs."""


def ir_version_for(opset: int) -> int:
    """The lowest IR version that supports ``opset`` (onnx's release table).

    Writing the lowest one matters: onnx 1.23 stamps its newest IR version,
    which onnxruntime 1.31 refuses to load even when every op would run.
    """
    for _release, ir_version, ai_onnx, *_ in onnx.helper.VERSION_TABLE:
        if ai_onnx >= opset:
            return int(ir_version)
    raise InvalidArgument(
        f"opset {opset} is newer than this onnx ({onnx.__version__}) knows; "
        f"the newest is {onnx.defs.onnx_opset_version()}"
    )


def qdq_type_of(fmt: NumericFormat) -> OnnxQuantType | None:
    """The ONNX quantized type of ``fmt``, or None when ONNX has none."""
    return QDQ_TYPES.get(fmt.name)
