"""The LP (convex-hull) bound of the multiple-choice knapsack, as Lagrange multipliers.

For multipliers ``lam >= 0`` on the budget rows,

    L(lam) = sum_g min_k (obj[g, k] + lam . rows[:, g, k]) - lam . limits

is a lower bound on every feasible configuration's objective (weak duality),
whatever ``lam`` is: the engines' exactness never depends on how well ``lam``
was found, only their speed does. Its maximum equals the LP relaxation's
optimum, which for a multiple-choice knapsack is the bound of each group's
convex hull; the LP optimum has at most one fractional group per budget row,
which is why the bound is tight and the reduced costs
``obj + lam . rows - min`` single out the few options worth branching on.

How ``lam`` is found:

1. ``smoothed_dual``: Newton's method on the entropy-smoothed dual (softmin
   with temperature ``tau``, lowered in stages), cheap vectorised numpy; it
   lands near the optimum.
2. ``lp_dual``: column generation to the exact LP optimum. The master LP holds
   only the options near the current minimum (a few per group near a tie;
   groups with one column are constants), is solved by GLOP, and its duals
   price all options; columns with a negative reduced cost enter, until none
   does. The master is tiny, so each round costs well under a millisecond.

Rows and objective are normalised (divided by their typical per-group range)
before either step so both work at unit scale.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from solver_svc.presolve import Instance

if TYPE_CHECKING:
    from ortools.linear_solver.linear_solver_pb2 import MPModelProto

__all__ = ["DualResult", "lagrangian", "lp_dual", "single_row_lp", "smoothed_dual"]

log = logging.getLogger(__name__)

_BIG = 1e6  # cost of a unit of budget violation in the normalised master LP


@dataclass(frozen=True)
class DualResult:
    """Multipliers (original units), their bound ``L(lam)`` and the master LP's
    fractional solution (``fractional[g] = [(option, weight), ...]`` for the
    groups it left fractional)."""

    lam: np.ndarray
    bound: float
    lp_value: float
    fractional: dict[int, list[tuple[int, float]]]
    rounds: int


def lagrangian(inst: Instance, lam: np.ndarray) -> tuple[float, np.ndarray]:
    """``(L(lam), v)`` with ``v[g, k] = obj + lam . rows`` (see module doc)."""
    v = inst.obj + np.tensordot(lam, inst.rows, axes=1) if len(lam) else inst.obj.copy()
    bound = (
        float(v.min(axis=1).sum() - float(lam @ inst.limits))
        if len(lam)
        else float(v.min(axis=1).sum())
    )
    return bound, v


def _scales(inst: Instance) -> tuple[float, np.ndarray]:
    valid = inst.valid
    obj = np.where(valid, inst.obj, 0.0)
    big = np.where(valid, obj, -np.inf).max(axis=1)
    small = np.where(valid, obj, np.inf).min(axis=1)
    so = float(np.mean(big - small))
    if not np.isfinite(so) or so <= 0:
        so = float(np.mean(np.abs(obj))) or 1.0
    sa = np.ones(inst.rows.shape[0])
    for i in range(inst.rows.shape[0]):
        r = inst.rows[i]
        rng = np.where(valid, r, -np.inf).max(axis=1) - np.where(valid, r, np.inf).min(axis=1)
        s = float(np.mean(rng))
        if not np.isfinite(s) or s <= 0:
            s = float(np.mean(np.abs(r))) or 1.0
        sa[i] = s
    return so, sa


def smoothed_dual(
    inst: Instance,
    lam0: np.ndarray | None = None,
    taus: tuple[float, ...] = (0.1, 0.01, 1e-3),
    iters: int = 2,
) -> np.ndarray:
    """Approximate dual maximiser by Newton steps on the softmin-smoothed dual.

    Returns ``lam`` in original units (the best of the iterates by the exact
    ``L``). Cheap and approximate on purpose: ``lp_dual`` finishes the job.
    """
    m = inst.rows.shape[0]
    if m == 0:
        return np.zeros(0)
    so, sa = _scales(inst)
    on = np.where(inst.valid, inst.obj / so, np.inf)
    an = inst.rows / sa[:, None, None]
    bn = inst.limits / sa
    lam = np.zeros(m) if lam0 is None else np.maximum(np.asarray(lam0) * sa / so, 0.0)

    def exact(lam_n: np.ndarray) -> float:
        v = on + np.tensordot(lam_n, an, axes=1)
        return float(v.min(axis=1).sum() - lam_n @ bn)

    def smooth(lam_n: np.ndarray, tau: float) -> tuple[float, np.ndarray]:
        v = on + np.tensordot(lam_n, an, axes=1)
        vm = v.min(axis=1, keepdims=True)
        e = np.exp(-(v - vm) / tau)
        z = e.sum(axis=1, keepdims=True)
        f = float((vm[:, 0] - tau * np.log(z[:, 0])).sum() - lam_n @ bn)
        return f, e / z

    best_lam, best_val = lam.copy(), exact(lam)
    for tau in taus:
        for _ in range(iters):
            f, p = smooth(lam, tau)
            ea = np.einsum("gk,mgk->mg", p, an)
            grad = ea.sum(axis=1) - bn
            dev = an - ea[:, :, None]
            hess = -np.einsum("gk,mgk,ngk->mn", p, dev, dev) / tau
            free = ~((lam <= 0) & (grad < 0))
            step = np.zeros(m)
            if free.any():
                h = hess[np.ix_(free, free)] - 1e-12 * np.eye(int(free.sum()))
                try:
                    step[free] = -np.linalg.solve(h, grad[free])
                except np.linalg.LinAlgError:
                    step[free] = grad[free]
            t = 1.0
            new = np.maximum(lam + step, 0.0)
            for _ in range(12):
                new = np.maximum(lam + t * step, 0.0)
                if smooth(new, tau)[0] >= f - 1e-12 * abs(f):
                    break
                t *= 0.5
            lam = new
            val = exact(lam)
            if val > best_val:
                best_lam, best_val = lam.copy(), val
    return best_lam * so / sa


def single_row_lp(inst: Instance, row: int) -> tuple[DualResult, bool] | None:
    """The LP relaxation with only budget row ``row``, solved exactly.

    With one row the LP is the greedy walk along each group's convex hull:
    start every group at its cheapest option (least usage among ties), then
    take the hull segments in increasing price (objective added per unit of
    usage freed) until the row fits; the segment that crosses the limit is
    the (single) fractional group and its price is the multiplier.

    Returns ``(dual, covers_all)`` where ``covers_all`` says the LP solution
    meets every other row too, which makes it the optimum of the full LP
    (it relaxes the full LP and is feasible for it): no LP solver is needed
    then. ``None`` when the row alone cannot be met.
    """
    from solver_svc.core_search import hull_chains

    m = inst.rows.shape[0]
    num_groups = inst.num_groups
    groups = np.arange(num_groups)
    valid = inst.valid
    a = np.where(valid, inst.rows[row], np.inf)
    obj = inst.obj
    best = obj.min(axis=1)
    # The cheapest option of each group, least usage among ties.
    start = np.where(obj <= best[:, None], a, np.inf).argmin(axis=1)
    a0 = inst.rows[row, groups, start]
    need = float(a0.sum() - inst.limits[row])
    lam = np.zeros(m)
    choice = start.copy()
    fractional: dict[int, list[tuple[int, float]]] = {}
    if need > 0:
        d = a0[:, None] - np.where(valid, inst.rows[row], 0.0)
        e = np.where(valid, obj - best[:, None], 0.0)
        seg_g, seg_w, seg_s, seg_end = hull_chains(d, e, valid)
        order = np.argsort(seg_s, kind="stable")
        cum = np.cumsum(seg_w[order])
        j = int(np.searchsorted(cum, need, side="left"))
        if j >= len(cum):
            return None
        full = order[:j]
        # Segments of one group come in increasing slope: the last applied wins.
        choice[seg_g[full]] = seg_end[full]
        g = int(seg_g[order[j]])
        t = (need - (float(cum[j - 1]) if j else 0.0)) / float(seg_w[order[j]])
        t = min(max(t, 0.0), 1.0)
        lam[row] = float(seg_s[order[j]])
        k_from, k_to = int(choice[g]), int(seg_end[order[j]])
        fractional[g] = [(k_from, 1.0 - t), (k_to, t)]
    usage = inst.rows[:, groups, choice].sum(axis=1)
    value = float(obj[groups, choice].sum())
    for g, parts in fractional.items():
        (k_from, _), (k_to, t) = parts
        usage += t * (inst.rows[:, g, k_to] - inst.rows[:, g, k_from])
        value += t * float(obj[g, k_to] - obj[g, k_from])
    others = np.arange(m) != row
    scale = np.abs(np.where(valid[None], inst.rows, 0.0)).max(axis=2).sum(axis=1)
    covers = bool((usage[others] <= inst.limits[others] - 1e-12 * scale[others]).all())
    bound, _ = lagrangian(inst, lam)
    return DualResult(lam, bound, value, fractional, 0), covers


def lp_dual(
    inst: Instance, lam0: np.ndarray | None = None, max_rounds: int = 30, width: float = 1e-3
) -> DualResult:
    """Exact LP multipliers by column generation from ``lam0`` (see module doc).

    First each row alone is solved exactly (``single_row_lp``): when one row's
    LP solution meets the others it is the LP optimum and no LP solver runs
    (the usual case: one budget binds in the LP). Otherwise ``lam0`` (default:
    ``smoothed_dual``'s answer) starts the column generation. If the
    rounds run out the best multipliers so far are returned; the bound stays
    valid either way.
    """
    m = inst.rows.shape[0]
    if m == 0:
        bound, _ = lagrangian(inst, np.zeros(0))
        return DualResult(np.zeros(0), bound, bound, {}, 0)
    best_single: DualResult | None = None
    rows = list(range(m))
    if lam0 is not None and len(lam0) == m:
        warm = np.asarray(lam0, dtype=np.float64)
        if int((warm > 0).sum()) >= 2:
            # A warm start (the neighbouring frontier point) with two binding
            # rows: no single row will cover, go straight to the master.
            rows = []
        else:  # its binding row first: it usually covers
            rows.sort(key=lambda r: -float(warm[r]))
    for row in rows:
        single = single_row_lp(inst, row)
        if single is None:
            continue
        dual, covers = single
        if covers:
            return dual
        if best_single is None or dual.bound > best_single.bound:
            best_single = dual
    from ortools.linear_solver import pywraplp

    so, sa = _scales(inst)
    on = np.where(inst.valid, inst.obj / so, np.inf)
    an = inst.rows / sa[:, None, None]
    bn = inst.limits / sa
    if lam0 is None:
        lam0 = smoothed_dual(inst)
    lam_n = np.maximum(np.asarray(lam0, dtype=np.float64) * sa / so, 0.0)
    # Price of a unit of violation in the master: high enough not to bind at
    # the optimum when lam0 is near it, low enough that an infeasible first
    # master does not throw the multipliers (and every column) far away.
    big = float(min(_BIG, 4.0 * lam_n.max(initial=0.0) + 1.0))
    valid = inst.valid
    v = on + np.tensordot(lam_n, an, axes=1)
    vmin = v.min(axis=1, keepdims=True)
    spread = np.where(valid, v, -np.inf).max(axis=1, keepdims=True) - vmin
    columns = valid & ((v - vmin) <= width * spread)  # near-ties at lam0, per group
    # The runner-up too: without a trade-off in every group the first
    # master's duals are 0 or the violation price, and every column enters.
    second = np.argsort(np.where(valid, v, np.inf), axis=1)[:, 1:2]
    columns[np.arange(inst.num_groups)[:, None], second] |= np.take_along_axis(
        valid, second, axis=1
    )
    best_lam = lam_n.copy()
    best_val = float(vmin.sum() - lam_n @ bn)
    fractional: dict[int, list[tuple[int, float]]] = {}
    lp_value = -np.inf
    rounds = 0
    num_groups = inst.num_groups
    # One master, grown column by column: GLOP re-solves from its last basis.
    solver = pywraplp.Solver.CreateSolver("GLOP")
    initial = np.nonzero(columns)
    error = solver.LoadModelFromProto(_master_proto(on, an, bn, big, *initial))
    if error:  # the proto is built above: a failure here is a bug, not bad input
        raise RuntimeError(f"GLOP refused lp_dual's master: {error}")
    constraints = solver.constraints()
    coupling, convexity = constraints[:m], constraints[m:]
    objective = solver.Objective()
    variables: list[list[tuple[int, pywraplp.Variable]]] = [[] for _ in range(num_groups)]
    for (g, k), var in zip(
        zip(*(x.tolist() for x in initial), strict=True), solver.variables()[m:], strict=True
    ):
        variables[g].append((k, var))

    def add_column(g: int, k: int) -> None:
        var = solver.NumVar(0.0, 1.0, "")
        variables[g].append((k, var))
        convexity[g].SetCoefficient(var, 1.0)
        objective.SetCoefficient(var, float(on[g, k]))
        for i in range(m):
            coupling[i].SetCoefficient(var, float(an[i, g, k]))

    for rounds in range(1, max_rounds + 1):
        if solver.Solve() != pywraplp.Solver.OPTIMAL:
            break
        lam_n = np.maximum(np.array([-c.dual_value() for c in coupling]), 0.0)
        lp_value = objective.Value()
        v = on + np.tensordot(lam_n, an, axes=1)
        val = float(v.min(axis=1).sum() - lam_n @ bn)
        if val > best_val:
            best_lam, best_val = lam_n.copy(), val
        fractional = {}
        for g in range(num_groups):
            if len(variables[g]) > 1:
                parts = [(k, w) for k, var in variables[g] if (w := var.solution_value()) > 1e-9]
                if len(parts) > 1:
                    fractional[g] = parts
        # Pricing: the most negative reduced-cost column of each group enters.
        mu = np.array([c.dual_value() for c in convexity])
        reduced = np.where(valid & ~columns, v - mu[:, None], np.inf)
        best_k = reduced.argmin(axis=1)
        enter = np.flatnonzero(reduced[np.arange(num_groups), best_k] < -1e-9)
        log.debug(
            "lp_dual round %d: %d columns, %d entering", rounds, int(columns.sum()), len(enter)
        )
        if len(enter) == 0:
            break
        for g in enter.tolist():
            columns[g, best_k[g]] = True
            add_column(g, int(best_k[g]))
    return DualResult(best_lam * so / sa, best_val * so, lp_value * so, fractional, rounds)


def _master_proto(
    on: np.ndarray,
    an: np.ndarray,
    bn: np.ndarray,
    big: float,
    groups: np.ndarray,
    options: np.ndarray,
) -> MPModelProto:
    """``lp_dual``'s first master as one model proto: variables ``0..m-1``
    the budget violations (priced at ``big``), then the columns ``(groups[j],
    options[j])`` in order; constraints ``0..m-1`` the coupling rows, then
    one convexity row per group. Why a proto: building it one coefficient at
    a time through the solver's API took 14 ms of a 24 ms master on a
    500-group problem, the proto (lists extended whole) 2.3 ms."""
    from ortools.linear_solver import linear_solver_pb2

    m = an.shape[0]
    inf = float("inf")
    proto = linear_solver_pb2.MPModelProto()
    n = len(groups)
    upper = [inf] * m + [1.0] * n
    cost = [big] * m + on[groups, options].tolist()
    proto.variable.extend(
        linear_solver_pb2.MPVariableProto(lower_bound=0.0, upper_bound=u, objective_coefficient=c)
        for u, c in zip(upper, cost, strict=True)
    )
    columns = list(range(m, m + n))
    for i in range(m):
        row = proto.constraint.add(lower_bound=-inf, upper_bound=float(bn[i]))
        row.var_index.extend([i, *columns])
        row.coefficient.extend([-1.0, *an[i, groups, options].tolist()])
    # ``np.nonzero`` lists columns group by group: each group's are a slice.
    starts = np.searchsorted(groups, np.arange(an.shape[1] + 1)).tolist()
    for g in range(an.shape[1]):
        row = proto.constraint.add(lower_bound=1.0, upper_bound=1.0)
        row.var_index.extend(columns[starts[g] : starts[g + 1]])
        row.coefficient.extend([1.0] * (starts[g + 1] - starts[g]))
    return proto
