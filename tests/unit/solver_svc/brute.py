"""Brute-force oracle for the solver tests: enumerate every configuration.

Kept apart from the solver (it shares no code with it) so that agreement is
evidence. Feasibility uses the same tolerance rule as ``solver_svc.tolerance``.
"""

from __future__ import annotations

import numpy as np

from solver_svc.problem import Problem
from solver_svc.tolerance import FEAS_RTOL

AXES = ("size_bytes", "bops", "latency_ms", "avg_weight_bits", "omega")


def enumerate_all(problem: Problem) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(option index per layer for every configuration, totals per axis)."""
    layers = problem.layers
    pins = problem.pin_map()
    idx = np.zeros((1, 0), dtype=np.int64)
    for layer in layers:
        k = len(layer.options)
        idx = np.concatenate(
            [np.repeat(idx, k, axis=0), np.tile(np.arange(k), len(idx))[:, None]], axis=1
        )
        allowed = np.ones(len(idx), dtype=bool)
        if layer.name in pins:
            ok = [i for i, o in enumerate(layer.options) if o.key in pins[layer.name]]
            allowed &= np.isin(idx[:, -1], ok)
        idx = idx[allowed]
    names = [layer.name for layer in layers]
    for tie in problem.ties:
        first = names.index(tie[0])
        for other in tie[1:]:
            j = names.index(other)
            keys_first = np.array([o.key for o in layers[first].options])
            keys_j = np.array([o.key for o in layers[j].options])
            idx = idx[keys_first[idx[:, first]] == keys_j[idx[:, j]]]
    totals: dict[str, np.ndarray] = {}
    for axis in ("size_bytes", "bops", "latency_ms", "omega"):
        total = np.zeros(len(idx))
        for i, layer in enumerate(layers):
            values = np.array([getattr(o, axis) for o in layer.options])
            total += values[idx[:, i]]
        totals[axis] = total + (getattr(problem.fixed, axis) if axis != "omega" else 0.0)
    wbits = np.zeros(len(idx))
    for i, layer in enumerate(layers):
        values = np.array([o.weight_bits * layer.parameters for o in layer.options])
        wbits += values[idx[:, i]]
    params = sum(layer.parameters for layer in layers) + problem.fixed.parameters
    wbits += problem.fixed.parameters * problem.fixed.weight_bits
    totals["avg_weight_bits"] = wbits / params if params else np.zeros(len(idx))
    return idx, totals


def feasible_mask(
    totals: dict[str, np.ndarray], budgets: dict[str, float], scale: dict[str, float]
) -> np.ndarray:
    ok = np.ones(len(totals["omega"]), dtype=bool)
    for axis, limit in budgets.items():
        ok &= totals[axis] <= limit + FEAS_RTOL * max(abs(limit), scale[axis], 1e-300)
    return ok


def optimum(problem: Problem, budgets: dict[str, float], objective: str = "omega") -> float | None:
    """Least ``objective`` over feasible configurations (None if none)."""
    _, totals = enumerate_all(problem)
    scale = {a: float(np.abs(totals[a]).max()) if len(totals[a]) else 1.0 for a in AXES}
    ok = feasible_mask(totals, budgets, scale)
    if not ok.any():
        return None
    return float(totals[objective][ok].min())
