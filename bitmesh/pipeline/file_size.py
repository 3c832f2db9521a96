"""The exported file measured against the size budget (pure, torch-free).

What the cost model predicted (codes plus scales of the chosen configuration)
and what the exporter wrote (``ExportReport.weight_bytes``: the bytes each
layer's weight initializers take) should be the same number; the size budget
bounds it (with the scales, or the codes only for weights-only budgets). A
difference larger than the configuration's scale share fails the run: the
file then is not what was budgeted (a format written as dequantized float32,
or scales the cost model did not count). The file's total size (biases,
normalisation parameters, the graph) is reported beside it, not checked: on
small models the graph alone outweighs the scales.
"""

from __future__ import annotations

from typing import Any

from bitmesh.errors import FailedPrecondition

__all__ = ["check_file_size", "file_size_report"]


def file_size_report(
    export: dict[str, Any],
    costs: dict[str, float],
    budgets: dict[str, float],
    accounting: str,
) -> dict[str, Any]:
    """Measured against predicted and budgeted bytes; ``ok`` and ``message`` say
    whether the difference stays within the scales' share."""
    weight_bytes = float(sum(export.get("weight_bytes", {}).values()))
    predicted = float(costs["size_bytes"] + costs.get("scale_bytes", 0.0))
    share = float(costs.get("scale_bytes", 0.0))
    budget = budgets.get("max_size_bytes")
    problems = []
    if abs(weight_bytes - predicted) > share:
        problems.append(
            f"the file stores {weight_bytes:.0f} bytes of weights where the cost model counted "
            f"{predicted:.0f} (codes {costs['size_bytes']:.0f} + scales {share:.0f}): the "
            f"difference exceeds the scales' share"
        )
    if budget is not None and weight_bytes - budget > share:
        problems.append(
            f"the file's {weight_bytes:.0f} bytes of weights exceed the size budget "
            f"{budget:.0f} ({accounting}) by more than the scales' share ({share:.0f} bytes)"
        )
    dequantized = [
        f"{layer['layer']} ({layer['weight_format']})"
        for layer in export.get("layers", [])
        if layer.get("weight") == "dequantized"
    ]
    if problems and dequantized:
        problems.append(f"layers written as dequantized float32: {', '.join(dequantized)}")
    return {
        "weight_bytes": weight_bytes,
        "predicted_bytes": predicted,
        "scale_bytes": share,
        "budget_bytes": budget,
        "size_accounting": accounting,
        "file_bytes": export.get("file_bytes"),
        "other_file_bytes": (
            None if export.get("file_bytes") is None else export["file_bytes"] - weight_bytes
        ),
        "ok": not problems,
        "message": "; ".join(problems)
        or f"the file's weights take {weight_bytes:.0f} bytes, as the cost model counted",
    }


def check_file_size(report: dict[str, Any]) -> None:
    """FAILED_PRECONDITION with the report's message when it is not ok."""
    if not report["ok"]:
        raise FailedPrecondition(
            f"the exported model does not match its budget: {report['message']}"
        )
