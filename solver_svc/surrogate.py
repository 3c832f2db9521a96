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
from operator import add, gt, itemgetter, sub

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
    """Per depth ``d`` the Pareto states of groups ``d..n-1`` of one relaxation:
    ``usage[d]`` ascending, ``value[d]`` strictly descending.

    The relaxation splits the multipliers ``lam = price_of_kept * kept +
    priced`` (all >= 0, ``price_of_kept`` the largest that leaves ``priced``
    non-negative): the rows' ``kept`` combination stays a constraint
    (``usage`` is ``kept . rows``, at most ``capacity``), the ``priced`` part
    moves into the objective (``value`` sums ``obj + priced . rows``;
    subtract ``priced_capacity`` for a bound on the objective). ``kept = lam``
    is the plain surrogate; ``kept = lam_r e_r`` keeps row ``r``'s
    integrality and prices the others (a partial Lagrangian relaxation), the
    stronger one when two rows bind; ``kept = e_r`` for a row the LP leaves
    slack (``lam_r = 0``) keeps that row's integrality with everything
    priced, for when it binds only in integers.
    """

    kept: np.ndarray  # [real rows]
    priced: np.ndarray  # [real rows]
    weight: np.ndarray  # [n, K] kept usage of each option per depth (0 on padding)
    price: np.ndarray  # [n, K] priced . rows of each option per depth (0 on padding)
    capacity: float  # kept . residual
    priced_capacity: float  # priced . residual
    usage: list[list[float]]
    value: list[list[float]]
    eps: float  # lookups admit this much more usage (summation order)
    margin: float  # bounds are lowered by this (precision of the priced part)
    states: int

    def lower(self, depth: int, room: float) -> float:
        """Least ``value`` of groups ``depth..n-1`` with usage ``<= room``."""
        j = bisect_right(self.usage[depth], room + self.eps) - 1
        return self.value[depth][j] if j >= 0 else math.inf

    @property
    def root(self) -> float:
        """The relaxation's bound on the core's objective (no base)."""
        return self.lower(0, self.capacity) - self.priced_capacity - self.margin


def _prefix_curves(core: Core, wp: np.ndarray, rc: np.ndarray) -> tuple[Curves, Curves, np.ndarray]:
    """Down/up single-row hull curves of every prefix ``0..d-1`` on the
    surrogate row ``wp`` (``[n, K]``, padded like ``core.padded_ok``) with
    reduced costs ``rc`` (>= 0, 0 at each depth's reference option, the
    first with the least), index ``n - d`` (``suffix_curves`` over reversed
    depths), and the prefixes' usage at their reference options."""
    n = core.depth
    ref = np.where(core.padded_ok, rc, np.inf).argmin(axis=1)
    base = wp[np.arange(n), ref][:, None]
    curves = []
    for delta in (base - wp, wp - base):
        g, width_s, slope, _ = hull_chains(delta, rc, core.padded_ok)
        curves.append(suffix_curves(n, n - 1 - g, width_s, slope))
    prefix_ref = np.concatenate([[0.0], np.cumsum(base[:, 0])])  # [n + 1]: groups 0..d-1
    return curves[0], curves[1], prefix_ref


def _prefix_cost_points(
    down: Curves, up: Curves, unit_price: float, eps: float, far: float
) -> tuple[np.ndarray, np.ndarray]:
    """For every prefix (index ``n - d``): the vertices ``(need, cost)`` of the
    LP cost (reduced cost plus unused capacity at ``unit_price`` a unit) of a
    prefix that must free ``need`` surrogate usage (``need < 0``: it has
    ``-need`` to spare). One piecewise-linear convex function of ``need``:
    to the left the up-hull's segments cheaper than ``unit_price`` (the
    prefix grows into spare capacity where that costs less than leaving it
    unused), then slope ``unit_price`` down to ``need = far`` (no state needs
    less); flat 0 up to ``eps`` (within ``eps`` over counts as fitting,
    summation order); then the down-hull, shifted by ``eps``, and +inf past
    what it can free (``np.interp(..., right=inf)``). Segments of groups
    outside a prefix have width 0 and repeat a vertex, which ``np.interp``
    tolerates (equal ``need``, equal cost). One ``np.interp`` per depth
    evaluates it: the per-depth work of ``build_tables`` is call overhead."""
    cheap = int(np.searchsorted(up.slopes, unit_price, side="left"))
    rows = down.cum_w.shape[0]
    zero = np.zeros((rows, 1))
    grow_x = -up.cum_w[:, :cheap][:, ::-1]
    grow_c = up.cum_c[:, :cheap][:, ::-1]
    first_x = grow_x[:, :1] if cheap else zero
    first_c = grow_c[:, :1] if cheap else zero
    far_x = np.minimum(first_x, far) - 1.0
    far_c = first_c + unit_price * (first_x - far_x)
    xs = np.concatenate([far_x, grow_x, zero, zero + eps, down.cum_w + eps], axis=1)
    cs = np.concatenate([far_c, grow_c, zero, zero, down.cum_c], axis=1)
    return xs, cs


