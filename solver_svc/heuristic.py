"""Feasible configurations close to the LP optimum (incumbents for the search).

A good incumbent is what makes reduced-cost fixing bite, so two cheap
constructions are tried and polished:

- ``round_lp``: the Lagrangian minimiser at the LP multipliers, with each of
  the (at most one per budget row) fractional groups of the LP set to every
  combination of its fractional options; the best feasible one wins.
- ``alpha_round``: the smallest scaling ``alpha >= 1`` of the multipliers
  whose Lagrangian minimiser meets every budget (bisection), a fallback when
  rounding the LP misses.

``improve`` then makes single-group moves that lower the objective while
staying feasible, best move first, until none is left.
"""

from __future__ import annotations

import itertools

import numpy as np

from solver_svc.dual import DualResult
from solver_svc.presolve import Instance

__all__ = ["alpha_round", "feasible", "improve", "objective_of", "round_lp"]


def objective_of(inst: Instance, choice: np.ndarray) -> float:
    return float(inst.obj[np.arange(inst.num_groups), choice].sum())


def totals_of(inst: Instance, choice: np.ndarray) -> np.ndarray:
    return inst.rows[:, np.arange(inst.num_groups), choice].sum(axis=1)


def feasible(inst: Instance, choice: np.ndarray, slack: np.ndarray) -> bool:
    """Whether ``choice`` (a valid option per group) meets every budget."""
    if not bool(inst.valid[np.arange(inst.num_groups), choice].all()):
        return False
    if inst.rows.shape[0] == 0:
        return True
    return bool((totals_of(inst, choice) <= inst.limits + slack).all())


def improve(
    inst: Instance, choice: np.ndarray, slack: np.ndarray, max_moves: int = 10_000
) -> np.ndarray:
    """Best-improvement single-group moves that keep every budget met."""
    choice = choice.copy()
    groups = np.arange(inst.num_groups)
    bound = inst.limits + slack
    total = totals_of(inst, choice)
    width = inst.obj.shape[1]
    for _ in range(max_moves):
        current = inst.rows[:, groups, choice]
        delta_rows = inst.rows - current[:, :, None]
        delta_obj = inst.obj - inst.obj[groups, choice][:, None]
        ok = ((total[:, None, None] + delta_rows) <= bound[:, None, None]).all(axis=0)
        gain = np.where(ok & (delta_obj < 0), delta_obj, 0.0)
        best = int(np.argmin(gain))
        if not gain.flat[best] < 0:
            break
        g, k = divmod(best, width)
        total += inst.rows[:, g, k] - inst.rows[:, g, choice[g]]
        choice[g] = k
    return choice


def round_lp(
    inst: Instance, dual: DualResult, v: np.ndarray, slack: np.ndarray
) -> np.ndarray | None:
    """Round the master LP's solution (see module doc); ``None`` if none is feasible."""
    base = v.argmin(axis=1)
    frac = sorted(dual.fractional.items())[:6]
    best: np.ndarray | None = None
    best_obj = np.inf
    options = [[k for k, _ in parts] for _, parts in frac]
    for combo in itertools.islice(itertools.product(*options), 256):
        choice = base.copy()
        for (g, _), k in zip(frac, combo, strict=True):
            choice[g] = k
        if feasible(inst, choice, slack):
            value = objective_of(inst, choice)
            if value < best_obj:
                best, best_obj = choice, value
    return None if best is None else improve(inst, best, slack)


def alpha_round(inst: Instance, lam: np.ndarray, slack: np.ndarray) -> np.ndarray | None:
    """Smallest multiplier scaling whose minimiser is feasible (see module doc)."""
    if inst.rows.shape[0] == 0:
        return inst.obj.argmin(axis=1)
    direction = lam.copy()
    if not (direction > 0).any():
        # No multiplier yet: weigh rows by how much they are over their limit.
        mins = np.where(inst.valid[None], inst.rows, np.inf).min(axis=2).sum(axis=1)
        direction = 1.0 / np.maximum(np.abs(inst.limits - mins), 1e-300)
    penalty = np.tensordot(direction, inst.rows, axes=1)

    def minimiser(alpha: float) -> np.ndarray:
        return np.asarray((inst.obj + alpha * penalty).argmin(axis=1))

    choice = minimiser(1.0)
    if feasible(inst, choice, slack):
        return improve(inst, choice, slack)
    lo, hi = 1.0, 2.0
    for _ in range(80):
        choice = minimiser(hi)
        if feasible(inst, choice, slack):
            break
        lo, hi = hi, hi * 4.0
    else:
        return None
    best = choice
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        choice = minimiser(mid)
        if feasible(inst, choice, slack):
            hi, best = mid, choice
        else:
            lo = mid
    return improve(inst, best, slack)


