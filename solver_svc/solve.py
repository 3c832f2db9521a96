"""Solve a bit-allocation problem: engine choice, cross-check, infeasibility reasons.

``ProblemSolver`` holds one prepared problem and the pruned instances built
from it (one per objective and set of constrained axes), so that frontier
sweeps and what-if queries only change limits. ``solve`` is the one-shot
convenience.

Engines:

- ``"bb"`` (what ``"auto"`` picks): ``exact.solve_instance``, the specialised
  exact method; ``benchmarks/bench_solver.py`` measures it against PuLP+CBC and
  CP-SAT.
- ``"cpsat"``: OR-Tools CP-SAT on the whole (dominance-pruned) instance, the
  general engine.

``cross_check=True`` runs both and records whether their optima agree (within
the tolerance of ``tolerance.py``) in ``Solution.extra["cross_check"]``.

Budgets no configuration meets raise ``BudgetsInfeasible`` (a
``FailedPrecondition``) that names each unreachable budget and the least value
of it achievable under the other budgets.

Time: ``time_limit_s`` bounds the whole call, the cross-check and the
infeasibility explanation included: they share one deadline (``deadline=``
lets a caller that makes several solves, a frontier, hand its own down). A
solve the time ends before it found any configuration raises ``SolveTimedOut``;
one that found some but did not prove it best answers ``"feasible"`` with its
gap; an explanation the time ends says which budgets it could not check.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bitmesh.errors import FailedPrecondition, InvalidArgument
from solver_svc.cpsat import solve_cpsat
from solver_svc.exact import InstanceResult, solve_instance
from solver_svc.presolve import (
    ROWS,
    Instance,
    PreparedProblem,
    build_instance,
    limits_for,
    prepare,
)
from solver_svc.problem import Problem
from solver_svc.solution import Solution, Totals
from solver_svc.spec import Budgets, check_objective
from solver_svc.tolerance import OBJ_RTOL, feasibility_slack

__all__ = [
    "ENGINES",
    "BudgetViolation",
    "BudgetsInfeasible",
    "ProblemSolver",
    "SolveTimedOut",
    "solve",
]

log = logging.getLogger(__name__)

ENGINES = ("auto", "bb", "cpsat")
_ROW = {name: i for i, name in enumerate(ROWS)}


@dataclass(frozen=True)
class BudgetViolation:
    """One budget that cannot be met: its limit and the least value of its
    axis achievable under the other budgets (``None`` when the other budgets
    cannot be met together either)."""

    axis: str
    limit: float
    least_achievable: float | None
    #: False when the time limit ended before this budget could be checked
    #: (``least_achievable`` is then ``None`` and says nothing).
    determined: bool = True


class BudgetsInfeasible(FailedPrecondition):
    """No configuration meets the budgets; ``violations`` says which and why."""

    def __init__(self, message: str, violations: tuple[BudgetViolation, ...]) -> None:
        super().__init__(message)
        self.violations = violations


class SolveTimedOut(FailedPrecondition):
    """The time limit ended before any configuration meeting the budgets was
    found, and none was proven impossible."""


#: Pruned instances one problem keeps (one per objective and set of axes a
#: query used, least recently used out): a what-if slider uses one or two,
#: and up to 160 combinations exist, each up to BITMESH_SOLVER_MAX_DENSE_CELLS.
MAX_CACHED_INSTANCES = 8
#: The cells of all of one problem's cached instances together, as a
#: multiple of the per-instance cap: the registry counts stored options, so
#: this bounds what its instances add on top.
CACHED_CELLS_FACTOR = 2


class ProblemSolver:
    """Solves one problem under many budgets (see the module doc)."""

    def __init__(
        self, problem: Problem | PreparedProblem, *, max_dense_cells: int | None = None
    ) -> None:
        self.prepared = problem if isinstance(problem, PreparedProblem) else prepare(problem)
        #: Cap on one instance's dense cells (``build_instance``); None = no cap.
        self.max_dense_cells = max_dense_cells
        self._instances: OrderedDict[tuple[str, tuple[str, ...]], Instance] = OrderedDict()
        self._instances_lock = threading.Lock()
        # Per group: option key -> prepared option index (hints arrive as keys).
        self._key_index = [{key: k for k, key in enumerate(keys)} for keys in self.prepared.keys]

    @property
    def problem(self) -> Problem:
        return self.prepared.problem

    def instance(self, objective: str, budgets: Budgets) -> Instance:
        """The pruned instance for ``objective`` and ``budgets``' axes, cached
        by axes (limits change without rebuilding)."""
        check_objective(objective)
        axes = tuple(axis for axis, _ in budgets.items())
        key = (objective, axes)
        with self._instances_lock:
            cached = self._instances.get(key)
            if cached is not None:
                self._instances.move_to_end(key)
        if cached is None:
            cached = build_instance(
                self.prepared, objective, budgets, max_dense_cells=self.max_dense_cells
            )
            self._cache(key, cached)
            return cached
        return cached.with_limits(limits_for(self.prepared, budgets))

    def _cache(self, key: tuple[str, tuple[str, ...]], inst: Instance) -> None:
        """Keep ``inst``; drop the least recently used past the count or the
        cells bound (the newest always stays)."""
        cell_cap = (
            None if self.max_dense_cells is None else CACHED_CELLS_FACTOR * self.max_dense_cells
        )
        with self._instances_lock:
            self._instances[key] = inst
            self._instances.move_to_end(key)
            while len(self._instances) > 1 and (
                len(self._instances) > MAX_CACHED_INSTANCES
                or (cell_cap is not None and self.cached_cells() > cell_cap)
            ):
                self._instances.popitem(last=False)

    def cached_cells(self) -> int:
        """Dense cells (groups x pruned width) of the cached instances."""
        return sum(int(inst.obj.size) for inst in self._instances.values())

    def axis_slack(self, axis: str, budgets: Budgets) -> float:
        """The feasibility tolerance (``tolerance.feasibility_slack``) of
        ``axis``'s budget row under ``budgets``, in the axis's own units: how
        far over its limit a total may be and still count as meeting it."""
        inst = self.instance("omega", budgets)
        row = inst.row_axes.index(axis)
        slack = feasibility_slack(
            inst.limits[row : row + 1], np.where(inst.valid[None], inst.rows[row : row + 1], 0.0)
        )
        divisor = self.prepared.total_parameters if axis == "avg_weight_bits" else 1.0
        return float(slack[0]) / divisor

    # -- solving -------------------------------------------------------------

    def solve(
        self,
        budgets: Budgets | None = None,
        *,
        objective: str = "omega",
        engine: str = "auto",
        time_limit_s: float = 30.0,
        cross_check: bool = False,
        hint: Mapping[str, str] | None = None,
        warm_start: Solution | None = None,
        explain: bool = True,
        deadline: float | None = None,
    ) -> Solution:
        """Minimise ``objective`` under ``budgets``.

        ``hint`` (layer -> option key) or ``warm_start`` (an earlier solution of
        this problem, e.g. a neighbouring frontier point) seed the search; they
        never change the answer, only how fast it comes. The call ends by
        ``time_limit_s`` from now or by ``deadline`` (``time.perf_counter()``
        seconds), whichever is first, explanation included.
        """
        budgets = budgets or Budgets()
        if engine not in ENGINES:
            raise InvalidArgument(f"unknown engine {engine!r}; known: {list(ENGINES)}")
        if not (time_limit_s > 0 and math.isfinite(time_limit_s)):
            raise InvalidArgument(f"time_limit_s must be a positive number, got {time_limit_s!r}")
        start = time.perf_counter()
        end = start + time_limit_s if deadline is None else min(start + time_limit_s, deadline)
        allowed_s = end - start
        if allowed_s <= 0:
            raise SolveTimedOut(
                "the time limit ended before this solve could start; allow more time"
            )
        inst = self.instance(objective, budgets)
        hint_choice = None
        lam0 = None
        if warm_start is not None:
            hint = hint or warm_start.assignment
            lam_axes = warm_start.extra.get("lam_axes")
            if lam_axes == list(inst.row_axes):
                lam0 = np.asarray(warm_start.extra.get("lam"), dtype=np.float64)
        if hint is not None:
            hint_choice = self._choice_from_assignment(inst, hint)
        name = "cpsat" if engine == "cpsat" else "bb"
        result = self._run(name, inst, _left(end), hint_choice, lam0)
        extra: dict[str, Any] = {}
        if cross_check:
            other = self._run(
                "cpsat" if name == "bb" else "bb", inst, _left(end), hint_choice, None
            )
            extra["cross_check"] = _compare(inst, result, other)
            if not extra["cross_check"]["agree"]:
                log.warning("engines disagree: %s", extra["cross_check"])
        if result.choice is None:
            if result.status == "infeasible":
                if explain:
                    raise self._explain(budgets, end)
                raise BudgetsInfeasible("no configuration meets the budgets", ())
            raise SolveTimedOut(
                f"no configuration meeting the budgets was found within {allowed_s:.3g} s, "
                "and none was proven impossible; allow more time"
            )
        return self._solution(inst, result, time.perf_counter() - start, extra)

    def _run(
        self,
        engine: str,
        inst: Instance,
        time_limit_s: float,
        hint: np.ndarray | None,
        lam0: np.ndarray | None,
    ) -> InstanceResult:
        if engine == "bb":
            return solve_instance(inst, time_limit_s=time_limit_s, hint=hint, lam0=lam0)
        res = solve_cpsat(inst, hint=hint, time_limit_s=time_limit_s)
        if res.choice is None:
            return InstanceResult(None, math.inf, res.bound, res.status, np.zeros(0), "cpsat")
        value = float(inst.obj[np.arange(inst.num_groups), res.choice].sum())
        return InstanceResult(
            res.choice, value, min(res.bound, value), res.status, np.zeros(0), "cpsat"
        )

    # -- conversions ---------------------------------------------------------

    def _choice_from_assignment(
        self, inst: Instance, assignment: Mapping[str, str]
    ) -> np.ndarray | None:
        original = np.empty(inst.num_groups, dtype=np.int64)
        for g, members in enumerate(self.prepared.members):
            index = self._key_index[g].get(assignment.get(members[0], ""))
            if index is None:
                return None
            original[g] = index
        hit = inst.option_index == original[:, None]  # [G, K]
        if not hit.any(axis=1).all():  # a hinted option was pruned as dominated
            return None
        return hit.argmax(axis=1)

    def totals_of(self, original: np.ndarray) -> tuple[float, Totals, float]:
        """(total omega, totals, average weight bits) of a choice of prepared
        option indices per group, fixed layers included. The average bits
        count the scales unless the problem's budgets are weights-only."""
        columns = self.prepared.columns(original)
        sums = self.prepared.values[:, columns].sum(axis=1) + self.prepared.fixed
        totals = Totals(
            size_bytes=float(sums[_ROW["code_bytes"]]),
            bops=float(sums[_ROW["bops"]]),
            latency_ms=float(sums[_ROW["latency_ms"]]),
            scale_bytes=float(sums[_ROW["scale_bytes"]]),
            size_accounting=self.problem.size_accounting,
        )
        params = self.prepared.total_parameters
        avg_bits = float(sums[_ROW["wbits"]]) / params if params > 0 else 0.0
        return float(sums[_ROW["omega"]]), totals, avg_bits

    def _solution(
        self, inst: Instance, result: InstanceResult, seconds: float, extra: dict[str, Any]
    ) -> Solution:
        assert result.choice is not None
        groups = np.arange(inst.num_groups)
        original = inst.option_index[groups, result.choice]
        assignment: dict[str, str] = {}
        for g, members in enumerate(self.prepared.members):
            key = self.prepared.keys[g][int(original[g])]
            for name in members:
                assignment[name] = key
        omega, totals, avg_bits = self.totals_of(original)
        value = result.value + inst.obj_offset
        bound = result.bound + inst.obj_offset
        gap = 0.0 if result.status == "optimal" else _relative_gap(value, bound)
        extra = dict(extra)
        extra.update(
            lam=[float(x) for x in result.lam],
            lam_axes=list(inst.row_axes),
            nodes=result.nodes,
            core_groups=result.core_groups,
        )
        return Solution(
            status="optimal" if result.status == "optimal" else "feasible",
            gap=gap,
            assignment={layer.name: assignment[layer.name] for layer in self.problem.layers},
            total_omega=omega,
            totals=totals,
            avg_weight_bits=avg_bits,
            seconds=seconds,
            engine=result.engine,
            answered_from="solve",
            objective=inst.objective,
            objective_value=value,
            lower_bound=bound,
            extra=extra,
        )

    # -- infeasibility -------------------------------------------------------

    def least_achievable(
        self,
        axis: str,
        budgets: Budgets,
        time_limit_s: float = 30.0,
        *,
        deadline: float | None = None,
    ) -> float | None:
        """Least total of ``axis`` under ``budgets`` (``None`` if they cannot be
        met); ``SolveTimedOut`` when the time ended before any answer."""
        sol = self.least_solution(axis, budgets, time_limit_s, deadline=deadline)
        return None if sol is None else sol.axis_value(axis)

    def least_solution(
        self,
        axis: str,
        budgets: Budgets,
        time_limit_s: float = 30.0,
        *,
        deadline: float | None = None,
    ) -> Solution | None:
        """The solution of least ``axis`` under ``budgets`` (``None`` if they
        cannot be met). It may be only ``"feasible"`` when the time ended: its
        ``axis_value`` is then an upper bound on the least, not the least."""
        try:
            return self.solve(
                budgets, objective=axis, time_limit_s=time_limit_s, explain=False, deadline=deadline
            )
        except SolveTimedOut:
            raise
        except FailedPrecondition:
            return None

    def _explain(self, budgets: Budgets, deadline: float) -> BudgetsInfeasible:
        """Which budgets cannot be met, each checked within what is left of
        the call's own deadline (never a fresh full time limit per budget)."""
        violations: list[BudgetViolation] = []
        for axis, limit in budgets.items():
            others = budgets.with_limit(axis, None)
            try:
                least = self.least_solution(axis, others, deadline=deadline)
            except SolveTimedOut:
                violations.append(BudgetViolation(axis, limit, None, determined=False))
                continue
            if least is None:
                violations.append(BudgetViolation(axis, limit, None))
            elif least.status != "optimal":
                # Only an upper bound on the least: proves nothing unless the
                # budget is under the solve's proven lower bound.
                if least.lower_bound > limit:
                    violations.append(BudgetViolation(axis, limit, least.lower_bound))
                elif least.axis_value(axis) > limit:
                    violations.append(BudgetViolation(axis, limit, None, determined=False))
            elif least.axis_value(axis) > limit:
                violations.append(BudgetViolation(axis, limit, least.axis_value(axis)))
        parts = []
        for v in violations:
            if not v.determined:
                parts.append(f"{v.axis} <= {v.limit:.6g} (not checked: the time limit ended)")
            elif v.least_achievable is None:
                parts.append(f"{v.axis} <= {v.limit:.6g} (the other budgets cannot be met either)")
            else:
                parts.append(
                    f"{v.axis} <= {v.limit:.6g} cannot be met: the least achievable under the "
                    f"other budgets is {v.least_achievable:.6g}"
                )
        if not parts:  # pragma: no cover - only if numerics disagree between solves
            parts.append("the budgets conflict only in combination")
        return BudgetsInfeasible(
            "no configuration meets the budgets: " + "; ".join(parts), tuple(violations)
        )


