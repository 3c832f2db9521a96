"""``frontier.png`` and ``layers.png`` (matplotlib, Agg).

matplotlib is imported with this module, not inside each function: ``bitmesh
run`` imports this module in a background thread while it waits on the mesh
(``bitmesh.pipeline.run``), and a module's import lock makes a caller wait
for it to finish, where ``matplotlib.use`` in one thread while another is
half-way through importing pyplot fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after the backend is chosen

_AXIS_LABELS = {
    "max_bops": ("bops", "BOPs"),
    "max_size_bytes": ("size_bytes", "weight size (bytes)"),
    "max_latency_ms": ("latency_ms", "latency (ms)"),
    "max_avg_weight_bits": ("avg_weight_bits", "average weight bits"),
}


def _axis_value(point: dict[str, Any], field: str) -> float:
    if field == "avg_weight_bits":
        return float(point.get("avg_weight_bits", 0.0))
    return float(point["costs"][field])


def plot_frontier(report: dict[str, Any], path: Path) -> None:
    """Omega along the frontier, the budget, the chosen point, the uniform
    baselines; trained accuracies on a second axis."""
    solver = report["stages"]["solver"]
    field, label = _AXIS_LABELS[solver["axis"]]
    frontier = solver["frontier"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    xs = [_axis_value(p, field) for p in frontier]
    ax.step(xs, [p["total_omega"] for p in frontier], where="post", color="tab:blue", alpha=0.4)
    ax.plot(xs, [p["total_omega"] for p in frontier], "o", color="tab:blue", label="frontier Ω")
    chosen = solver["solution"]
    ax.plot(
        _axis_value(chosen, field),
        chosen["total_omega"],
        "*",
        ms=16,
        color="tab:red",
        label="chosen (LCPAQ)",
    )
    ax.axvline(report["inputs"]["budgets"][solver["axis"]], color="grey", ls="--", label="budget")
    for name, row in report["baselines"].items():
        if row.get("omega") is not None and field != "avg_weight_bits":
            ax.plot(row["costs"][field], row["omega"], "s", color="tab:green")
            ax.annotate(name, (row["costs"][field], row["omega"]), fontsize=8)
    ax.set_xlabel(label)
    ax.set_ylabel("total perturbation Ω")
    ax.set_yscale("symlog", linthresh=1e-6)
    ax.grid(True, alpha=0.3)
    acc = ax.twinx()
    for name, row in report["trained"].items():
        if field in row.get("costs", {}):
            acc.plot(row["costs"][field], row["accuracy"], "^", color="tab:orange")
            acc.annotate(
                f"{name} {row['accuracy']:.3f}",
                (row["costs"][field], row["accuracy"]),
                fontsize=8,
                color="tab:orange",
            )
    result = report.get("result") or {}
    if field in result.get("costs", {}):
        acc.plot(result["costs"][field], result["accuracy"], "*", ms=12, color="tab:orange")
    acc.set_ylabel("test accuracy (triangles; star = result)")
    if field != "avg_weight_bits" and all(x > 0 for x in xs):
        ax.set_xscale("log")  # FP32 sits orders of magnitude right of the frontier
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_layers(report: dict[str, Any], path: Path) -> None:
    """Each layer's chosen format (bar colour/label) and its sensitivity (bar height)."""
    layers = report["stages"]["sensitivity"]["layers"]
    config = report["result"]["config"] if report.get("result") else {}
    names = [layer["name"] for layer in layers]
    traces = [max(abs(layer["normalized_trace"]), 1e-12) for layer in layers]
    keys = sorted({config.get(n, "fp32") for n in names})
    colours = {k: plt.get_cmap("tab10")(i) for i, k in enumerate(keys)}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(names)), 4.5), dpi=120)
    bars = ax.bar(names, traces, color=[colours[config.get(n, "fp32")] for n in names])
    for bar, name in zip(bars, names, strict=True):
        ax.annotate(
            config.get(name, "fp32"),
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
            rotation=90,
        )
    ax.set_yscale("log")
    ax.set_ylabel("normalised Hessian trace")
    ax.set_title("format per layer (label, colour) and sensitivity (height)")
    ax.tick_params(axis="x", rotation=60, labelsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles, list(colours), fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
