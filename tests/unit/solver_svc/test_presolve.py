from __future__ import annotations

import numpy as np
import pytest

from solver_svc.presolve import ROWS, build_instance, dominated_mask, prepare
from solver_svc.problem import FixedCosts, LayerChoice, OptionCost, Problem
from solver_svc.spec import Budgets

pytestmark = pytest.mark.unit


def _opt(key: str, omega: float, size: float, bops: float = 0.0, bits: float = 4.0) -> OptionCost:
    return OptionCost(key=key, omega=omega, size_bytes=size, bops=bops, weight_bits=bits)


def test_ties_merge_into_one_group_with_summed_costs() -> None:
    a = LayerChoice("a", 10, (_opt("p", 1.0, 2.0), _opt("q", 3.0, 4.0)))
    b = LayerChoice("b", 20, (_opt("q", 5.0, 6.0), _opt("p", 7.0, 8.0)))
    c = LayerChoice("c", 30, (_opt("p", 1.0, 1.0), _opt("q", 1.0, 1.0)))
    prepared = prepare(Problem(layers=(a, b, c), ties=(("a", "b"),)))
    assert prepared.members == (("a", "b"), ("c",))
    omega = prepared.values[ROWS.index("omega")]
    size = prepared.values[ROWS.index("size_bytes")]
    # Option "p": a's p + b's p, whatever order b lists its keys in; the
    # options lie flat, group after group.
    assert prepared.keys[0] == ("p", "q")
    assert prepared.offsets.tolist() == [0, 2, 4]
    assert omega[0] == 1.0 + 7.0 and size[1] == 4.0 + 6.0
    assert omega[2:].tolist() == [1.0, 1.0]


def test_pins_of_tied_layers_intersect() -> None:
    a = LayerChoice("a", 1, (_opt("p", 1, 1), _opt("q", 1, 1), _opt("r", 1, 1)))
    b = LayerChoice("b", 1, (_opt("p", 1, 1), _opt("q", 1, 1), _opt("r", 1, 1)))
    prepared = prepare(
        Problem(layers=(a, b), ties=(("a", "b"),), pins=(("a", ("p", "q")), ("b", ("q", "r"))))
    )
    assert prepared.keys == (("q",),)


def test_dominance_keeps_one_of_equal_options_and_drops_dominated() -> None:
    obj = np.array([[1.0, 1.0, 2.0, 0.5]])
    rows = np.array([[[1.0, 1.0, 1.0, 3.0]]])
    valid = np.ones((1, 4), dtype=bool)
    dominated = dominated_mask(obj, rows, valid)
    # 0 and 1 are equal (keep the first), 2 is worse on Omega, 3 trades off.
    assert dominated.tolist() == [[False, True, True, False]]


def test_average_bits_row_counts_fixed_parameters() -> None:
    a = LayerChoice("a", 100, (_opt("p", 1, 1, bits=4), _opt("q", 0, 2, bits=8)))
    problem = Problem(layers=(a,), fixed=FixedCosts(parameters=100, weight_bits=8.0))
    inst = build_instance(prepare(problem), "omega", Budgets(avg_weight_bits=6.0))
    # (100 * b + 100 * 8) / 200 <= 6  <=>  100 * b <= 400.
    assert inst.limits.tolist() == [400.0]
    assert sorted(inst.rows[0, 0][inst.valid[0]].tolist()) == [400.0, 800.0]
