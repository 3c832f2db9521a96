"""Can the export target store a weight format in its own bits? (torch-free)

Asked by ``bitmesh run`` before any training: a format the target can only
write as dequantized float32 makes the exported file larger than the size
budget counted, which must be said up front, not found after training. The
target is onnxruntime 1.31 on CPU, as measured in ``onnx_types`` and
``blocked_weights``.
"""

from __future__ import annotations

from collections.abc import Iterable

from bitmesh.export.blocked_forms import blocked_form_of
from bitmesh.export.onnx_types import ONNXRUNTIME_CPU_MISSING, qdq_type_of
from bitmesh.formats import FormatKind, NumericFormat

__all__ = ["EXPORT_TARGET", "unsupported_weight_formats", "weight_storage_problem"]

#: The runtime the pipeline exports for.
EXPORT_TARGET = "onnxruntime 1.31 (CPU)"


def weight_storage_problem(fmt: NumericFormat) -> str | None:
    """Why ``fmt``'s weights cannot be stored in their own bits, or None."""
    if fmt.is_identity:
        return None
    if fmt.is_blocked:
        if blocked_form_of(fmt) is not None:
            return None
        return (
            f"{EXPORT_TARGET} has no kernel for {fmt.name}'s {fmt.element.name} elements: its "
            "weights would be written as dequantized float32"
        )
    if fmt.kind is FormatKind.NATIVE:
        return f"{fmt.name} weights are written as their float32 values (a cast has no codes)"
    if qdq_type_of(fmt) is None:
        return f"ONNX has no {fmt.name} type: its weights would be written as dequantized float32"
    if fmt.name in ONNXRUNTIME_CPU_MISSING:
        return (
            f"{EXPORT_TARGET} cannot run {fmt.name} codes: its weights would be written as "
            "dequantized float32"
        )
    return None


def unsupported_weight_formats(formats: Iterable[NumericFormat]) -> dict[str, str]:
    """``{format name: why}`` for the formats the target cannot store as counted."""
    found: dict[str, str] = {}
    for fmt in formats:
        why = weight_storage_problem(fmt)
        if why is not None:
            found[fmt.name] = why
    return found