def _left(end: float) -> float:
    """Seconds left until ``end`` (at least a token 10 ms, so an engine
    asked at the edge still returns its incumbent rather than nothing)."""
    return max(end - time.perf_counter(), 0.01)


def _relative_gap(value: float, bound: float) -> float:
    if not math.isfinite(bound):
        return math.inf
    return max(0.0, value - bound) / max(abs(value), 1e-12)


def _compare(inst: Instance, a: InstanceResult, b: InstanceResult) -> dict[str, Any]:
    scale = float(np.where(inst.valid, np.abs(inst.obj), 0.0).max(axis=1).sum()) or 1.0
    tol = max(1e-6 * scale, OBJ_RTOL * scale)
    if a.choice is None or b.choice is None:
        agree = (a.choice is None) == (b.choice is None)
    else:
        agree = abs(a.value - b.value) <= tol
    return {
        "engine": b.engine,
        "value": b.value + inst.obj_offset,
        "status": b.status,
        "agree": bool(agree),
    }


def solve(
    problem: Problem | PreparedProblem,
    budgets: Budgets | None = None,
    *,
    objective: str = "omega",
    engine: str = "auto",
    time_limit_s: float = 30.0,
    cross_check: bool = False,
    hint: Mapping[str, str] | None = None,
) -> Solution:
    """One-shot ``ProblemSolver(problem).solve(...)``."""
    return ProblemSolver(problem).solve(
        budgets,
        objective=objective,
        engine=engine,
        time_limit_s=time_limit_s,
        cross_check=cross_check,
        hint=hint,
    )
