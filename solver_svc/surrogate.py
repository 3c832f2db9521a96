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

Both loops (the table build per depth and the search per node) run compiled
in ``kernels.py``; this module owns what they compute. Compiling them took
the ResNet50-sized median solve from 5.7 to 3.0 ms and a transformer-sized
100-point frontier from 13.7 to 5.8 s (``benchmarks/bench_solver.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from solver_svc.core_search import (
    Core,
    Curves,
    hull_chains,
    suffix_curves,
)
from solver_svc.kernels import TABLES_OK, search_core, suffix_states

__all__ = ["SuffixTables", "build_tables", "search"]

#: Most states the tables may hold summed over depths before they are given up
#: (the search falls back to ``core_search``). Compiled, a state costs about
#: 0.1 us to make; the largest table of a 500-layer frontier held 525,000.
#: At most 32 MB of states per table.
TABLE_STATE_LIMIT = 2_000_000


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
    usage: np.ndarray  # every depth's states, depth d at start[d]:start[d] + length[d]
    value: np.ndarray
    start: np.ndarray  # [n + 1]
    length: np.ndarray  # [n + 1]
    eps: float  # lookups admit this much more usage (summation order)
    margin: float  # bounds are lowered by this (precision of the priced part)
    states: int

    def lower(self, depth: int, room: float) -> float:
        """Least ``value`` of groups ``depth..n-1`` with usage ``<= room``."""
        lo = int(self.start[depth])
        states = self.usage[lo : lo + int(self.length[depth])]
        j = int(np.searchsorted(states, room + self.eps, side="right")) - 1
        return float(self.value[lo + j]) if j >= 0 else math.inf

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
    status, usage, value, start, length, states = suffix_states(
        wp,
        core.padded_obj + pp,
        rc,
        np.asarray(counts, dtype=np.int64),
        cost_x,
        cost_c,
        prefix_ref,
        capacity,
        budget,
        state_limit,
        deadline,
    )
    if status != TABLES_OK:
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
        start,
        length,
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

    Per node: every option that leaves each real row room for the rest's
    least usage becomes a child, bounded by ``base + objective so far +
    priced part so far + value of the next depth's best state that fits the
    kept capacity left`` (per table, the largest counts); children are
    visited in increasing bound while it is below the incumbent ``- tol``.
    The loop itself is ``kernels.search_core``.

    Returns ``(assignment per depth or None, value, nodes, complete)`` like
    ``core_search.dfs``; only configurations better than ``upper - tol`` are
    returned, and ``complete`` means none better than the returned one exists.
    """
    n = core.depth
    real = core.real_rows
    residual = core.residual[:real]
    if n == 0:
        fits = bool((residual >= 0).all())
        if fits and core.base_obj < upper - tol:
            return [], core.base_obj, 1, True
        return None, upper, 1, True
    all_tables = [tables] if isinstance(tables, SuffixTables) else list(tables)
    rows = core.padded_rows[:real]
    least = np.where(core.padded_ok[None], rows, np.inf).min(axis=2)  # [real, n]
    rest_low = np.zeros((n + 1, real))
    rest_low[:n] = np.cumsum(least.T[::-1], axis=0)[::-1]
    # Per depth: how much of each row one option may use so that the rest
    # still fits at its least.
    room_rows = residual[None, :] - rest_low[1:]
    width = core.padded_obj.shape[1]
    ks = np.zeros((n, width), dtype=np.int64)
    for d, cols in enumerate(core.ks):
        ks[d, : len(cols)] = cols
    sizes = [len(t.usage) for t in all_tables]
    shifts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    found, choice, value, nodes, complete = search_core(
        core.padded_obj,
        np.ascontiguousarray(rows.transpose(1, 2, 0)),
        ks,
        np.array([len(x) for x in core.obj], dtype=np.int64),
        np.stack([t.weight for t in all_tables], axis=2),
        np.stack([t.price for t in all_tables], axis=2),
        np.concatenate([t.usage for t in all_tables]),
        np.concatenate([t.value for t in all_tables]),
        np.stack([t.start for t in all_tables]) + shifts[:, None],
        np.stack([t.length for t in all_tables]),
        np.array([t.capacity + t.eps for t in all_tables]),
        np.array([core.base_obj - t.priced_capacity - t.margin for t in all_tables]),
        room_rows,
        float(core.base_obj),
        float(upper),
        float(tol),
        int(node_limit),
        float(deadline),
    )
    return (choice.tolist() if found else None), float(value), int(nodes), bool(complete)


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
