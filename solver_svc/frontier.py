"""Pareto frontiers of total Omega against one cost axis, and what-if answers.

``frontier`` traces the frontier by the epsilon-constraint method: minimise
Omega with the axis bounded by each of ``points`` limits spread evenly between
the ends, every other budget held fixed. The ends are automatic unless given:
the least achievable value of the axis under the other budgets, and the axis
value of the unconstrained-on-this-axis optimum (past it nothing improves).
The sweep goes from the loose end to the tight one: the optimum at a limit
``L`` with cost ``c`` is also optimal at every limit in ``[c, L]`` (the optimum
can only get worse as the limit tightens, and it stays feasible), so limits in
that range cost no solve at all; the others are solved warm-started from the
previous point (its Lagrange multipliers, ``ProblemSolver.solve(warm_start=...)``).
Solved points that another point beats on both counts are dropped;
``exhaustive=True`` instead walks every Pareto point (each next limit just
below the last point's cost, past the feasibility tolerance), so the stored
frontier is complete; ``progress`` then receives the partial frontier as it
grows (already exact on ``[last cost, high]``).

What-if from a stored frontier (``what_if``). The stored points are optimal
*at the limits they were solved at* (``probes``), not between them, so a query
with limit ``q`` on the frontier's axis (other budgets equal) is answered from
the frontier only when that is provably optimal:

- ``opt(q)`` is non-increasing in ``q``, so the probe with the smallest limit
  ``>= q`` gives a lower bound ``LB = opt(that limit)``;
- any stored point whose cost is ``<= q`` is feasible at ``q``; the best of
  them is an upper bound ``UB``;
- if ``UB <= LB`` (within the tolerance) that point is optimal at ``q``.

Otherwise (a query between probes where the frontier steps, another axis, or
different other budgets) it is solved exactly, warm-started from the nearest
stored point. An exhaustive frontier answers every query on its axis.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np

from bitmesh.errors import FailedPrecondition, InvalidArgument
from solver_svc.solution import Solution, Totals
from solver_svc.solve import BudgetsInfeasible, BudgetViolation, ProblemSolver, SolveTimedOut
from solver_svc.spec import Budgets, check_axis
from solver_svc.tolerance import FEAS_RTOL, OBJ_RTOL

__all__ = ["FRONTIER_AXES", "MAX_POINTS", "Frontier", "frontier", "lookup", "what_if"]

#: Axes a frontier can be traced along (Omega is the other axis).
FRONTIER_AXES = ("size_bytes", "bops", "latency_ms", "avg_weight_bits")
#: Most points one frontier request may ask for (exhaustive walks stop here).
MAX_POINTS = 10_000


@dataclass(frozen=True)
class Frontier:
    """A traced frontier: Pareto points sorted by the axis, ascending.

    ``probes`` lists every solved limit with the index (into ``points``) of a
    point optimal at it; ``complete`` is True when ``points`` holds every
    Pareto point between ``low`` and ``high``. ``least_achievable`` is the
    least value of the axis under the constraints (``None`` if not computed)
    and ``free_omega`` the optimum with the axis unbounded: a lower bound on
    the optimum at every limit (both proven bounds, also when the time cut
    their solves short). ``probes`` holds only limits solved to optimality:
    a point the time limit cut short (``"feasible"``, with its gap) is kept
    as a feasible configuration but proves no bound.
    """

    axis: str
    constraints: Budgets
    points: tuple[Solution, ...]
    probes: tuple[tuple[float, int], ...]
    low: float
    high: float
    complete: bool
    seconds: float
    least_achievable: float | None = None
    free_omega: float = -math.inf
    #: True when the time limit ended the trace before every limit was solved.
    timed_out: bool = False

    @cached_property
    def _index(self) -> tuple[list[float], list[float], list[int]]:
        """Point costs (ascending), probe limits (ascending) and the point of
        each probe: the lookups of ``_from_frontier`` by bisection."""
        costs = [p.axis_value(self.axis) for p in self.points]
        probes = sorted(self.probes)
        return costs, [limit for limit, _ in probes], [index for _, index in probes]

    def to_json(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "constraints": self.constraints.to_json(),
            "points": [_solution_to_json(p) for p in self.points],
            "probes": [[limit, index] for limit, index in self.probes],
            "low": self.low,
            "high": self.high,
            "complete": self.complete,
            "seconds": self.seconds,
            "least_achievable": self.least_achievable,
            "free_omega": self.free_omega,
            "timed_out": self.timed_out,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Frontier:
        return cls(
            axis=data["axis"],
            constraints=Budgets.from_json(data["constraints"]),
            points=tuple(_solution_from_json(p) for p in data["points"]),
            probes=tuple((float(limit), int(index)) for limit, index in data["probes"]),
            low=float(data["low"]),
            high=float(data["high"]),
            complete=bool(data["complete"]),
            seconds=float(data["seconds"]),
            least_achievable=data.get("least_achievable"),
            free_omega=float(data.get("free_omega", -math.inf)),
            timed_out=bool(data.get("timed_out", False)),
        )


def _solution_to_json(sol: Solution) -> dict[str, Any]:
    out = sol.to_json()
    out["extra"] = {k: sol.extra[k] for k in ("lam", "lam_axes") if k in sol.extra}
    return out


def _solution_from_json(data: dict[str, Any]) -> Solution:
    return Solution(
        status=data["status"],
        gap=float(data["gap"]),
        assignment=dict(data["assignment"]),
        total_omega=float(data["total_omega"]),
        totals=Totals(**data["totals"]),
        avg_weight_bits=float(data["avg_weight_bits"]),
        seconds=float(data["seconds"]),
        engine=data["engine"],
        answered_from=data.get("answered_from", "solve"),
        objective=data.get("objective", "omega"),
        objective_value=float(data.get("objective_value", data["total_omega"])),
        lower_bound=float(data.get("lower_bound", data["total_omega"])),
        extra=dict(data.get("extra", {})),
    )


def _check_frontier_axis(axis: str, constraints: Budgets) -> None:
    check_axis(axis)
    if axis not in FRONTIER_AXES:
        raise InvalidArgument(f"a frontier axis must be one of {list(FRONTIER_AXES)}, got {axis!r}")
    if constraints.get(axis) is not None:
        raise InvalidArgument(
            f"the frontier's axis {axis!r} must not also be a constraint; give its ends instead"
        )
    if constraints.omega is not None:
        raise InvalidArgument("a frontier traces Omega; do not bound it in the constraints")


def frontier(
    solver: ProblemSolver,
    axis: str,
    constraints: Budgets | None = None,
    *,
    points: int = 20,
    low: float | None = None,
    high: float | None = None,
    exhaustive: bool = False,
    time_limit_s: float = 30.0,
    deadline: float | None = None,
    progress: Callable[[Frontier], None] | None = None,
    progress_every: int = 16,
    should_stop: Callable[[], bool] | None = None,
) -> Frontier:
    """Trace the frontier of Omega against ``axis`` (see the module doc).

    ``time_limit_s`` (or ``deadline``, ``time.perf_counter()`` seconds, if
    sooner) bounds the whole trace, its two end solves included. When it ends
    the trace, the points so far are returned with ``timed_out`` set; a point
    whose own solve it cut short is ``"feasible"`` with its gap, and proves
    nothing to what-if queries. ``should_stop`` is asked before every
    exhaustive step; when it says yes the walk ends there and the (incomplete)
    frontier so far is returned."""
    constraints = constraints or Budgets()
    _check_frontier_axis(axis, constraints)
    if not exhaustive and not 1 <= points <= MAX_POINTS:
        raise InvalidArgument(f"points must be between 1 and {MAX_POINTS}, got {points}")
    start = time.perf_counter()
    end = start + time_limit_s if deadline is None else min(start + time_limit_s, deadline)
    # The ends: the tightest limit any configuration meets, and the loosest
    # that still matters.
    least: float | None = None
    low_proven = True  # a given low end is the caller's; a computed one must be optimal
    if low is None:
        least_sol = solver.least_solution(axis, constraints, deadline=end)
        if least_sol is None:
            solver.solve(constraints, deadline=end)  # raises with the reason
            raise FailedPrecondition("the constraints cannot be met")  # pragma: no cover
        low = least_sol.axis_value(axis)
        # What what-if may call infeasible: below the least when proven, else
        # only below the solve's proven bound.
        least = low if least_sol.status == "optimal" else least_sol.lower_bound
        low_proven = least_sol.status == "optimal"
    loose = solver.solve(constraints, deadline=end)
    if high is None:
        high = loose.axis_value(axis)
    if not (math.isfinite(low) and math.isfinite(high)) or high < low:
        raise InvalidArgument(f"frontier ends must satisfy low <= high, got {low!r} and {high!r}")
    solved: list[tuple[float, Solution]] = []
    # The optimum at the last (looser) limit: optimal at every limit down to its cost.
    previous = loose
    timed_out = False

    def at(limit: float) -> Solution | None:
        """The point at ``limit``; None once the time is up."""
        nonlocal previous, timed_out
        if previous.axis_value(axis) <= limit:
            return previous  # optimal at a looser limit and feasible here
        if timed_out or end - time.perf_counter() <= 0:
            timed_out = True
            return None
        try:
            previous = solver.solve(
                constraints.with_limit(axis, limit),
                warm_start=previous,
                explain=False,
                deadline=end,
            )
        except SolveTimedOut:
            timed_out = True
            return None
        if previous.status != "optimal":
            timed_out = True  # cut short by the deadline: the last point worth solving
        return previous

    def partial(complete: bool) -> Frontier:
        fr = _assemble(axis, constraints, solved, low, high, complete, time.perf_counter() - start)
        free = loose.total_omega if loose.status == "optimal" else loose.lower_bound
        return replace(fr, least_achievable=least, free_omega=free, timed_out=timed_out)

    complete = False
    if exhaustive:
        # Past the feasibility tolerance, so the last point no longer fits.
        step = 4.0 * solver.axis_slack(axis, constraints.with_limit(axis, high))
        limit = high
        while len(solved) < MAX_POINTS:
            if should_stop is not None and should_stop():
                break
            try:
                sol = at(limit)
            except BudgetsInfeasible:
                complete = True
                break
            if sol is None:
                break
            solved.append((limit, sol))
            cost = sol.axis_value(axis)
            if cost <= low:
                complete = True
                break
            if timed_out:
                break
            limit = cost - step
            if progress is not None and len(solved) % progress_every == 0:
                progress(partial(False))
        # Complete only when every step was proven: a point the time cut short
        # may hide better ones between it and the next.
        complete = complete and not timed_out and low_proven and loose.status == "optimal"
    else:
        limits = np.linspace(low, high, points) if points > 1 else np.array([high])
        for limit in limits[::-1]:
            try:
                sol = at(float(limit))
            except BudgetsInfeasible:
                continue  # below the least achievable by rounding only
            if sol is None:
                break
            solved.append((float(limit), sol))
    return partial(complete)


def _assemble(
    axis: str,
    constraints: Budgets,
    solved: list[tuple[float, Solution]],
    low: float,
    high: float,
    complete: bool,
    seconds: float,
) -> Frontier:
    """Pareto-filter the solved points and map every probe to a kept point."""
    by_cost = sorted((sol for _, sol in solved), key=lambda s: (s.axis_value(axis), s.total_omega))
    kept: list[Solution] = []
    for sol in by_cost:
        if kept and sol.total_omega >= kept[-1].total_omega - _omega_tol(sol, kept[-1]):
            continue  # costs more, not better
        kept.append(sol)
    costs = [p.axis_value(axis) for p in kept]
    probes = []
    for limit, sol in solved:
        if sol.status != "optimal":
            continue  # cut short by the time limit: it proves nothing at its limit
        # The kept point optimal at this limit: the last one (least Omega)
        # whose cost is within the solved point's cost.
        probes.append((limit, bisect_right(costs, sol.axis_value(axis)) - 1))
    probes.sort()
    points = tuple(replace(p, answered_from="solve") for p in kept)
    return Frontier(axis, constraints, points, tuple(probes), low, high, complete, seconds)


def _omega_tol(a: Solution, b: Solution) -> float:
    return OBJ_RTOL * max(abs(a.total_omega), abs(b.total_omega), 1e-300) * 10


def lookup(
    budgets: Budgets, frontiers: Sequence[Frontier]
) -> tuple[Solution | None, Solution | None]:
    """``(stored point provably optimal under budgets or None, nearest stored
    point for a warm start)``; raises ``BudgetsInfeasible`` when a frontier
    shows the budgets cannot be met. Pure memory: no solve."""
    nearest: Solution | None = None
    for fr in frontiers:
        limit = budgets.get(fr.axis)
        if limit is None or budgets.with_limit(fr.axis, None) != fr.constraints:
            continue
        least = fr.least_achievable
        if least is not None and limit < least - 4 * FEAS_RTOL * max(abs(least), 1e-300):
            raise BudgetsInfeasible(
                f"no configuration meets the budgets: {fr.axis} <= {limit:.6g} cannot be met: "
                f"the least achievable under the other budgets is {least:.6g}",
                (BudgetViolation(fr.axis, limit, least),),
            )
        answer, near = _from_frontier(fr, limit)
        if answer is not None:
            return answer, answer
        nearest = nearest or near
    return None, nearest


def what_if(
    solver: ProblemSolver,
    budgets: Budgets,
    frontiers: Sequence[Frontier] = (),
    *,
    time_limit_s: float = 30.0,
) -> Solution:
    """Answer ``budgets`` from a stored frontier when that is provably optimal,
    else by an exact solve warm-started from the nearest stored point."""
    start = time.perf_counter()
    answer, nearest = lookup(budgets, frontiers)
    if answer is not None:
        return replace(
            answer,
            answered_from="frontier",
            status="optimal",
            gap=0.0,
            seconds=time.perf_counter() - start,
        )
    sol = solver.solve(budgets, time_limit_s=time_limit_s, warm_start=nearest)
    return replace(sol, seconds=time.perf_counter() - start)


def _from_frontier(fr: Frontier, limit: float) -> tuple[Solution | None, Solution | None]:
    """(provably optimal stored point at ``limit`` or None, nearest feasible point)."""
    costs, probe_limits, probe_points = fr._index
    j = bisect_right(costs, limit) - 1
    if j < 0:
        return None, fr.points[0] if fr.points else None
    upper = fr.points[j]  # the least Omega among the points within the limit
    if fr.complete and limit <= fr.high:
        return upper, upper
    lower = fr.free_omega  # the optimum can never beat the axis-free optimum
    p = bisect_left(probe_limits, limit)
    if p < len(probe_limits):
        lower = max(lower, fr.points[probe_points[p]].total_omega)
    if upper.total_omega <= lower + OBJ_RTOL * max(abs(lower), abs(upper.total_omega), 1e-300) * 10:
        return upper, upper
    return None, upper
