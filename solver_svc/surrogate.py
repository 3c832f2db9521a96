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
    _free_cost,
    _waste,
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


def _prefix_curves(core: Core, w: list[np.ndarray]) -> tuple[Curves, Curves, np.ndarray]:
    """Down/up single-row hull curves of every prefix ``0..d-1`` on the
    surrogate row, index ``n - d`` (``suffix_curves`` over reversed depths),
    and the prefixes' usage at their first (least reduced cost) options."""
    n = core.depth
    width = max((len(x) for x in w), default=1)
    wp = np.zeros((n, width))
    rel = np.zeros((n, width))
    okp = np.zeros((n, width), dtype=bool)
    for d in range(n):
        k = len(w[d])
        wp[d, :k] = w[d]
        rel[d, :k] = core.rc[d]
        okp[d, :k] = True
    base = wp[:, :1]
    curves = []
    for delta in (base - wp, wp - base):
        g, width_s, slope, _ = hull_chains(delta, rel, okp)
        curves.append(suffix_curves(n, n - 1 - g, width_s, slope))
    first = wp[:, 0]
    prefix_ref = np.concatenate([[0.0], np.cumsum(first)])  # [n + 1]: groups 0..d-1
    return curves[0], curves[1], prefix_ref


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
    w = [lam @ core.rows[d][:real] for d in range(n)]
    capacity = float(lam @ core.residual[:real])
    scale = float(sum(float(np.abs(x).max()) for x in w)) + abs(capacity)
    eps = 1e-12 * max(scale, 1e-300)
    down, up, prefix_ref = _prefix_curves(core, w)
    # Reduced costs and ``core.bound`` were computed with ``lam . rows`` added
    # to the objective: when ``lam`` is huge (a degenerate LP) they lose
    # absolute precision in proportion, so states are only dropped past that.
    margin = 1e-13 * scale
    budget = upper - tol - (core.bound - shift) + margin
    usage_u = np.zeros(1)
    value_o = np.zeros(1)
    reduced = np.zeros(1)
    usage: list[list[float]] = [[] for _ in range(n + 1)]
    value: list[list[float]] = [[] for _ in range(n + 1)]
    usage[n], value[n] = [0.0], [0.0]
    states = 1
    for d in range(n - 1, -1, -1):
        if d % 16 == 0 and time.perf_counter() > deadline:
            return None
        u = (usage_u[:, None] + w[d][None, :]).ravel()
        o = (value_o[:, None] + core.obj[d][None, :]).ravel()
        r = (reduced[:, None] + core.rc[d][None, :]).ravel()
        # LP cost of the prefix 0..d-1 around these states (module doc).
        # Within ``eps`` over the capacity counts as fitting (summation order).
        spare = capacity - u - prefix_ref[d]
        cost = _free_cost(down[n - d], np.where(spare < -eps, -spare, 0.0))
        cost = np.where(spare > 0, _waste(up[n - d], 1.0, spare), cost)
        alive = np.flatnonzero(r + cost < budget)
        if len(alive) == 0:
            usage_u = value_o = reduced = np.zeros(0)
        else:
            u, o, r = u[alive], o[alive], r[alive]
            order = np.lexsort((o, u))
            u, o, r = u[order], o[order], r[order]
            best_before = np.minimum.accumulate(np.concatenate([[np.inf], o[:-1]]))
            keep = o < best_before
            usage_u, value_o, reduced = u[keep], o[keep], r[keep]
        usage[d] = usage_u.tolist()
        value[d] = value_o.tolist()
        states += len(usage_u)
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
