"""Integer surrogate bound for the core search (``exact.py`` step 5a).

Why: on the ResNet50-sized instances the core's LP bound is already exact at
every node (checked against HiGHS on the states of ``core_search.dp``), yet
the search still needed thousands of nodes and often CP-SAT: the gap left is
the *integrality* gap of large layers (0.2-2 % of the optimum), which no LP
bound sees. The knapsack relaxation that keeps integrality does see it: with
the LP multipliers ``lam`` the budget rows fold into one surrogate row
``w = lam . rows <= lam . residual``, a relaxation of the core (every
configuration that meets the rows meets their non-negative combination).
Its exact optimum, a single-row multiple-choice knapsack, was the true optimum
on 9 of 12 ResNet50-sized instances and within 0.2 % on the others.

``build_tables`` solves that single-row knapsack for every suffix of the core
at once, by dynamic programming from the last depth to the first: the states
of groups ``d..n-1`` are pairs (surrogate usage, objective), Pareto-filtered,
so ``lower(d, room)`` (the least objective of groups ``d..n-1`` whose usage
fits in ``room``) is one bisection. States that cannot lead to a configuration
better than the incumbent are dropped as they are made: their reduced cost
plus the LP cost of the prefix ``0..d-1`` (the single-row convex-hull curves of
``core_search``, on the surrogate row, including the price of capacity left
unused) already reaches the gap. The bound stays exact for anything better
than the incumbent the tables were built with (a dropped state is dominated
or provably useless, and the test is monotone along a dominated chain).

``search`` is a depth-first search over the core in its order, children in
increasing bound, that prunes with that bound and with every real row's
least possible usage of the rest. Measured (12 ResNet50-sized instances,
54 layers x 6 options x 3 budgets): tables 0.3-30 ms, search 1-616 nodes,
where the previous DFS + DP + CP-SAT took 5-640 ms.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from solver_svc.core_search import (
    Core,
    Curves,
    hull_chains,
    suffix_curves,
)

__all__ = ["SuffixTables", "build_tables", "search"]

#: Most states the tables may hold summed over depths before they are given up
#: (the search falls back to ``core_search``).
TABLE_STATE_LIMIT = 400_000
#: Cores deeper than this are not searched recursively (Python's recursion limit).
MAX_DEPTH = 800


@dataclass(frozen=True, eq=False)
class SuffixTables:
    """Per depth ``d`` the Pareto states of groups ``d..n-1`` on the surrogate
    row: ``usage[d]`` ascending, ``value[d]`` (objective) strictly descending."""

    weight: list[np.ndarray]  # surrogate usage of each option, per depth
    capacity: float  # lam . residual
    usage: list[list[float]]
    value: list[list[float]]
    eps: float  # lookups admit this much more usage (summation order)
    states: int

    def lower(self, depth: int, room: float) -> float:
        """Least objective of groups ``depth..n-1`` with surrogate usage ``<= room``."""
        j = bisect_right(self.usage[depth], room + self.eps) - 1
        return self.value[depth][j] if j >= 0 else math.inf

    @property
    def root(self) -> float:
        """The integer surrogate bound of the whole core (objective, no base)."""
        return self.lower(0, self.capacity)


def _prefix_curves(core: Core, wp: np.ndarray) -> tuple[Curves, Curves, np.ndarray]:
    """Down/up single-row hull curves of every prefix ``0..d-1`` on the
    surrogate row ``wp`` (``[n, K]``, padded like ``core.padded_rc``), index
    ``n - d`` (``suffix_curves`` over reversed depths), and the prefixes'
    usage at their first (least reduced cost) options."""
    n = core.depth
    base = wp[:, :1]
    curves = []
    for delta in (base - wp, wp - base):
        g, width_s, slope, _ = hull_chains(delta, core.padded_rc, core.padded_ok)
        curves.append(suffix_curves(n, n - 1 - g, width_s, slope))
    prefix_ref = np.concatenate([[0.0], np.cumsum(wp[:, 0])])  # [n + 1]: groups 0..d-1
    return curves[0], curves[1], prefix_ref


def _prefix_cost_points(down: Curves, up: Curves) -> tuple[np.ndarray, np.ndarray]:
    """For every prefix (index ``n - d``): the vertices ``(need, cost)`` of the
    LP cost (reduced cost plus unused capacity at price 1) of a prefix that
    must free ``need`` surrogate usage (``need < 0``: it has ``-need`` to
    spare). One piecewise-linear convex function of ``need``: to the left the
    up-hull's segments cheaper than 1 (the prefix grows into spare capacity
    where that costs less than leaving it unused), then slope 1; to the right
    the down-hull, +inf past what it can free. Segments of groups outside a
    prefix have width 0 and repeat a vertex, which ``np.interp`` tolerates
    (equal ``need``, equal cost)."""
    cheap = int(np.searchsorted(up.slopes, 1.0, side="left"))
    rows = down.cum_w.shape[0]
    zero = np.zeros((rows, 1))
    xs = np.concatenate([-up.cum_w[:, :cheap][:, ::-1], zero, down.cum_w], axis=1)
    cs = np.concatenate([up.cum_c[:, :cheap][:, ::-1], zero, down.cum_c], axis=1)
    return xs, cs


def _prefix_cost(xs: np.ndarray, cs: np.ndarray, need: np.ndarray, eps: float) -> np.ndarray:
    """``_prefix_cost_points``' function at ``need``; within ``eps`` over the
    capacity counts as fitting (summation order)."""
    x = np.where(need > 0, np.maximum(need - eps, 0.0), need)
    cost = np.interp(x, xs, cs)
    cost = np.where(x < xs[0], cs[0] + (xs[0] - x), cost)
    return np.where(x > xs[-1], np.inf, cost)


def build_tables(
    core: Core,
    upper: float,
    tol: float,
    shift: float = 0.0,
    state_limit: int = TABLE_STATE_LIMIT,
    deadline: float = math.inf,
) -> SuffixTables | None:
    """The tables (see module doc), or ``None`` when there is no binding row or
    they grow past ``state_limit`` states. ``shift`` (>= 0) is subtracted from
    ``core.bound`` when states are dropped (the multipliers' price of the
    feasibility slack, which the core's residual includes)."""
    n = core.depth
    real = core.real_rows
    lam = np.asarray(core.lam[:real], dtype=np.float64)
    if n == 0 or not (lam > 0).any() or not math.isfinite(upper):
        return None
    wp = np.where(core.padded_ok, np.tensordot(lam, core.padded_rows[:real], axes=1), 0.0)
    w = [wp[d, : len(core.obj[d])] for d in range(n)]
    capacity = float(lam @ core.residual[:real])
    scale = float(np.abs(wp).max(axis=1).sum()) + abs(capacity)
    eps = 1e-12 * max(scale, 1e-300)
    down, up, prefix_ref = _prefix_curves(core, wp)
    cost_x, cost_c = _prefix_cost_points(down, up)
    # Reduced costs and ``core.bound`` were computed with ``lam . rows`` added
    # to the objective: when ``lam`` is huge (a degenerate LP) they lose
    # absolute precision in proportion, so states are only dropped past that.
    margin = 1e-13 * scale
    budget = upper - tol - (core.bound - shift) + margin
    # States as columns of one [3, S] array (usage, objective, reduced cost):
    # one numpy call per step instead of three; the work per depth is mostly
    # call overhead on these sizes.
    packed = np.stack([wp, core.padded_obj, core.padded_rc])[:, :, None, :]  # [3, n, 1, K]
    counts = [len(x) for x in core.obj]
    options = [packed[:, d, :, : counts[d]] for d in range(n)]
    st = np.zeros((3, 1))
    usage: list[list[float]] = [[] for _ in range(n + 1)]
    value: list[list[float]] = [[] for _ in range(n + 1)]
    usage[n], value[n] = [0.0], [0.0]
    states = 1
    for d in range(n - 1, -1, -1):
        if d % 16 == 0 and time.perf_counter() > deadline:
            return None
        st = (st[:, :, None] + options[d]).reshape(3, -1)
        cost = _prefix_cost(cost_x[n - d], cost_c[n - d], st[0] + (prefix_ref[d] - capacity), eps)
        st = st[:, st[2] + cost < budget]
        if st.shape[1] > 1:
            st = st[:, np.lexsort(st[1::-1])]  # by usage, then objective
            o = st[1]
            best_before = np.minimum.accumulate(o[:-1])
            keep = np.empty(len(o), dtype=bool)
            keep[0] = True
            np.less(o[1:], best_before, out=keep[1:])
            st = st[:, keep]
        usage[d] = st[0].tolist()
        value[d] = st[1].tolist()
        states += st.shape[1]
        if states > state_limit:
            return None
    return SuffixTables(w, capacity, usage, value, eps, states)


def search(
    core: Core,
    tables: SuffixTables,
    upper: float,
    tol: float,
    node_limit: int,
    deadline: float,
) -> tuple[list[int] | None, float, int, bool]:
    """Depth-first search with the tables' bound (see module doc).

    Returns ``(assignment per depth or None, value, nodes, complete)`` like
    ``core_search.dfs``; only configurations better than ``upper - tol`` are
    returned, and ``complete`` means none better than the returned one exists.
    """
    n = core.depth
    if n > MAX_DEPTH:
        return None, upper, 0, False
    real = core.real_rows
    residual = core.residual[:real].tolist()
    lows = np.zeros((n + 1, real))
    for d in range(n - 1, -1, -1):
        lows[d] = lows[d + 1] + core.rows[d][:real].min(axis=1)
    rest_low = lows.tolist()
    options = [
        list(
            zip(
                core.obj[d].tolist(),
                tables.weight[d].tolist(),
                core.rows[d][:real].T.tolist(),
                core.ks[d].tolist(),
                strict=True,
            )
        )
        for d in range(n)
    ]
    usage, value, eps, capacity = tables.usage, tables.value, tables.eps, tables.capacity
    base = core.base_obj
    rows_range = range(real)
    current = [0] * n
    best: list[int] | None = None
    state = {"upper": upper, "nodes": 0, "stopped": False}

    def visit(depth: int, acc_obj: float, acc_w: float, used: list[float]) -> None:
        nonlocal best
        state["nodes"] += 1
        if state["nodes"] >= node_limit or (
            state["nodes"] % 1024 == 0 and time.perf_counter() > deadline
        ):
            state["stopped"] = True
            return
        if depth == n:
            total = base + acc_obj
            if total < state["upper"] - tol:
                state["upper"] = total
                best = list(current)
            return
        low = rest_low[depth + 1]
        next_usage, next_value = usage[depth + 1], value[depth + 1]
        room = capacity - acc_w + eps
        children = []
        for ob, wk, row, k in options[depth]:
            new_used = [used[r] + row[r] for r in rows_range]
            if any(new_used[r] + low[r] > residual[r] for r in rows_range):
                continue
            j = bisect_right(next_usage, room - wk) - 1
            if j < 0:
                continue
            b = base + acc_obj + ob + next_value[j]
            if b < state["upper"] - tol:
                children.append((b, ob, wk, new_used, k))
        children.sort(key=lambda c: c[0])
        for b, ob, wk, new_used, k in children:
            if b >= state["upper"] - tol:
                break
            current[depth] = k
            visit(depth + 1, acc_obj + ob, acc_w + wk, new_used)
            if state["stopped"]:
                return

    visit(0, 0.0, 0.0, [0.0] * real)
    return best, float(state["upper"]), int(state["nodes"]), not bool(state["stopped"])
