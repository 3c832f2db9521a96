"""Pure functions over stage results: budget checks, comparisons, summary.md."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

#: Relative slack of a budget check (costs are sums of floats).
_SLACK = 1e-9
_BUDGET_FIELDS = {
    "max_bops": "bops",
    "max_size_bytes": "size_bytes",
    "max_latency_ms": "latency_ms",
    "max_avg_weight_bits": "avg_weight_bits",
}


def versions() -> dict[str, str]:
    """Versions of what produced the numbers (python and the key packages)."""
    found = {"python": platform.python_version()}
    for name in ("torch", "onnx", "onnxruntime", "ortools", "grpcio", "celery"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def budget_checks(
    costs: dict[str, float],
    budgets: dict[str, float],
    extra: dict[str, float] | None = None,
    size_accounting: str = "weights_and_scales",
) -> dict[str, dict[str, Any]]:
    """Each budget against the measured value (``extra`` adds e.g. avg weight
    bits); a value not measured is reported as ``None``, not as met. The size
    budget compares the codes plus every scale unless ``size_accounting`` is
    ``weights_only``."""
    values = {**costs, **(extra or {})}
    if size_accounting == "weights_and_scales" and "size_bytes" in costs:
        values["size_bytes"] = costs["size_bytes"] + costs.get("scale_bytes", 0.0)
    checks: dict[str, dict[str, Any]] = {}
    for name, limit in budgets.items():
        value = values.get(_BUDGET_FIELDS[name])
        checks[name] = {
            "limit": limit,
            "value": value,
            "met": None if value is None else value <= limit * (1 + _SLACK),
        }
    return checks


def meets(checks: dict[str, dict[str, Any]]) -> bool:
    return all(c["met"] is not False for c in checks.values())


def compare_with(result: dict[str, Any], baseline: dict[str, Any], name: str) -> dict[str, Any]:
    """Accuracy and BOPs of the result against one baseline, with the shortfall
    stated when the result is not better."""
    delta = result["accuracy"] - baseline["accuracy"]
    no_more_bops = baseline["costs"]["bops"] <= result["costs"]["bops"] * (1 + _SLACK)
    beats = delta > 0
    text = (
        f"{'beats' if beats else 'does not beat'} {name} by {abs(delta) * 100:.2f} points "
        f"({result['accuracy']:.4f} vs {baseline['accuracy']:.4f}) at "
        f"{result['costs']['bops'] / max(baseline['costs']['bops'], 1e-12):.2f}x its BOPs"
    )
    return {
        "baseline": name,
        "accuracy_delta": delta,
        "beats": beats,
        "baseline_has_no_more_bops": no_more_bops,
        "shortfall": 0.0 if beats else -delta,
        "text": text,
    }


def best_uniform_label(option: str) -> str:
    """The report's row of the best uniform configuration that fits
    ("int4/int4" reads INT4: weights and activations alike)."""
    return f"best uniform fit ({_option_name(option)})"


def _option_name(option: str) -> str:
    weight, _, activation = option.partition("/")
    return (weight if activation in ("", weight) else option).upper()


def verdict(vs_best_uniform: dict[str, Any] | None, best: str | None) -> str:
    """The line that answers whether mixed precision was worth it: against the
    best uniform configuration within the same budgets, trained and evaluated
    the same way."""
    if best is None:
        return (
            "Verdict: no uniform configuration fits the budgets; mixed precision is the "
            "only way to meet them."
        )
    assert vs_best_uniform is not None
    points = vs_best_uniform["accuracy_delta"] * 100
    label = _option_name(best)
    if vs_best_uniform["beats"]:
        return (
            f"Verdict: mixed precision beats the best uniform fit (uniform {label}) by "
            f"{points:.2f} points."
        )
    return (
        f"Verdict: uniform {label} is as good ({-points:.2f} points ahead or level) and fits "
        f"the same budgets; take the uniform model."
    )


def _fmt_count(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def summary_markdown(report: dict[str, Any]) -> str:
    """The table a person reads first, then the verdicts and where to look."""
    inputs = report["inputs"]
    lines = [
        f"# bitmesh run: {inputs['model']} on {inputs['dataset']} ({inputs['method']})",
        "",
        "Budgets: " + ", ".join(f"{k} = {v:g}" for k, v in inputs["budgets"].items()),
        "",
    ]
    teacher = report.get("teacher")
    if teacher:
        how = " (evaluated, not trained)" if teacher["given"] else ""
        lines += [f"FP32 model: {teacher['text']}{how}; it is the distillation teacher.", ""]
    lines += [
        "| model | test accuracy | BOPs | weight size (bytes) |",
        "|---|---:|---:|---:|",
    ]
    for name, row in report["trained"].items():
        lines.append(
            f"| {name} | {row['accuracy']:.4f} | {_fmt_count(row['costs']['bops'])} | "
            f"{row['costs']['size_bytes']:,.0f} |"
        )
    lines.append("")
    result = report.get("result")
    if result:
        verdict = "meets" if result["meets_budget"] else "DOES NOT meet"
        lines.append(f"Result ({result['method']}) {verdict} its budgets.")
        for comparison in report.get("comparisons", {}).values():
            lines.append(f"- {comparison['text']}")
    onnx = report.get("onnx") or {}
    export = onnx.get("export") or {}
    verify = onnx.get("verify") or {}
    if export.get("exported") is False:
        ops = ", ".join(export.get("unsupported_ops") or []) or "no single op named"
        reason = export.get("reason") or export.get("error", "")
        lines.append(f"- no model.onnx: export blocked ({ops}): {reason}")
    elif verify:
        agreement = verify.get("agreement")
        lines.append(
            f"- model.onnx: checker {'ok' if export.get('checker_ok') else 'FAILED'}; "
            f"onnxruntime agrees with torch on "
            f"{'n/a' if agreement is None else f'{agreement * 100:.2f} %'} of "
            f"{verify['samples']} test samples (ONNX accuracy {verify.get('onnx_accuracy')})"
        )
    sizes = onnx.get("file_size")
    if sizes:
        budget = sizes.get("budget_bytes")
        lines.append(
            f"- model.onnx size: {sizes.get('file_bytes') or 0:,.0f} bytes on disk, of which weights "
            f"{sizes['weight_bytes']:,.0f}; size budget "
            f"{'none' if budget is None else f'{budget:,.0f} bytes'} ({sizes['size_accounting']})"
        )
    for note in report.get("notes", []):
        lines.append(f"- note: {note}")
    lines += ["", "Plots: frontier.png, layers.png. Everything else: report.json.", ""]
    if report.get("verdict"):
        lines += [report["verdict"], ""]
    return "\n".join(lines)
