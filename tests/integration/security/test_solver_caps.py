"""The solver's size caps, one per setting, through a real solver server
(issue 16): layers, options in one layer, options in all, and frontier
points. Each over-cap request is refused RESOURCE_EXHAUSTED at once, naming
the numbers and the setting to raise, and the service still answers
SERVING. The dense-cells cap, checked on the pruned instance, is tested in
``tests/integration/solver/test_solver_ceilings.py``.

The caps are lowered through the settings (the service reads the same
fields from the environment), so the requests stay small: the defaults are
20,000 layers, 256 options per layer, 500,000 options and 1,000 points.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bitmesh.rpc.server import RunningServer
from bitmesh.rpc.service_main import start_service
from bitmesh.v1 import common_pb2, solver_pb2, solver_pb2_grpc
from solver_svc.servicer import build
from tests.integration.security.conftest import make_settings

pytestmark = pytest.mark.integration

CAPS = {
    "solver_max_layers": 50,
    "solver_max_options_per_layer": 8,
    "solver_max_total_options": 120,
    "solver_max_frontier_points": 20,
}


@pytest.fixture(scope="module")
def solver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[grpc.Channel, int]]:
    root: Path = tmp_path_factory.mktemp("solver-caps")
    running: RunningServer = start_service("solver", build, make_settings(root, **CAPS), port=0)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield channel, running.port
    channel.close()
    running.stop(0)


def _problem(layers: int, options: int) -> solver_pb2.Problem:
    msg = solver_pb2.Problem(name=f"caps-{layers}x{options}")
    for i in range(layers):
        layer = msg.layers.add(name=f"l{i}", parameters=100)
        for k in range(options):
            option = layer.options.add(key=f"o{k}", omega=float(options - k), weight_bits=k + 1)
            option.costs.size_bytes = float(k + 1)
    return msg


def _register(problem: solver_pb2.Problem) -> Callable[[solver_pb2_grpc.SolverServiceStub], object]:
    return lambda stub: stub.RegisterProblem(
        solver_pb2.RegisterProblemRequest(problem=problem), timeout=10
    )


def _frontier(points: int) -> Callable[[solver_pb2_grpc.SolverServiceStub], object]:
    def call(stub: solver_pb2_grpc.SolverServiceStub) -> object:
        problem_id = stub.RegisterProblem(
            solver_pb2.RegisterProblemRequest(problem=_problem(4, 3)), timeout=10
        ).problem_id
        return stub.Frontier(
            solver_pb2.FrontierRequest(
                problem_id=problem_id, axis=common_pb2.COST_AXIS_SIZE, points=points
            ),
            timeout=10,
        )

    return call


CASES = [
    pytest.param(_register(_problem(51, 1)), "BITMESH_SOLVER_MAX_LAYERS", "51", id="layers"),
    pytest.param(
        _register(_problem(2, 9)), "BITMESH_SOLVER_MAX_OPTIONS_PER_LAYER", "9", id="options"
    ),
    pytest.param(
        _register(_problem(20, 7)), "BITMESH_SOLVER_MAX_TOTAL_OPTIONS", "140", id="total-options"
    ),
    pytest.param(_frontier(21), "BITMESH_SOLVER_MAX_FRONTIER_POINTS", "21", id="frontier-points"),
]


@pytest.mark.parametrize(("call", "setting", "number"), CASES)
def test_over_a_solver_cap_is_refused_naming_it_and_the_service_serves(
    solver: tuple[grpc.Channel, int],
    call: Callable[[solver_pb2_grpc.SolverServiceStub], object],
    setting: str,
    number: str,
) -> None:
    channel, _ = solver
    with pytest.raises(grpc.RpcError) as caught:
        call(solver_pb2_grpc.SolverServiceStub(channel))
    error = caught.value
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert setting in error.details() and number in error.details(), error.details()
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_at_the_caps_a_problem_is_accepted(solver: tuple[grpc.Channel, int]) -> None:
    """The refusals above are the caps', not any large request's."""
    channel, _ = solver
    stub = solver_pb2_grpc.SolverServiceStub(channel)
    registered = stub.RegisterProblem(
        solver_pb2.RegisterProblemRequest(problem=_problem(15, 8)), timeout=10
    )
    assert registered.layers == 15
    frontier = stub.Frontier(
        solver_pb2.FrontierRequest(
            problem_id=registered.problem_id, axis=common_pb2.COST_AXIS_SIZE, points=20
        ),
        timeout=30,
    )
    assert frontier.points