def build_tables(
    core: Core,
    upper: float,
    tol: float,
    kept: np.ndarray | None = None,
    priced: np.ndarray | None = None,
    state_limit: int = TABLE_STATE_LIMIT,
    deadline: float = math.inf,
) -> SuffixTables | None:
    """The tables (see module doc and ``SuffixTables``) of the relaxation that
    keeps ``kept`` (default: all of ``core.lam``) and prices ``priced``
    (default: the rest of ``core.lam``), or ``None`` when nothing is kept or
    they grow past ``state_limit`` states.

    States are dropped by the table's own Lagrangian bound with multipliers
    ``unit_price * kept + priced`` (``unit_price`` the largest with
    ``unit_price * kept <= lam``, so with the defaults they are ``lam``): the
    bound of the core at those multipliers, plus the state's reduced cost,
    plus the LP cost of the prefix (unused kept capacity at ``unit_price`` a
    unit). It depends on a state only through (usage, value), which is what
    makes dropping states and Pareto filtering commute."""
    n = core.depth
    real = core.real_rows
    lam = np.asarray(core.lam[:real], dtype=np.float64)
    kept = lam.copy() if kept is None else np.maximum(np.asarray(kept, dtype=np.float64), 0.0)
    if n == 0 or not (kept > 0).any() or not math.isfinite(upper):
        return None
    on = kept > 0
    unit_price = float(np.min(lam[on] / kept[on]))
    if priced is None:
        priced = np.maximum(lam - unit_price * kept, 0.0)
    priced = np.maximum(np.asarray(priced, dtype=np.float64), 0.0)
    rows = core.padded_rows[:real]
    residual = core.residual[:real]
    wp = np.where(core.padded_ok, np.tensordot(kept, rows, axes=1), 0.0)
    pp = np.where(core.padded_ok, np.tensordot(priced, rows, axes=1), 0.0)
    counts = [len(x) for x in core.obj]
    capacity = float(kept @ residual)
    priced_capacity = float(priced @ residual)
    scale = float(np.abs(wp).max(axis=1).sum()) + abs(capacity)
    eps = 1e-12 * max(scale, 1e-300)
    priced_scale = float(np.abs(pp).max(axis=1).sum()) + abs(priced_capacity)
    # The table's Lagrangian: v = obj + (unit_price * kept + priced) . rows;
    # every completion of the core costs at least
    # base + sum_d min v_d - multipliers . residual + sum of reduced costs.
    v = np.where(core.padded_ok, core.padded_obj + pp + unit_price * wp, np.inf)
    vmin = v.min(axis=1)
    rc = np.where(core.padded_ok, v - vmin[:, None], 0.0)
    lower = core.base_obj + float(vmin.sum()) - priced_capacity - unit_price * capacity
    down, up, prefix_ref = _prefix_curves(core, wp, rc)
    # No state needs less than -(capacity + prefix usage): usages are >= 0.
    far = -(abs(capacity) + float(np.abs(prefix_ref).max()) + 1.0)
    cost_x, cost_c = _prefix_cost_points(down, up, unit_price, eps, far)
    # With huge multipliers (a degenerate LP) ``v`` loses absolute precision
    # in proportion, so states are only dropped past that.
    margin = 1e-13 * (scale + priced_scale) * max(unit_price, 1.0)
    budget = upper - tol - lower + margin
    # States as columns of one [3, S] array (usage, objective, reduced cost):
    # one numpy call per step instead of three; the work per depth is mostly
    # call overhead on these sizes.
    packed = np.stack([wp, core.padded_obj + pp, rc])[:, :, None, :]  # [3, n, 1, K]
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
        # The prefix's LP cost at need = usage + prefix_ref[d] - capacity.
        shift = prefix_ref[d] - capacity
        cost = np.interp(st[0], cost_x[n - d] - shift, cost_c[n - d], right=np.inf)
        st = st[:, st[2] + cost < budget]
        if st.shape[1] > 1:
            # By usage only (half a two-key sort's time): of equal usages a
            # worse one may stay when it comes first, which wastes a state but
            # never lowers a lookup (the later, better one is what it finds).
            st = st[:, np.argsort(st[0], kind="stable")]
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
    return SuffixTables(
        kept,
        priced,
        wp,
        pp,
        capacity,
        priced_capacity,
        usage,
        value,
        eps,
        1e-12 * (priced_scale + abs(upper)),
        states,
    )


