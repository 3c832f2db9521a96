"""What an exported ONNX file stores for each layer's weight, in bytes.

The budget check of ``bitmesh run`` compares these with the cost model: a
layer's stored bytes are its initializers (codes, scales, zero points, tensor
scales: every initializer named ``<layer>.weight...``) at their ONNX types'
widths, sub-byte types packed as the file packs them (INT4 two per byte).
Shared constants (the E2M1 decode table, 2.0, 127) and biases are not any
layer's weight; they are in the file's total size, which is reported apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from math import prod

import onnx

__all__ = ["TYPE_BITS", "stored_weight_bytes"]

_T = onnx.TensorProto
_KNOWN_TYPES = frozenset(_T.DataType.keys())
#: Bits per element of the ONNX types an export writes.
TYPE_BITS: dict[int, int] = {
    _T.INT2: 2,
    _T.UINT2: 2,
    _T.INT4: 4,
    _T.UINT4: 4,
    _T.FLOAT4E2M1: 4,
    _T.INT8: 8,
    _T.UINT8: 8,
    _T.FLOAT8E4M3FN: 8,
    _T.FLOAT8E5M2: 8,
    _T.FLOAT16: 16,
    _T.BFLOAT16: 16,
    _T.FLOAT: 32,
    _T.INT32: 32,
    _T.INT64: 64,
    _T.DOUBLE: 64,
    **{
        int(_T.DataType.Value(name)): bits
        for name, bits in (
            ("FLOAT6E2M3", 6),
            ("FLOAT6E3M2", 6),
            ("FLOAT8E8M0", 8),
            ("FLOAT8E4M3FNUZ", 8),
            ("FLOAT8E5M2FNUZ", 8),
            ("INT16", 16),
            ("UINT16", 16),
        )
        if name in _KNOWN_TYPES
    },
}


def stored_weight_bytes(model: onnx.ModelProto, layers: Iterable[str]) -> dict[str, float]:
    """Per layer, the bytes of its weight's initializers."""
    out: dict[str, float] = {}
    for layer in layers:
        prefix = f"{layer}.weight"
        bits = 0
        for tensor in model.graph.initializer:
            if tensor.name == prefix or tensor.name.startswith(prefix + "_"):
                bits += prod(tensor.dims) * TYPE_BITS[tensor.data_type]
        out[layer] = bits / 8
    return out
