"""Exact search over the core left after reduced-cost fixing (``exact.py`` step 5).

The core is the few groups that still have more than one option whose
reduced cost ``rc`` fits in the gap ``UB - LB``. Both searches below share one
bound: a partial configuration costs at least

    LB + (sum of the reduced costs chosen so far) + extra

where ``extra`` is, for each budget row, the LP cost (in reduced costs) the
remaining groups must pay to free what their least-reduced-cost choices would
overrun (a single-row convex-hull bound; the largest row counts). A row the
remaining groups cannot free enough of makes the partial configuration
infeasible.

- ``dfs``: depth first, options in increasing reduced cost: the fastest proof
  when the gap is small.
- ``dp``: dynamic programming over the groups with Pareto dominance on
  (objective, used budgets): partial configurations that another beats on
  every count are dropped, which collapses the combinations a depth-first
  search would enumerate when a large layer forces many small ones to make
  room (the knapsack "big item" case). Vectorised with numpy.

Both return ``(assignment or None, value, work, complete)``; ``complete`` False
means a work limit stopped them and nothing is proven.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from solver_svc.presolve import Instance

__all__ = ["Core", "build_core", "dfs", "dp"]

#: Cores deeper than this skip the recursive search (Python's recursion limit).
MAX_DFS_DEPTH = 800
#: States at one depth past which dynamic programming with dominance on two
#: or more budget rows stops (it grows too fast there; CP-SAT takes over).
MULTI_ROW_STATES = 4_000


@dataclass(frozen=True, eq=False)
class Core:
    """The core groups in search order with everything the bound needs.

    Per row ``r`` and depth ``i`` two merged convex-hull curves of the groups
    ``i..n-1``, as (cumulative usage, cumulative reduced cost, slope):
    ``down`` prices freeing usage below the least-reduced-cost choices,
    ``up`` prices growing above them.
    """

    groups: np.ndarray  # instance group index per depth
    ks: list[np.ndarray]  # instance option columns per depth (increasing rc)
    rc: list[np.ndarray]  # reduced costs relative to the depth's first option
    obj: list[np.ndarray]
    rows: list[np.ndarray]  # [m, options] per depth
    ref_suffix: np.ndarray  # [n + 1, m]: rest's usage at its least-rc choices
    lam: np.ndarray  # [m] multipliers the reduced costs were priced with
    residual: np.ndarray  # [m] capacity left for the core (slack included)
    real_rows: int  # rows past this are implied ones added for the bound
    base_obj: float  # objective of the fixed groups
    bound: float  # LB plus the core's least reduced costs
    padded_rows: np.ndarray  # [m, n, K] rows per depth, options in rc order
    padded_rc: np.ndarray  # [n, K] reduced costs per depth (0 on padding)
    padded_obj: np.ndarray  # [n, K] objective per depth (padding arbitrary)
    padded_ok: np.ndarray  # [n, K] real options

    @property
    def depth(self) -> int:
        return len(self.groups)

    @cached_property
    def down(self) -> list[Curves]:
        """Per row: the curves pricing freed usage (computed on first use:
        ``surrogate.search`` proves most cores without them)."""
        return self._curves(-1.0)

    @cached_property
    def up(self) -> list[Curves]:
        """Per row: the curves pricing growth."""
        return self._curves(1.0)

    def _curves(self, sign: float) -> list[Curves]:
        out = []
        n = self.depth
        for r in range(self.padded_rows.shape[0]):
            base = self.padded_rows[r, :, :1]
            delta = sign * (self.padded_rows[r] - base)
            g, w, sl, _ = hull_chains(delta, self.padded_rc, self.padded_ok)
            out.append(suffix_curves(n, g, w, sl))
        return out


def hull_chains(
    d: np.ndarray, c: np.ndarray, ok: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``d``/``c`` (``[n, K]``): the lower convex hull, from the
    origin, of the points ``(d, c)`` with ``d > 0`` and ``ok``: the LP's
    cheapest way for one group to move ``d`` units of a budget row at reduced
    cost ``c``. Gift wrapping, vectorised over the rows (at most ``K`` rounds).

    Returns ``(row, width, slope, end)`` of every segment (``end`` is the
    column the segment reaches); one row's segments come in increasing slope.
    Collinear points are skipped (the farthest is taken).
    """
    n, width = d.shape
    ok = ok & (d > 0)
    cur_d = np.zeros(n)
    cur_c = np.zeros(n)
    out_g: list[np.ndarray] = []
    out_w: list[np.ndarray] = []
    out_s: list[np.ndarray] = []
    out_e: list[np.ndarray] = []
    active = np.flatnonzero(ok.any(axis=1))
    for _ in range(width):
        if len(active) == 0:
            break
        dd = d[active] - cur_d[active, None]
        cand = ok[active] & (dd > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(cand, (c[active] - cur_c[active, None]) / dd, np.inf)
        best = slope.min(axis=1)
        has = np.isfinite(best)
        far = np.where(cand & (slope <= best[:, None]), d[active], -np.inf).argmax(axis=1)
        active, far, best = active[has], far[has], best[has]
        if len(active) == 0:
            break
        new_d = d[active, far]
        out_g.append(active)
        out_w.append(new_d - cur_d[active])
        out_s.append(best)
        out_e.append(far)
        cur_d[active] = new_d
        cur_c[active] = c[active, far]
    if not out_g:
        empty = np.zeros(0, dtype=np.int64)
        return empty, np.zeros(0), np.zeros(0), empty
    return (
        np.concatenate(out_g),
        np.concatenate(out_w),
        np.concatenate(out_s),
        np.concatenate(out_e),
    )


@dataclass(frozen=True, eq=False)
class Curves:
    """For every depth ``i``: the merged hull of groups ``i..n-1`` as
    cumulative widths and costs over all segments sorted by slope (segments
    of groups before ``i`` count with width 0), i.e. a single-row LP of the
    rest. ``curves[i]`` is ``(cum_w, cum_c, slopes)`` as 1-D arrays."""

    cum_w: np.ndarray  # [n + 1, S]
    cum_c: np.ndarray  # [n + 1, S]
    slopes: np.ndarray  # [S]

    def __getitem__(self, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.cum_w[depth], self.cum_c[depth], self.slopes

    def __len__(self) -> int:
        return int(self.cum_w.shape[0])

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return (self[i] for i in range(len(self)))


def suffix_curves(n: int, depth: np.ndarray, widths: np.ndarray, slopes: np.ndarray) -> Curves:
    """``Curves`` of the segments ``(depth, width, slope)`` (see ``Curves``)."""
    order = np.argsort(slopes, kind="stable")
    depth, widths, slopes = depth[order], widths[order], slopes[order]
    inside = depth[None, :] >= np.arange(n + 1)[:, None]  # [n + 1, S]
    w = np.where(inside, widths[None, :], 0.0)
    return Curves(np.cumsum(w, axis=1), np.cumsum(w * slopes[None, :], axis=1), slopes)


def _free_cost(curve: tuple[np.ndarray, np.ndarray, np.ndarray], need: np.ndarray) -> np.ndarray:
    """Least reduced cost to free ``need > 0`` usage (inf when impossible)."""
    cum_w, cum_c, slopes = curve
    if len(cum_w) == 0:
        return np.where(need > 0, np.inf, 0.0)
    j = np.searchsorted(cum_w, need, side="left")
    jj = np.minimum(j, len(cum_w) - 1)
    prev_w = np.where(jj > 0, cum_w[jj - 1], 0.0)
    prev_c = np.where(jj > 0, cum_c[jj - 1], 0.0)
    cost = prev_c + slopes[jj] * (need - prev_w)
    cost = np.where(j >= len(cum_w), np.inf, cost)
    return np.where(need > 0, cost, 0.0)


def _waste(
    curve: tuple[np.ndarray, np.ndarray, np.ndarray], lam: float, spare: np.ndarray
) -> np.ndarray:
    """Least ``sum rc + lam * (spare - growth)`` over LP growths ``<= spare``:
    capacity left unused costs ``lam`` per unit, growing into it costs the
    up-hull's reduced costs, whichever is cheaper per unit is used."""
    spare = np.maximum(spare, 0.0)
    cum_w, cum_c, slopes = curve
    if lam <= 0:
        return np.zeros_like(spare)
    if len(cum_w) == 0:
        return lam * spare
    cheap = int(np.searchsorted(slopes, lam, side="left"))  # segments cheaper than lam
    limit = cum_w[cheap - 1] if cheap else 0.0
    grow = np.minimum(spare, limit)
    j = np.searchsorted(cum_w, grow, side="left")
    jj = np.minimum(j, len(cum_w) - 1)
    prev_w = np.where(jj > 0, cum_w[jj - 1], 0.0)
    prev_c = np.where(jj > 0, cum_c[jj - 1], 0.0)
    cost = np.where(grow > 0, prev_c + slopes[jj] * (grow - prev_w), 0.0)
    return cost + lam * (spare - grow)


def _max_growth(curve: tuple[np.ndarray, np.ndarray, np.ndarray], budget: np.ndarray) -> np.ndarray:
    """Most usage the rest can add spending at most ``budget`` reduced cost."""
    cum_w, cum_c, slopes = curve
    if len(cum_w) == 0:
        return np.zeros_like(budget)
    budget = np.maximum(budget, 0.0)
    j = np.searchsorted(cum_c, budget, side="right")
    jj = np.minimum(j, len(cum_w) - 1)
    prev_w = np.where(jj > 0, cum_w[jj - 1], 0.0)
    prev_c = np.where(jj > 0, cum_c[jj - 1], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        partial = prev_w + np.where(slopes[jj] > 0, (budget - prev_c) / slopes[jj], 0.0)
    return np.where(j >= len(cum_w), cum_w[-1], partial)


def build_core(
    inst: Instance,
    keep: np.ndarray,
    rc: np.ndarray,
    lam: np.ndarray,
    core_groups: np.ndarray,
    base_obj: float,
    residual: np.ndarray,
    bound: float,
) -> Core:
    """Order the core (groups that move the budgets most first, so pruning
    starts early) and precompute the bound's curves."""
    real_rows = inst.rows.shape[0]
    lam = np.asarray(lam, dtype=np.float64)
    residual = np.asarray(residual, dtype=np.float64)
    all_rows = inst.rows
    if int((lam > 0).sum()) >= 2:
        # The lam-weighted sum of the rows: a constraint every feasible
        # configuration meets too, priced at exactly 1 per unit, whose
        # single-row bound is the node's LP bound in the multipliers' direction.
        combined = np.tensordot(lam, inst.rows, axes=1)[None]
        all_rows = np.concatenate([inst.rows, combined])
        residual = np.concatenate([residual, [float(lam @ residual)]])
        lam = np.concatenate([lam, [1.0]])
    m = all_rows.shape[0]
    scale = np.maximum(np.abs(residual[:real_rows]), 1e-300)
    sub_keep = keep[core_groups]
    block = inst.rows[:, core_groups]  # [real_rows, c, K]
    hi = np.where(sub_keep[None], block, -np.inf).max(axis=2)
    lo = np.where(sub_keep[None], block, np.inf).min(axis=2)
    spread = ((hi - lo) / scale[:, None]).max(axis=0) if real_rows else np.zeros(len(core_groups))
    order = core_groups[np.argsort(-spread, kind="stable")]
    n = len(order)
    # Options of each depth in increasing reduced cost, padded with +inf.
    sub_rc = np.where(keep[order], rc[order], np.inf)  # [n, K]
    cols = np.argsort(sub_rc, axis=1, kind="stable")
    counts = keep[order].sum(axis=1)
    srt_rc = np.take_along_axis(sub_rc, cols, axis=1)
    first = srt_rc[:, 0]
    rel = srt_rc - first[:, None]  # [n, K], inf on padding
    okp = np.arange(cols.shape[1])[None, :] < counts[:, None]
    srt_rows = np.take_along_axis(
        all_rows[:, order], np.broadcast_to(cols, (m, *cols.shape)), axis=2
    )
    srt_obj = np.take_along_axis(inst.obj[order], cols, axis=1)
    ks_list = [cols[i, : counts[i]] for i in range(n)]
    rc_list = [rel[i, : counts[i]] for i in range(n)]
    obj_list = [srt_obj[i, : counts[i]] for i in range(n)]
    rows_list = [srt_rows[:, i, : counts[i]] for i in range(n)]
    ref = srt_rows[:, :, 0].T  # [n, m]
    rel0 = np.where(okp, rel, 0.0)
    ref_suffix = np.zeros((n + 1, m))
    ref_suffix[:n] = np.cumsum(ref[::-1], axis=0)[::-1]
    return Core(
        groups=order,
        ks=ks_list,
        rc=rc_list,
        obj=obj_list,
        rows=rows_list,
        ref_suffix=ref_suffix,
        lam=lam,
        residual=residual,
        real_rows=real_rows,
        base_obj=base_obj,
        bound=bound + float(first.sum()),
        padded_rows=srt_rows,
        padded_rc=rel0,
        padded_obj=srt_obj,
        padded_ok=okp,
    )


def rest_bound(core: Core, depth: int, used: np.ndarray) -> np.ndarray:
    """``extra`` of the module doc for partial configurations ``used`` ([s, m])."""
    extra = np.zeros(used.shape[0])
    for r in range(used.shape[1]):
        spare = core.residual[r] - used[:, r] - core.ref_suffix[depth, r]
        cost = _free_cost(core.down[r][depth], -spare)
        if core.lam[r] > 0:
            cost = np.where(spare > 0, _waste(core.up[r][depth], float(core.lam[r]), spare), cost)
        extra = np.maximum(extra, cost)
    return extra


def dfs(
    core: Core, upper: float, tol: float, node_limit: int, deadline: float
) -> tuple[list[int] | None, float, int, bool]:
    """Depth-first search (see module doc). Assignment is per depth (columns)."""
    n = core.depth
    if n > MAX_DFS_DEPTH:
        return None, upper, 0, False
    m = len(core.residual)
    options = [
        list(
            zip(
                core.rc[i].tolist(),
                core.obj[i].tolist(),
                core.rows[i].T.tolist(),
                core.ks[i].tolist(),
                strict=True,
            )
        )
        for i in range(n)
    ]
    lists = [
        [[(c[0].tolist(), c[1].tolist(), c[2].tolist()) for c in curves] for curves in kind]
        for kind in (core.down, core.up)
    ]
    down, up = lists
    lam = core.lam.tolist()
    # Per row and depth: usage the up-hull grows at a rate below lam (worth it).
    cheap = [
        [(c[0][j - 1] if (j := bisect_left(c[2], lam[r])) else 0.0) for c in up[r]]
        for r in range(m)
    ]
    ref_suffix = core.ref_suffix.tolist()
    residual = core.residual.tolist()
    bound = core.bound
    rows_range = range(m)
    current = [0] * n
    best: list[int] | None = None
    state = {"upper": upper, "nodes": 0, "stopped": False}

    def along(curve: tuple[list[float], list[float], list[float]], x: float) -> float:
        """Cumulative cost of the first ``x`` units of a curve (x within it)."""
        cum_w, cum_c, slopes = curve
        j = bisect_left(cum_w, x)
        prev_w = cum_w[j - 1] if j else 0.0
        prev_c = cum_c[j - 1] if j else 0.0
        return prev_c + slopes[j] * (x - prev_w)

    def extra_for(depth: int, used: list[float]) -> float:
        extra = 0.0
        for r in rows_range:
            spare = residual[r] - used[r] - ref_suffix[depth][r]
            if spare < 0:
                curve = down[r][depth]
                if not curve[0] or -spare > curve[0][-1]:
                    return math.inf
                cost = along(curve, -spare)
            elif lam[r] > 0 and spare > 0:
                grow = min(spare, cheap[r][depth])
                cost = (along(up[r][depth], grow) if grow > 0 else 0.0) + lam[r] * (spare - grow)
            else:
                continue
            if cost > extra:
                extra = cost
        return extra

    def visit(depth: int, acc_rc: float, used: list[float], acc_obj: float) -> None:
        nonlocal best
        state["nodes"] += 1
        if state["nodes"] >= node_limit or (
            state["nodes"] % 1024 == 0 and time.perf_counter() > deadline
        ):
            state["stopped"] = True
            return
        if depth == n:
            value = core.base_obj + acc_obj
            if value < state["upper"] - tol:
                state["upper"] = value
                best = list(current)
            return
        for rcv, ob, row, k in options[depth]:
            if bound + acc_rc + rcv >= state["upper"] - tol:
                break
            new_used = [used[r] + row[r] for r in rows_range]
            extra = extra_for(depth + 1, new_used)
            if bound + acc_rc + rcv + extra >= state["upper"] - tol:
                continue
            current[depth] = k
            visit(depth + 1, acc_rc + rcv, new_used, acc_obj + ob)
            if state["stopped"]:
                return

    if bound + extra_for(0, [0.0] * m) >= upper - tol:
        return None, upper, 1, True  # the root is infeasible or cannot beat upper
    visit(0, 0.0, [0.0] * m, 0.0)
    return best, float(state["upper"]), int(state["nodes"]), not bool(state["stopped"])


def _staircase(u: np.ndarray, block: int = 128) -> np.ndarray:
    """Positions of ``u`` (``[n, 2]``, in objective order) that no earlier
    position beats on both columns (ties keep the first).

    Blocks of positions are checked against the 2-D Pareto staircase of the
    survivors so far (x ascending, y strictly descending: the earlier point
    with the largest x not above a query's x has the least y among those) and
    among themselves, so the work is about ``n log n + n * block``.
    """
    n = len(u)
    stair_x = np.zeros(0)
    stair_y = np.zeros(0)
    kept: list[np.ndarray] = []
    tri = np.tri(block, k=-1, dtype=bool)
    for start in range(0, n, block):
        blk = u[start : start + block]
        b = len(blk)
        if len(stair_x):
            j = np.searchsorted(stair_x, blk[:, 0], side="right") - 1
            dom = (j >= 0) & (stair_y[np.maximum(j, 0)] <= blk[:, 1])
        else:
            dom = np.zeros(b, dtype=bool)
        inner = (blk[None, :, :] <= blk[:, None, :]).all(axis=2) & tri[:b, :b]
        dom |= inner.any(axis=1)
        alive = np.flatnonzero(~dom)
        kept.append(start + alive)
        xs = np.concatenate([stair_x, blk[alive, 0]])
        ys = np.concatenate([stair_y, blk[alive, 1]])
        o = np.lexsort((ys, xs))
        xs, ys = xs[o], ys[o]
        lower = np.ones(len(ys), dtype=bool)
        lower[1:] = ys[1:] < np.minimum.accumulate(ys)[:-1]
        stair_x, stair_y = xs[lower], ys[lower]
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


def _pareto(obj: np.ndarray, used: np.ndarray, max_pairs: int) -> np.ndarray:
    """Indices of states not dominated on (obj, used columns); ``used`` holds
    only the rows that still matter. Ties keep the first. With three or more
    columns, filtering stops (keeping the rest) past ``max_pairs``
    comparisons: dropping fewer states never loses the optimum."""
    n, m = used.shape
    order = np.lexsort((*used.T[::-1], obj)) if m else np.argsort(obj, kind="stable")
    if m == 0:
        return order[:1]
    u = used[order]
    if m == 1:
        prev = np.minimum.accumulate(np.concatenate([[np.inf], u[:-1, 0]]))
        return order[u[:, 0] < prev]
    if m == 2:
        return order[_staircase(u)]
    kept: list[int] = []
    kept_u = np.zeros((0, m))
    chunk = 128
    pairs = 0
    for start in range(0, n, chunk):
        block = u[start : start + chunk]
        if pairs > max_pairs:
            kept.extend(range(start, n))
            break
        dom = (
            np.any(np.all(kept_u[None, :, :] <= block[:, None, :], axis=2), axis=1)
            if len(kept_u)
            else np.zeros(len(block), dtype=bool)
        )
        inner = (block[None, :, :] <= block[:, None, :]).all(axis=2)  # [j, i]: i dominates j
        inner &= np.tri(len(block), k=-1, dtype=bool)
        dom |= inner.any(axis=1)
        survivors = np.flatnonzero(~dom)
        kept.extend((start + survivors).tolist())
        kept_u = np.concatenate([kept_u, block[survivors]])
        pairs += len(block) * len(kept_u)
    return order[np.asarray(kept, dtype=np.int64)]


def dp(
    core: Core, upper: float, tol: float, state_limit: int, deadline: float
) -> tuple[list[int] | None, float, int, bool]:
    """Dynamic programming with dominance (see module doc).

    At every depth each surviving partial configuration is also completed
    with the rest's least-reduced-cost options; a feasible completion that
    beats ``upper`` becomes the incumbent at once, so pruning tightens while
    the search runs instead of only at its end.
    """
    n = core.depth
    m = len(core.residual)
    real = core.real_rows
    acc_obj = np.zeros(1)
    acc_rc = np.zeros(1)
    used = np.zeros((1, m))
    back: list[tuple[np.ndarray, np.ndarray]] = []
    work = 0
    best_assignment: list[int] | None = None
    if not core.bound + float(rest_bound(core, 0, used)[0]) < upper - tol:
        return None, upper, 1, True  # the root is infeasible or cannot beat upper
    first_obj = np.zeros(n + 1)
    if n:
        first_obj[:n] = np.cumsum(np.array([o[0] for o in core.obj])[::-1])[::-1]
    limit_real = core.residual[:real]

    def path(level: int, state: int, option: int) -> list[int]:
        """Assignment of a completed state: its ancestry, then first options."""
        out = [int(core.ks[j][0]) for j in range(n)]
        out[level] = int(core.ks[level][option])
        s = state
        for j in range(level - 1, -1, -1):
            parents, options = back[j]
            out[j] = int(core.ks[j][options[s]])
            s = int(parents[s])
        return out

    for i in range(n):
        if time.perf_counter() > deadline:
            return best_assignment, upper, work, False
        k_i = len(core.ks[i])
        c_obj = (acc_obj[:, None] + core.obj[i][None, :]).ravel()
        c_rc = (acc_rc[:, None] + core.rc[i][None, :]).ravel()
        c_used = (used[:, None, :] + core.rows[i].T[None, :, :]).reshape(-1, m)
        extra = rest_bound(core, i + 1, c_used)
        lower = core.bound + c_rc + extra
        idx = np.flatnonzero(lower < upper - tol)
        if len(idx) == 0:
            return best_assignment, upper, work, True
        # Incumbents from completing every survivor greedily.
        fits = (c_used[idx, :real] + core.ref_suffix[i + 1, :real] <= limit_real).all(axis=1)
        if fits.any():
            values = np.where(fits, core.base_obj + c_obj[idx] + first_obj[i + 1], np.inf)
            j = int(np.argmin(values))
            if values[j] < upper - tol:
                upper = float(values[j])
                flat = int(idx[j])
                best_assignment = path(i, flat // k_i, flat % k_i)
                idx = idx[lower[idx] < upper - tol]
                if len(idx) == 0:
                    return best_assignment, upper, work, True
        c_used_a = c_used[idx]
        budget = upper - tol - core.bound - c_rc[idx]
        relevant = np.zeros(m, dtype=bool)  # implied rows never count
        for r in range(real):
            room = core.residual[r] - core.ref_suffix[i + 1, r] - c_used_a[:, r]
            relevant[r] = bool((_max_growth(core.up[r][i + 1], budget) > room).any())
        if int(relevant.sum()) > 1 and len(idx) > MULTI_ROW_STATES:
            # Dominance on two or more rows keeps too many states: give up
            # and let the caller use CP-SAT.
            return best_assignment, upper, work, False
        keep = idx[_pareto(c_obj[idx], c_used_a[:, relevant], max_pairs=5_000_000)]
        acc_obj, acc_rc, used = c_obj[keep], c_rc[keep], c_used[keep]
        back.append((keep // k_i, keep % k_i))
        work += len(keep)
        if work > state_limit:
            return best_assignment, upper, work, False
    best = int(np.argmin(acc_obj))
    value = core.base_obj + float(acc_obj[best])
    if not value < upper - tol:
        return best_assignment, upper, work, True
    if n == 0:
        return [], value, work, True  # nothing to choose; the root check proved it fits
    parents, options = back[n - 1]
    return path(n - 1, int(parents[best]), int(options[best])), value, work, True