def search(
    core: Core,
    tables: SuffixTables | list[SuffixTables],
    upper: float,
    tol: float,
    node_limit: int,
    deadline: float,
) -> tuple[list[int] | None, float, int, bool]:
    """Depth-first search with the tables' bound (see module doc); with
    several tables a node's bound is the largest of theirs.

    Returns ``(assignment per depth or None, value, nodes, complete)`` like
    ``core_search.dfs``; only configurations better than ``upper - tol`` are
    returned, and ``complete`` means none better than the returned one exists.
    """
    n = core.depth
    if n > MAX_DEPTH:
        return None, upper, 0, False
    all_tables = [tables] if isinstance(tables, SuffixTables) else list(tables)
    real = core.real_rows
    residual = core.residual[:real].tolist()
    rows = core.padded_rows[:real]
    least = np.where(core.padded_ok[None], rows, np.inf).min(axis=2)  # [real, n]
    lows = np.zeros((n + 1, real))
    lows[:n] = np.cumsum(least.T[::-1], axis=0)[::-1]
    rest_low = lows.tolist()
    t_range = range(len(all_tables))
    # Per depth, per option: (objective, rows, column, kept usage and priced
    # part per table); converted to lists in one go per array.
    objs = core.padded_obj.tolist()
    option_rows = rows.transpose(1, 2, 0).tolist()
    weights = np.stack([t.weight for t in all_tables], axis=2).tolist()
    prices = np.stack([t.price for t in all_tables], axis=2).tolist()
    options = []
    for d in range(n):
        c = len(core.ks[d])
        options.append(
            list(
                zip(
                    objs[d][:c],
                    option_rows[d][:c],
                    core.ks[d].tolist(),
                    weights[d][:c],
                    prices[d][:c],
                    strict=True,
                )
            )
        )
    # Per depth, per table: the states' usages and values (lookups by depth).
    usage_at = [[t.usage[d] for t in all_tables] for d in range(n + 1)]
    value_at = [[t.value[d] for t in all_tables] for d in range(n + 1)]
    room0 = [t.capacity + t.eps for t in all_tables]
    # Constant part of each table's bound: base, minus the priced capacity
    # and the precision margin.
    offset = [core.base_obj - t.priced_capacity - t.margin for t in all_tables]
    # Per depth: how much of each row the option may use so that the rest
    # still fits at its least (``residual - least usage of the rest``).
    room_rows = [[residual[r] - rest_low[d + 1][r] for r in range(real)] for d in range(n)]
    current = [0] * n
    best: list[int] | None = None
    best_value = upper
    nodes = 0
    stopped = False

    def visit(
        depth: int, acc_obj: float, used: list[float], rooms: list[float], bases: list[float]
    ) -> None:
        """``rooms[t]``: table ``t``'s kept capacity left; ``bases[t]``: its
        bound's constant plus the priced part so far."""
        nonlocal best, best_value, nodes, stopped
        nodes += 1
        if nodes >= node_limit or (nodes % 1024 == 0 and time.perf_counter() > deadline):
            stopped = True
            return
        limit = best_value - tol
        fits = room_rows[depth]
        if depth == n - 1:  # the children are leaves: their values are exact
            for ob, row, k, _, _ in options[depth]:
                total = core.base_obj + acc_obj + ob
                if total < limit and not any(map(gt, map(add, used, row), fits)):
                    limit = total
                    best_value = total
                    current[depth] = k
                    best = list(current)
            return
        nxt = depth + 1
        usages = usage_at[nxt]
        values = value_at[nxt]
        children = []
        for ob, row, k, ws, ps in options[depth]:
            new_used = list(map(add, used, row))
            if any(map(gt, new_used, fits)):
                continue
            here = acc_obj + ob
            b = -math.inf
            for t in t_range:
                j = bisect_right(usages[t], rooms[t] - ws[t]) - 1
                if j < 0:
                    b = math.inf
                    break
                bt = bases[t] + here + ps[t] + values[t][j]
                if bt > b:
                    b = bt
                    if b >= limit:
                        break
            if b < limit:
                children.append((b, here, new_used, k, ws, ps))
        children.sort(key=itemgetter(0))
        for b, here, new_used, k, ws, ps in children:
            if b >= best_value - tol:
                break
            current[depth] = k
            visit(nxt, here, new_used, list(map(sub, rooms, ws)), list(map(add, bases, ps)))
            if stopped:
                return

    if n == 0:
        fits = all(x >= 0 for x in residual)
        if fits and core.base_obj < upper - tol:
            return [], core.base_obj, 1, True
        return None, upper, 1, True
    visit(0, 0.0, [0.0] * real, list(room0), list(offset))
    return best, float(best_value), nodes, not stopped


