from __future__ import annotations

import math

import pytest

from bitmesh.errors import InvalidArgument
from solver_svc.problem import FixedCosts, LayerChoice, OptionCost, Problem
from tests.unit.solver_svc.helpers import quant_problem

pytestmark = pytest.mark.unit


def _layer(name: str, keys: tuple[str, ...] = ("a", "b")) -> LayerChoice:
    return LayerChoice(
        name=name,
        parameters=10,
        options=tuple(OptionCost(key=k, omega=1.0, size_bytes=1.0, bops=1.0) for k in keys),
    )


@pytest.mark.parametrize("field", ["size_bytes", "bops", "latency_ms", "weight_bits"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0])
def test_bad_costs_are_invalid(field: str, value: float) -> None:
    kwargs = {"key": "a", "omega": 1.0, "size_bytes": 1.0, "bops": 1.0, field: value}
    with pytest.raises(InvalidArgument, match=field):
        OptionCost(**kwargs)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_omega_is_invalid(value: float) -> None:
    with pytest.raises(InvalidArgument, match="omega"):
        OptionCost(key="a", omega=value, size_bytes=1.0, bops=1.0)


def test_negative_omega_is_kept() -> None:
    assert OptionCost(key="a", omega=-2.5, size_bytes=1.0, bops=1.0).omega == -2.5


def test_tie_between_different_option_sets_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="different option sets"):
        Problem(layers=(_layer("x"), _layer("y", ("a", "c"))), ties=(("x", "y"),))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ties": (("x", "nope"),)}, "unknown layer"),
        ({"ties": (("x",),)}, "at least two"),
        ({"pins": (("nope", ("a",)),)}, "unknown layer"),
        ({"pins": (("x", ("zzz",)),)}, "unknown option keys"),
        ({"pins": (("x", ()),)}, "allows no option"),
    ],
)
def test_bad_ties_and_pins(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Problem(layers=(_layer("x"), _layer("y")), **kwargs)


def test_duplicates_are_invalid() -> None:
    with pytest.raises(InvalidArgument, match="appears twice"):
        Problem(layers=(_layer("x"), _layer("x")))
    with pytest.raises(InvalidArgument, match="repeats option keys"):
        _layer("x", ("a", "a"))
    with pytest.raises(InvalidArgument, match="no options"):
        LayerChoice(name="x", parameters=1, options=())


def test_json_round_trip_and_hash() -> None:
    p = quant_problem(5, seed=1)
    p = Problem(
        layers=p.layers,
        fixed=FixedCosts(size_bytes=3.0, bops=2.0, parameters=7, weight_bits=8.0),
        ties=(("layer0", "layer1"),),
        pins=(("layer2", ("w8a8", "w4a8")),),
        name="x",
    )
    q = Problem.from_json(p.to_json())
    assert q == p
    assert q.content_hash() == p.content_hash()
    changed = Problem.from_json({**p.to_json(), "name": "y"})
    assert changed.content_hash() != p.content_hash()


def test_malformed_json_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="malformed"):
        Problem.from_json({"layers": [{"name": "x"}]})
