"""OR-Tools CP-SAT model of the knapsack: the general engine and the cross-check.

CP-SAT needs integers, so floats are scaled here and nowhere else:

- Each budget row ``i`` is multiplied by ``s_i = 2^30 / sum_g max_k |rows[i,g,k]|``
  and rounded to the nearest integer; its limit becomes
  ``floor(limit * s_i) + ceil(groups / 2)``, which admits every configuration
  that meets the float limit (rounding moves a sum by at most ``groups / 2``
  units). It may admit one over the float limit by up to ``groups * 2^-31`` of
  the row's scale; the answer is checked in floats and, if it is over by more
  than ``tolerance.FEAS_RTOL``, solved again with coefficients rounded up and
  the limit rounded down (which admits nothing infeasible).
- The objective, shifted so each group's best option costs 0, is multiplied by
  ``2^30 / sum_g range_g`` and rounded: "optimal" is then exact to about
  ``groups * 1e-9`` of the total range. (METHODS.md section 9 measured 1e8
  exact and 1e6 0.28 % short on HAWQ-sized data.)
- Why not finer: with coefficients of 2^40 and more CP-SAT 9.15 returned
  "optimal" answers that a brute-force enumeration beats (its LP works in
  doubles); ``tests/unit/solver_svc/test_cpsat.py`` keeps a case.

The answer is re-priced in floats by the caller. Parameters per METHODS.md
section 9: one worker with ``linearization_level = 2`` (the default two
workers on two cores hit 60 s limits), a time limit always set, the
incumbent passed as a hint. Constraints are never read back through
``Constraint.Proto()`` (OR-Tools 9.15 crashes after later additions).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from solver_svc.presolve import Instance

__all__ = ["SCALE_BITS", "CpSatResult", "import_ortools", "solve_cpsat"]

#: Scaled sums stay below 2^30: exact enough, and inside what CP-SAT handles reliably.
SCALE_BITS = 30


@dataclass(frozen=True)
class CpSatResult:
    choice: np.ndarray | None
    status: str  # "optimal" | "feasible" | "infeasible" | "unknown"
    bound: float  # proven lower bound on sum obj (float units)


def import_ortools() -> None:
    """Import the OR-Tools modules the engines use lazily (CP-SAT, the LP of
    ``dual.py``), so a service pays for them before it serves.

    Why: ``ortools.sat.python.cp_model`` imports pandas; the first exact
    solve that fell back to CP-SAT paid about 3 s of imports (measured on the
    shared 2-core machine) inside its own time limit, and a Frontier asked
    for 2 s took 6."""
    from ortools.linear_solver import linear_solver_pb2, pywraplp  # noqa: F401
    from ortools.sat.python import cp_model  # noqa: F401


def _row_scale(values: np.ndarray) -> float:
    total = float(np.abs(values).max(axis=1).sum()) if values.size else 0.0
    return (2.0**SCALE_BITS) / total if total > 0 else 1.0


def solve_cpsat(
    inst: Instance,
    allowed: np.ndarray | None = None,
    hint: np.ndarray | None = None,
    time_limit_s: float = 10.0,
) -> CpSatResult:
    """Minimise over the options ``allowed`` (``[G, K]`` mask, default all valid)."""
    from solver_svc.tolerance import feasibility_slack

    deadline = time.perf_counter() + time_limit_s
    result = _solve(inst, allowed, hint, time_limit_s, conservative=False)
    if result.choice is None or inst.rows.shape[0] == 0:
        return result
    groups = np.arange(inst.num_groups)
    totals = inst.rows[:, groups, result.choice].sum(axis=1)
    slack = feasibility_slack(inst.limits, np.where(inst.valid[None], inst.rows, 0.0))
    if (totals <= inst.limits + slack).all():
        return result
    remaining = max(deadline - time.perf_counter(), 0.05)
    return _solve(inst, allowed, hint, remaining, conservative=True)


def _solve(
    inst: Instance,
    allowed: np.ndarray | None,
    hint: np.ndarray | None,
    time_limit_s: float,
    *,
    conservative: bool,
) -> CpSatResult:
    from ortools.sat.python import cp_model

    allowed = inst.valid if allowed is None else (allowed & inst.valid)
    num_groups = inst.num_groups
    if not allowed.any(axis=1).all():
        return CpSatResult(None, "infeasible", math.inf)
    obj = np.where(allowed, inst.obj, np.inf)
    base = obj.min(axis=1)
    shifted = np.where(allowed, obj - base[:, None], 0.0)
    obj_scale = _row_scale(shifted)
    model = cp_model.CpModel()
    cells = [np.flatnonzero(allowed[g]) for g in range(num_groups)]
    lits: list[list[cp_model.IntVar]] = []
    for g in range(num_groups):
        group_lits = [model.new_bool_var(f"x[{g},{k}]") for k in cells[g]]
        model.add_exactly_one(group_lits)
        lits.append(group_lits)
    flat_lits = [lit for group in lits for lit in group]
    flat_g = np.concatenate([np.full(len(c), g) for g, c in enumerate(cells)])
    flat_k = np.concatenate(cells)
    # One linear constraint per budget row.
    for i in range(inst.rows.shape[0]):
        row = np.where(allowed, inst.rows[i], 0.0)
        scale = _row_scale(row)
        if conservative:
            coefs = np.ceil(row[flat_g, flat_k] * scale).astype(np.int64)
            limit = math.floor(float(inst.limits[i]) * scale)
        else:
            coefs = np.rint(row[flat_g, flat_k] * scale).astype(np.int64)
            limit = math.floor(float(inst.limits[i]) * scale) + (num_groups + 1) // 2
        model.add(cp_model.LinearExpr.weighted_sum(flat_lits, coefs.tolist()) <= limit)
    obj_coefs = np.rint(shifted[flat_g, flat_k] * obj_scale).astype(np.int64)
    model.minimize(cp_model.LinearExpr.weighted_sum(flat_lits, obj_coefs.tolist()))
    if hint is not None:
        for g in range(num_groups):
            for lit, k in zip(lits[g], cells[g], strict=True):
                model.add_hint(lit, bool(k == hint[g]))
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.linearization_level = 2
    solver.parameters.max_time_in_seconds = max(float(time_limit_s), 0.01)
    status = solver.solve(model)
    offset = float(base.sum())
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        values = np.array([solver.value(lit) for lit in flat_lits], dtype=bool)
        choice = np.zeros(num_groups, dtype=np.int64)
        choice[flat_g[values]] = flat_k[values]
        bound = offset + solver.best_objective_bound / obj_scale
        name = "optimal" if status == cp_model.OPTIMAL else "feasible"
        return CpSatResult(choice, name, bound)
    if status == cp_model.INFEASIBLE:
        return CpSatResult(None, "infeasible", math.inf)
    return CpSatResult(None, "unknown", -math.inf)