#: Targets of ``search_targeted``: fractions of the gap between the tables'
#: bound and the incumbent.
#: One target at a quarter of the gap for small cores: over three 100-point
#: frontiers of 54-layer problems (whose hard points already start from a
#: near-optimal incumbent) it cost 3 % more nodes than none and (1/32, 1/8,
#: 1/2) 22 % more. Finer targets for cores of ``FINE_TARGET_DEPTH`` groups or
#: more: on the hardest 500-layer frontier points (incumbent 5-60x the
#: optimum's distance from the bound) they needed 14,000-17,000 nodes where
#: the quarter alone needed 52,000-130,000 and no target 94,000-250,000.
TARGET_FRACTIONS = (0.25, 1.0)
FINE_TARGET_FRACTIONS = (1 / 32, 1 / 8, 1 / 2, 1.0)
FINE_TARGET_DEPTH = 150


def search_targeted(
    core: Core,
    tables: list[SuffixTables],
    upper: float,
    tol: float,
    node_limit: int,
    deadline: float,
    fractions: tuple[float, ...] = TARGET_FRACTIONS,
) -> tuple[list[int] | None, float, int, bool]:
    """``search`` aiming first at values close to the bound.

    Why: on 500-layer frontier points the depth-first search spent 94-98 %
    of its nodes *finding* the optimum (4,400-15,000 nodes proved it once it
    was the incumbent, 250,000 found it from the heuristic's incumbent). A
    search told that only configurations below a target ``T`` count prunes as
    if ``T`` were the incumbent; when it completes without one, every
    configuration is worth at least ``T - tol`` and the next, larger target
    is tried; when it finds one, that is optimal (anything better would be
    below ``T`` too). The last target is ``upper`` itself, so the answer is
    the plain search's.
    """
    lower = core.base_obj + max(t.root for t in tables)
    nodes = 0
    for fraction in fractions:
        target = upper if fraction >= 1.0 else lower + fraction * (upper - lower)
        if fraction < 1.0 and not target < upper - tol:
            continue
        found, value, work, complete = search(
            core, tables, target, tol, node_limit - nodes, deadline
        )
        nodes += work
        if found is not None or not complete or fraction >= 1.0:
            return found, value, nodes, complete
        lower = target - tol  # nothing below: the optimum is at least this
    return None, upper, nodes, True  # pragma: no cover - the last fraction returns
