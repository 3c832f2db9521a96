"""From per-seed rows to the numbers the report and the RESULT line give:
per-method intervals over seeds and paired differences against LCPAQ."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fidelity.stats import Interval, interval

Row = dict[str, Any]


def _by(rows: Iterable[Row], budget: str, method: str, regime: str) -> dict[int, Row]:
    return {
        r["seed"]: r
        for r in rows
        if r["budget"] == budget and r["method"] == method and r["regime"] == regime
    }


def cells(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """One entry per (budget, method, regime): accuracy interval (points),
    mean cost and BOPs, whether every seed met the budget."""
    seen = list(dict.fromkeys((r["budget"], r["method"], r["regime"]) for r in rows))
    out = []
    for budget, method, regime in seen:
        runs = list(_by(rows, budget, method, regime).values())
        out.append(
            {
                "budget": budget,
                "method": method,
                "regime": regime,
                "accuracy": interval([100 * r["accuracy"] for r in runs]),
                "cost": sum(r["cost"] for r in runs) / len(runs),
                "bops": sum(r["bops"] for r in runs) / len(runs),
                "limit": runs[0]["limit"],
                "meets_budget": all(r["meets_budget"] for r in runs),
                "n": len(runs),
            }
        )
    return out


def paired(
    rows: Sequence[Row], budget: str, regime: str, method: str, other: str
) -> Interval | None:
    """Per-seed accuracy of ``method`` minus ``other`` (points), as an interval."""
    mine = _by(rows, budget, method, regime)
    theirs = _by(rows, budget, other, regime)
    seeds = sorted(set(mine) & set(theirs))
    if not seeds:
        return None
    return interval([100 * (mine[s]["accuracy"] - theirs[s]["accuracy"]) for s in seeds])


#: (RESULT key, method, baseline, regime) at the tightest budget.
RESULT_DIFFERENCES = (
    ("lcpaq_minus_uniform_ptq", "lcpaq", "uniform", "ptq"),
    ("lcpaq_minus_uniform_qat", "lcpaq", "uniform", "qat"),
    ("lcpaq_minus_random", "lcpaq", "random", "qat"),
    ("lcpaq_minus_shuffled", "lcpaq", "shuffled", "qat"),
    ("fliqs_minus_uniform", "fliqs", "uniform", "qat"),
    ("lcpaq_minus_random_ptq", "lcpaq", "random", "ptq"),
    ("lcpaq_minus_shuffled_ptq", "lcpaq", "shuffled", "ptq"),
    ("fliqs_minus_uniform_ptq", "fliqs", "uniform", "ptq"),
)
#: Extra RESULT keys (protocol v2): the budget between uniform points.
BETWEEN = "bops_w2_w3"
RESULT_DIFFERENCES_BETWEEN = (
    ("lcpaq_minus_uniform_ptq_w2w3", "lcpaq", "uniform", "ptq"),
    ("lcpaq_minus_uniform_qat_w2w3", "lcpaq", "uniform", "qat"),
    ("lcpaq_minus_random_w2w3", "lcpaq", "random", "qat"),
    ("fliqs_minus_uniform_w2w3", "fliqs", "uniform", "qat"),
    ("measured_minus_uniform_ptq_w2w3", "lcpaq_measured", "uniform", "ptq"),
    ("measured_minus_uniform_qat_w2w3", "lcpaq_measured", "uniform", "qat"),
)
#: Differences the report tabulates at every budget.
COMPARISONS = (
    ("lcpaq", "uniform"),
    ("lcpaq", "uniform_above"),
    ("lcpaq", "random"),
    ("lcpaq", "shuffled"),
    ("fliqs", "uniform"),
    ("lcpaq_act", "uniform"),
    ("lcpaq_act", "lcpaq"),
    ("lcpaq_pt", "uniform_pt"),
    ("lcpaq_long", "uniform_long"),
    ("lcpaq_measured", "uniform"),
    ("lcpaq_measured", "lcpaq"),
)


def spearman_by_format(prepared: Sequence[dict[str, Any]]) -> dict[str, Interval]:
    formats = prepared[0]["layer_check"].keys()
    return {fmt: interval([p["layer_check"][fmt]["spearman"] for p in prepared]) for fmt in formats}