def improve_pairs(
    inst: Instance,
    choice: np.ndarray,
    slack: np.ndarray,
    lam: np.ndarray,
    max_rounds: int = 200,
    max_candidates: int = 400,
) -> np.ndarray:
    """Two-group exchanges: one group moves to a better option that does not
    fit alone, another frees what it needs. Best exchange first, then
    ``improve``; repeated until none helps. Candidates are capped (the best by
    objective gain, and the best by ``lam``-priced freed budget) so the work
    stays near ``max_candidates^2`` per round on large problems."""
    choice = improve(inst, choice, slack)
    m = inst.rows.shape[0]
    if m == 0:
        return choice
    groups = np.arange(inst.num_groups)
    width = inst.obj.shape[1]
    bound = inst.limits + slack
    scale = np.maximum(np.abs(inst.rows).max(axis=(1, 2)), 1e-300)
    weight = np.where(lam > 0, lam, 0.0) + 1e-12 / scale
    for _ in range(max_rounds):
        total = totals_of(inst, choice)
        room = bound - total  # >= 0
        delta_obj = (inst.obj - inst.obj[groups, choice][:, None]).ravel()
        delta_rows = (inst.rows - inst.rows[:, groups, choice][:, :, None]).reshape(m, -1)
        valid = np.isfinite(delta_obj)
        gain_idx = np.flatnonzero(valid & (delta_obj < 0))
        if len(gain_idx) == 0:
            break
        gain_idx = gain_idx[np.argsort(delta_obj[gain_idx])[:max_candidates]]
        freed = -(weight @ delta_rows)
        free_cost = np.where(valid, delta_obj, np.inf)
        ratio = np.where(freed > 0, free_cost / np.maximum(freed, 1e-300), np.inf)
        free_idx = np.flatnonzero(np.isfinite(ratio))
        if len(free_idx) == 0:
            break
        free_idx = free_idx[np.argsort(ratio[free_idx])[:max_candidates]]
        pair_obj = delta_obj[gain_idx][:, None] + delta_obj[free_idx][None, :]
        pair_rows = delta_rows[:, gain_idx][:, :, None] + delta_rows[:, free_idx][:, None, :]
        ok = (pair_rows <= room[:, None, None]).all(axis=0)
        ok &= (gain_idx // width)[:, None] != (free_idx // width)[None, :]
        pair_obj = np.where(ok, pair_obj, 0.0)
        best = int(np.argmin(pair_obj))
        if not pair_obj.flat[best] < 0:
            break
        a, b = divmod(best, len(free_idx))
        for flat in (gain_idx[a], free_idx[b]):
            g, k = divmod(int(flat), width)
            choice[g] = k
        choice = improve(inst, choice, slack)
    return choice


def repair(
    inst: Instance, choice: np.ndarray, slack: np.ndarray, max_moves: int = 10_000
) -> np.ndarray | None:
    """Make ``choice`` feasible by the moves that cost the least objective per
    unit of (scaled) budget overrun removed; ``None`` if it gets stuck."""
    choice = choice.copy()
    groups = np.arange(inst.num_groups)
    width = inst.obj.shape[1]
    bound = inst.limits + slack
    scale = np.maximum(np.abs(inst.rows).max(axis=2).sum(axis=1), 1e-300)
    total = totals_of(inst, choice)
    for _ in range(max_moves):
        over = np.maximum(total - bound, 0.0) / scale
        if not (over > 0).any():
            return choice
        current = inst.rows[:, groups, choice]
        new_total = total[:, None, None] + inst.rows - current[:, :, None]  # [m, G, K]
        new_over = (np.maximum(new_total - bound[:, None, None], 0.0) / scale[:, None, None]).sum(
            axis=0
        )
        removed = over.sum() - new_over
        delta_obj = inst.obj - inst.obj[groups, choice][:, None]
        ratio = np.where(
            removed > 1e-15, np.maximum(delta_obj, 0.0) / np.maximum(removed, 1e-300), np.inf
        )
        ratio = np.where(np.isfinite(inst.obj), ratio - (delta_obj < 0) * 1e300, np.inf)
        best = int(np.argmin(ratio))
        if not np.isfinite(ratio.flat[best]) and ratio.flat[best] > 0:
            return None
        g, k = divmod(best, width)
        total += inst.rows[:, g, k] - inst.rows[:, g, choice[g]]
        choice[g] = k
    return None


def lp_branch_candidates(
    inst: Instance, dual: DualResult, v: np.ndarray, slack: np.ndarray
) -> list[np.ndarray]:
    """For each option of each fractional group of the LP: the Lagrangian
    minimiser with that option forced, repaired and improved. Covers the
    large-layer case where rounding the LP alone lands far from the optimum."""
    base = v.argmin(axis=1)
    out: list[np.ndarray] = []
    for g, parts in sorted(dual.fractional.items())[:6]:
        for k in {k for k, _ in parts} | {int(np.argmin(v[g]))}:
            choice = base.copy()
            choice[g] = k
            fixed = repair(inst, choice, slack)
            if fixed is not None:
                out.append(fixed)
    return out
