"""``docs/fidelity.md`` and its plot, written by the benchmark.

Everything above the ``HAND_WRITTEN`` marker is regenerated on every run;
the analysis below it (why a method wins or loses, written after reading the
numbers) is kept as it is.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fidelity.protocol import PROTOCOL_CHANGES, PROTOCOL_VERSION, Budget
from fidelity.stats import Interval
from fidelity.summary import COMPARISONS, paired

HAND_WRITTEN = "<!-- hand-written analysis below: kept when the benchmark rewrites this file -->"
_MARKERS = {"ptq": "o", "qat": "s"}


def _iv(value: Interval | None) -> str:
    if value is None:
        return "-"
    if value.n == 1:
        return f"{value.mean:.2f}"
    return f"{value.mean:.2f} [{value.low:.2f}, {value.high:.2f}]"


def _diff(value: Interval | None) -> str:
    if value is None:
        return "-"
    text = f"{value.mean:+.2f}"
    if value.n > 1:
        text += f" [{value.low:+.2f}, {value.high:+.2f}]"
        text += " **excludes 0**" if value.excludes_zero() else ""
    return text


def plot(
    cells: Sequence[dict[str, Any]], budgets: Sequence[Budget], limits: dict[str, float], path: Path
) -> None:
    """Accuracy against BOPs, PTQ and QAT side by side, every method with its
    interval, the BOPs budgets as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(c["method"] for c in cells))
    colours = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(methods)}
    figure, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for axis, regime in zip(axes, ("ptq", "qat"), strict=True):
        for cell in (c for c in cells if c["regime"] == regime):
            accuracy: Interval = cell["accuracy"]
            axis.errorbar(
                cell["bops"] / 1e6,
                accuracy.mean,
                yerr=[[accuracy.mean - accuracy.low], [accuracy.high - accuracy.mean]],
                fmt=_MARKERS[regime],
                color=colours[cell["method"]],
                label=cell["method"],
                capsize=3,
                alpha=0.85,
            )
        for budget in budgets:
            if budget.axis == "bops" and budget.name in limits:
                axis.axvline(limits[budget.name] / 1e6, color="grey", linestyle="--", linewidth=0.8)
                axis.annotate(
                    budget.name,
                    (limits[budget.name] / 1e6, axis.get_ylim()[0]),
                    rotation=90,
                    fontsize=7,
                    color="grey",
                )
        axis.set_title(f"{regime.upper()}: test accuracy against BOPs (95 % intervals)")
        axis.set_xlabel("MBOPs")
        axis.set_xscale("log")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    handles, labels = axes[1].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    axes[1].legend(unique.values(), unique.keys(), fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(
    path: Path,
    *,
    rows: Sequence[dict[str, Any]],
    cells: Sequence[dict[str, Any]],
    budgets: Sequence[Budget],
    limits: dict[str, float],
    spearman: dict[str, Interval],
    prepared: Sequence[dict[str, Any]],
    result_line: str,
    settings: dict[str, Any],
) -> None:
    """The generated part of the report, with the hand-written part kept."""
    kept = ""
    if path.is_file():
        text = path.read_text()
        if HAND_WRITTEN in text:
            kept = text.split(HAND_WRITTEN, 1)[1]
    image = path.with_suffix(".png")
    plot(cells, budgets, limits, image)
    seeds = sorted({r["seed"] for r in rows})
    fp32 = [100 * p["fp32"]["accuracy"] for p in prepared]
    lines = [
        "# Fidelity benchmark: where mixed precision wins",
        "",
        f"Written by `benchmarks/bench_fidelity.py` (protocol v{PROTOCOL_VERSION}, stated in its "
        f"docstring) on {datetime.date.today().isoformat()}: seeds {seeds}, "
        + ", ".join(f"{k} {v}" for k, v in settings.items())
        + ". Accuracy is on the held-out digits test split (360 images: one image is 0.28 points); "
        "intervals are 95 % Student-t over seeds; `cost` is the budget's axis (BOPs or weight "
        "bytes with scales) as a share of the budget.",
        "",
        f"FP32 accuracy: {', '.join(f'{a:.2f}' for a in fp32)} (per seed).",
        "",
        f"![accuracy against BOPs]({image.name})",
        "",
        "## Accuracy, cost and budget per method",
        "",
    ]
    for budget in budgets:
        if budget.name not in limits:
            continue
        lines += [
            f"### {budget.name}: {budget.label} ({limits[budget.name]:.4g} {budget.axis})",
            "",
            "| method | regime | accuracy % | cost / budget | budget met | seeds |",
            "|---|---|---|---|---|---|",
        ]
        for cell in (c for c in cells if c["budget"] == budget.name):
            lines.append(
                f"| {cell['method']} | {cell['regime']} | {_iv(cell['accuracy'])} | "
                f"{cell['cost'] / cell['limit']:.3f} | {'yes' if cell['meets_budget'] else 'no'} | "
                f"{cell['n']} |"
            )
        lines += ["", "Paired differences (accuracy points, per seed, then the interval):", ""]
        lines += ["| comparison | PTQ | QAT |", "|---|---|---|"]
        for method, other in COMPARISONS:
            ptq = paired(rows, budget.name, "ptq", method, other)
            qat = paired(rows, budget.name, "qat", method, other)
            if ptq is None and qat is None:
                continue
            lines.append(f"| {method} - {other} | {_diff(ptq)} | {_diff(qat)} |")
        lines.append("")
    lines += [
        "## Is the sensitivity right?",
        "",
        "Each layer alone quantized (weights only, per-channel, calibration), the test-loss "
        "increase against the layer's Omega at that format; Spearman rank correlation over the "
        f"{len(prepared[0]['layers'])} layers, per seed, then the interval:",
        "",
        "| format | Spearman | per seed |",
        "|---|---|---|",
    ]
    for fmt, value in spearman.items():
        per_seed = ", ".join(f"{p['layer_check'][fmt]['spearman']:.2f}" for p in prepared)
        lines.append(f"| {fmt} | {_iv(value)} | {per_seed} |")
    first = prepared[0]
    lines += [
        "",
        f"Seed {first['seed']}'s layers:",
        "",
        "| layer | "
        + " | ".join(f"Omega {f} | loss increase {f}" for f in first["layer_check"])
        + " |",
        "|---|" + "---|---|" * len(first["layer_check"]),
    ]
    for index, layer in enumerate(first["layers"]):
        cells_text = " | ".join(
            f"{first['layer_check'][f]['rows'][index]['omega']:.3g} | "
            f"{first['layer_check'][f]['rows'][index]['loss_increase']:.3g}"
            for f in first["layer_check"]
        )
        lines.append(f"| {layer['name']} | {cells_text} |")
    lines += ["", "## Protocol changes after the first results", ""]
    lines += [f"- {change}" for change in PROTOCOL_CHANGES] or ["- none"]
    lines += ["", "## RESULT", "", "```", result_line, "```", "", HAND_WRITTEN]
    path.write_text("\n".join(lines) + (kept if kept else "\n"))
