"""Answers as messages: the cached encoder gives solution_to_pb's exact message."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bitmesh.v1 import common_pb2, solver_pb2
from solver_svc.convert import SolutionEncoder, solution_to_pb
from solver_svc.problem import LayerChoice, OptionCost, Problem
from solver_svc.solution import Solution, Totals
from solver_svc.solve import ProblemSolver
from solver_svc.spec import Budgets
from tests.unit.solver_svc.helpers import quant_problem

pytestmark = pytest.mark.unit


def _mixed_problem() -> Problem:
    """Options with formats (per channel and per tensor), a key that is a format
    label with no formats given, and a key that is neither."""

    def option(key: str, omega: float, **formats: str) -> OptionCost:
        return OptionCost(
            key=key, omega=omega, size_bytes=omega, bops=omega, latency_ms=omega, **formats
        )

    layers = (
        LayerChoice(
            name="a",
            parameters=10,
            options=(
                option("w4a8", 2.0, weight_format="int4", act_format="int8"),
                option(
                    "pt", 1.0, weight_format="int8", act_format="int8", granularity="per_tensor"
                ),
            ),
        ),
        LayerChoice(name="b", parameters=10, options=(option("int4", 2.0), option("fp16", 1.0))),
        LayerChoice(name="c", parameters=10, options=(option("custom-7", 1.0),)),
    )
    return Problem(layers=layers, name="mixed")


def _answer(assignment: dict[str, str], **changes: object) -> Solution:
    base = Solution(
        status="feasible",
        gap=0.25,
        assignment=assignment,
        total_omega=3.5,
        totals=Totals(size_bytes=1.0, bops=2.0, latency_ms=3.0, scale_bytes=4.0),
        avg_weight_bits=5.5,
        seconds=0.125,
        engine="exact",
        answered_from="frontier",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_the_encoder_gives_solution_to_pbs_message_for_every_kind_of_option() -> None:
    problem = _mixed_problem()
    encoder = SolutionEncoder(problem)
    for assignment in (
        {"a": "w4a8", "b": "int4", "c": "custom-7"},
        {"a": "pt", "b": "fp16", "c": "custom-7"},
        {"c": "custom-7", "a": "pt"},  # order kept as given
        {"a": "not-an-option", "zz": "int8"},  # outside the problem: still reported
    ):
        answer = _answer(assignment)
        expected = solution_to_pb(answer, problem, "p-1")
        for _ in range(2):  # the second time from the cache
            got = encoder.encode(answer, "p-1")
            assert got == expected
            assert encoder.encode_kept(answer, "p-1") == expected
            assert [(a.layer, a.option_key) for a in got.assignment] == list(assignment.items())
    kept = _answer({"a": "pt"})
    assert encoder.encode_kept(kept, "p-1").problem_id == "p-1"
    assert encoder.encode_kept(kept, "p-2").problem_id == "p-2"
    message = encoder.encode(_answer({"a": "pt", "b": "int4"}), "p-2")
    assert message.assignment[0].option.granularity == common_pb2.GRANULARITY_PER_TENSOR
    assert message.assignment[0].option.weight.name == "int8"
    assert message.assignment[1].option.weight.name == "int4"
    assert message.status == solver_pb2.SOLVE_STATUS_FEASIBLE
    assert (message.gap, message.seconds, message.problem_id) == (0.25, 0.125, "p-2")
    assert message.totals.scale_bytes == 4.0


def test_the_encoder_matches_on_solved_answers() -> None:
    problem = quant_problem(12, seed=5)
    solver = ProblemSolver(problem)
    encoder = SolutionEncoder(problem)
    free = solver.solve(Budgets())
    for ratio in (0.3, 0.6, 0.9):
        answer = solver.solve(Budgets(size_bytes=free.totals.size_bytes * ratio))
        assert encoder.encode(answer, "p") == solution_to_pb(answer, problem, "p")
        assert encoder.encode(answer) == solution_to_pb(answer, problem)
