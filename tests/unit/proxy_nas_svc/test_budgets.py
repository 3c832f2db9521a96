"""The budget path: the solver's problem from the model, and its answer as a configuration."""

from __future__ import annotations

from typing import Any

import pytest

from bitmesh.errors import FailedPrecondition
from bitmesh.formats import parse_option
from bitmesh.models.loading import ModelSpec
from bitmesh.v1 import common_pb2, solver_pb2
from proxy_nas_svc.validate import budget_problem, solve_budgets

pytestmark = pytest.mark.unit

MODEL = ModelSpec(source="architecture", name_or_path="digits_cnn", input_shape=(1, 8, 8))


class FakeSolver:
    """Picks, per layer, the option of least Omega that the test asks for."""

    def __init__(self, status: int = solver_pb2.SOLVE_STATUS_OPTIMAL) -> None:
        self.status = status
        self.seen: list[Any] = []

    def solve(self, request: solver_pb2.SolveRequest) -> solver_pb2.Solution:
        self.seen.append(request)
        return solver_pb2.Solution(
            status=self.status,
            assignment=[
                solver_pb2.Assignment(
                    layer=layer.name, option_key=min(layer.options, key=lambda o: o.omega).key
                )
                for layer in request.problem.layers
            ],
        )


def test_problem_prices_every_layer_and_int8_perturbs_less_than_int4() -> None:
    problem = budget_problem(MODEL, [parse_option("int4"), parse_option("int8")])
    assert [layer.name for layer in problem.layers] == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    for layer in problem.layers:
        int4, int8 = layer.options
        assert int8.omega < int4.omega  # uniform-sensitivity Omega = ||Q(W) - W||^2
        assert int8.costs.size_bytes == pytest.approx(2 * int4.costs.size_bytes)
        assert (int4.weight_bits, int8.weight_bits) == (4, 8)


def test_solved_configuration_and_infeasible_budgets() -> None:
    solver = FakeSolver()
    budgets = common_pb2.Budgets(max_avg_weight_bits=6)
    config = solve_budgets(solver, MODEL, budgets)  # type: ignore[arg-type]
    assert set(config.values()) == {parse_option("int8")}
    assert solver.seen[0].budgets == budgets
    with pytest.raises(FailedPrecondition, match="loosen"):
        solve_budgets(FakeSolver(solver_pb2.SOLVE_STATUS_INFEASIBLE), MODEL, budgets)  # type: ignore[arg-type]
