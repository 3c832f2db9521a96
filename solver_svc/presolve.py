"""From a ``Problem`` to the arrays the engines solve, with the cheap reductions.

Two steps, each a pure function:

1. ``prepare(problem)`` once per problem: ties become one group (a
   "super-layer" whose option costs are the sums over its members, so the
   multiple-choice structure survives), pins cut a group's options, and every
   cost lands in one ``[rows, groups, options]`` float64 array (padding marked
   invalid). Frontier sweeps and what-if queries reuse it.
2. ``build_instance(prepared, objective, budgets)`` per request: picks the
   objective row and the constrained rows, subtracts the fixed costs from the
   limits and removes options dominated on every axis that matters for *this*
   request (objective and constrained rows): an option no better anywhere than
   another of its group can never be needed by an optimum.

The average-weight-bits budget is linear once multiplied out:
``sum_l P_l b_w(l) + P_fixed b_fixed <= bits * (sum_l P_l + P_fixed)`` over the
searched and the fixed layers, so its row holds ``P_l * b_w`` per option.

What the size and bits budgets count follows ``Problem.size_accounting``: by
default the ``size_bytes`` row is codes plus scales and the bits row adds
``8 * scale_bytes``; with ``"weights_only"`` both leave the scales out. The
``code_bytes`` and ``scale_bytes`` rows keep the two parts for the totals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitmesh.errors import InvalidArgument
from solver_svc.problem import Problem
from solver_svc.spec import Budgets, check_objective

__all__ = [
    "ROWS",
    "Instance",
    "PreparedProblem",
    "build_instance",
    "dominated_mask",
    "limits_for",
    "prepare",
]

#: Row order of ``PreparedProblem.values``.
ROWS: tuple[str, ...] = (
    "size_bytes",
    "bops",
    "latency_ms",
    "wbits",
    "omega",
    "scale_bytes",
    "code_bytes",
)
_ROW = {name: i for i, name in enumerate(ROWS)}
#: Budget axis -> row it constrains.
_AXIS_ROW = {
    "size_bytes": "size_bytes",
    "bops": "bops",
    "latency_ms": "latency_ms",
    "avg_weight_bits": "wbits",
    "omega": "omega",
}


@dataclass(frozen=True, eq=False)
class PreparedProblem:
    """A problem with ties merged and pins applied, as arrays.

    ``values[r, g, k]`` is row ``ROWS[r]`` of option ``k`` of group ``g`` (0 for
    padding); ``valid[g, k]`` marks real options; ``keys[g][k]`` their keys;
    ``members[g]`` the layer names that take group ``g``'s option.
    ``fixed[r]`` is the fixed layers' part of each row.
    """

    problem: Problem
    members: tuple[tuple[str, ...], ...]
    keys: tuple[tuple[str, ...], ...]
    values: np.ndarray
    valid: np.ndarray
    fixed: np.ndarray
    total_parameters: float

    @property
    def num_groups(self) -> int:
        return len(self.members)

    @property
    def num_options(self) -> int:
        return int(self.valid.sum())


@dataclass(frozen=True, eq=False)
class Instance:
    """One multiple-choice knapsack: minimise ``sum obj[g, x_g]`` subject to
    ``sum rows[i, g, x_g] <= limits[i]`` for every row ``i``.

    ``obj`` is ``+inf`` at invalid entries and ``rows`` 0 there;
    ``option_index[g, k]`` maps back to the prepared option (-1 for padding).
    ``obj_offset`` is added to ``sum obj`` to give the reported objective.
    """

    obj: np.ndarray
    rows: np.ndarray
    limits: np.ndarray
    row_axes: tuple[str, ...]
    option_index: np.ndarray
    valid: np.ndarray
    obj_offset: float
    objective: str

    @property
    def num_groups(self) -> int:
        return int(self.obj.shape[0])

    def with_limits(self, limits: np.ndarray) -> Instance:
        return Instance(
            obj=self.obj,
            rows=self.rows,
            limits=np.asarray(limits, dtype=np.float64),
            row_axes=self.row_axes,
            option_index=self.option_index,
            valid=self.valid,
            obj_offset=self.obj_offset,
            objective=self.objective,
        )


def _groups(problem: Problem) -> list[list[int]]:
    """Union-find over ties: overlapping ties collapse into one group."""
    index = {layer.name: i for i, layer in enumerate(problem.layers)}
    parent = list(range(len(problem.layers)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for tie in problem.ties:
        root = find(index[tie[0]])
        for name in tie[1:]:
            other = find(index[name])
            if other != root:
                parent[other] = root
    groups: dict[int, list[int]] = {}
    for i in range(len(problem.layers)):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def prepare(problem: Problem) -> PreparedProblem:
    """Merge ties, apply pins and lay the costs out as arrays (see module doc)."""
    pins = problem.pin_map()
    groups = _groups(problem)
    members: list[tuple[str, ...]] = []
    keys: list[tuple[str, ...]] = []
    for group in groups:
        layers = [problem.layers[i] for i in group]
        allowed = list(layers[0].keys)
        for layer in layers:
            if layer.name in pins:
                pinned = set(pins[layer.name])
                allowed = [k for k in allowed if k in pinned]
        if not allowed:
            names = [layer.name for layer in layers]
            raise InvalidArgument(f"the pins of tied layers {names} leave no option they all allow")
        members.append(tuple(layer.name for layer in layers))
        keys.append(tuple(allowed))
    num_groups = len(groups)
    width = max(len(k) for k in keys)
    valid = np.zeros((num_groups, width), dtype=bool)
    # Plain Python floats first, one array at the end: element-wise numpy
    # writes made this the largest part of a 54-layer solve's set-up.
    cells: list[tuple[float, float, float, float, float, float, float]] = []
    # The share of the scales in the budgeted rows (0 for weights-only budgets).
    share = 1.0 if problem.size_accounting == "weights_and_scales" else 0.0
    at_g: list[int] = []
    at_k: list[int] = []
    for g, group in enumerate(groups):
        for member in group:
            layer = problem.layers[member]
            by_key = {o.key: o for o in layer.options}
            p = layer.parameters
            for k, key in enumerate(keys[g]):
                o = by_key[key]
                cells.append(
                    (
                        o.size_bytes + share * o.scale_bytes,
                        o.bops,
                        o.latency_ms,
                        p * o.weight_bits + share * 8 * o.scale_bytes,
                        o.omega,
                        o.scale_bytes,
                        o.size_bytes,
                    )
                )
                at_g.append(g)
                at_k.append(k)
        valid[g, : len(keys[g])] = True
    by_cell = np.zeros((num_groups, width, len(ROWS)), dtype=np.float64)
    # Tied members add up (``np.add.at`` accumulates repeated cells).
    np.add.at(by_cell, (np.asarray(at_g), np.asarray(at_k)), np.asarray(cells, dtype=np.float64))
    values = np.ascontiguousarray(by_cell.transpose(2, 0, 1))
    f = problem.fixed
    fixed = np.array(
        [
            f.size_bytes + share * f.scale_bytes,
            f.bops,
            f.latency_ms,
            f.parameters * f.weight_bits + share * 8 * f.scale_bytes,
            0.0,
            f.scale_bytes,
            f.size_bytes,
        ],
        dtype=np.float64,
    )
    total_parameters = float(sum(layer.parameters for layer in problem.layers) + f.parameters)
    return PreparedProblem(
        problem=problem,
        members=tuple(members),
        keys=tuple(keys),
        values=values,
        valid=valid,
        fixed=fixed,
        total_parameters=total_parameters,
    )


def dominated_mask(obj: np.ndarray, rows: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``True`` where an option is dominated within its group.

    Option ``i`` is dominated by ``j`` when ``j`` is no worse on the objective
    and on every row, and either strictly better somewhere or equal everywhere
    with a lower index (so exactly one of a set of identical options stays).
    Invalid entries count as dominated. Works in chunks of groups to bound
    memory at ``groups * options^2``.
    """
    num_groups, width = obj.shape
    stacked = np.concatenate([obj[None], rows], axis=0)  # [m+1, G, K]
    out = ~valid.copy()
    chunk = max(1, int(4_000_000 // max(1, width * width * stacked.shape[0])))
    lower = np.tril(np.ones((width, width), dtype=bool), k=-1)  # [i, j]: j < i
    for start in range(0, num_groups, chunk):
        s = stacked[:, start : start + chunk]  # [m+1, c, K]
        v = valid[start : start + chunk]
        a_i = s[:, :, :, None]  # option i
        a_j = s[:, :, None, :]  # candidate dominator j
        no_worse = (a_j <= a_i).all(axis=0)
        strictly = (a_j < a_i).any(axis=0)
        dom = no_worse & (strictly | lower[None]) & v[:, None, :] & v[:, :, None]
        out[start : start + chunk] |= dom.any(axis=2)
    return out


def _axis_coefficients(prepared: PreparedProblem, axis: str) -> tuple[np.ndarray, float, float]:
    """(coefficients [G, K], fixed part, divisor) of an axis's total."""
    row = _ROW[_AXIS_ROW[axis]]
    if axis == "avg_weight_bits":
        if prepared.total_parameters <= 0:
            raise InvalidArgument(
                "the average-weight-bits axis needs parameter counts; every layer has 0 parameters"
            )
        return prepared.values[row], float(prepared.fixed[row]), prepared.total_parameters
    return prepared.values[row], float(prepared.fixed[row]), 1.0


def limits_for(prepared: PreparedProblem, budgets: Budgets) -> np.ndarray:
    """The rows' limits (fixed parts subtracted) in ``budgets.items()`` order."""
    out = []
    for axis, limit in budgets.items():
        _, fixed_part, div = _axis_coefficients(prepared, axis)
        out.append(limit * div - fixed_part)
    return np.asarray(out, dtype=np.float64)


def build_instance(
    prepared: PreparedProblem, objective: str, budgets: Budgets, *, prune: bool = True
) -> Instance:
    """The knapsack for one request (see the module doc)."""
    check_objective(objective)
    coeff, offset, divisor = _axis_coefficients(prepared, objective)
    obj = coeff / divisor
    obj_offset = offset / divisor
    row_axes: list[str] = []
    row_list: list[np.ndarray] = []
    limits: list[float] = []
    for axis, limit in budgets.items():
        c, fixed_part, div = _axis_coefficients(prepared, axis)
        row_axes.append(axis)
        row_list.append(c)
        limits.append(limit * div - fixed_part)
    valid = prepared.valid
    num_groups, width = valid.shape
    rows = np.stack(row_list) if row_list else np.zeros((0, num_groups, width))
    obj = np.where(valid, obj, np.inf)
    keep = ~dominated_mask(np.where(valid, obj, 0.0), rows, valid) if prune else valid.copy()
    counts = keep.sum(axis=1)
    new_width = int(counts.max())
    order = np.argsort(~keep, axis=1, kind="stable")[:, :new_width]
    new_valid = np.take_along_axis(keep, order, axis=1)
    new_obj = np.where(new_valid, np.take_along_axis(obj, order, axis=1), np.inf)
    new_rows = (
        np.where(
            new_valid[None],
            np.take_along_axis(rows, np.broadcast_to(order, rows.shape[:1] + order.shape), axis=2),
            0.0,
        )
        if rows.shape[0]
        else np.zeros((0, num_groups, new_width))
    )
    option_index = np.where(new_valid, order, -1)
    return Instance(
        obj=new_obj,
        rows=new_rows,
        limits=np.asarray(limits, dtype=np.float64),
        row_axes=tuple(row_axes),
        option_index=option_index,
        valid=new_valid,
        obj_offset=obj_offset,
        objective=objective,
    )
