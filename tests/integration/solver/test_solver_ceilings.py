"""The time a request asks for bounds the whole call (issue 16, solver ceilings).

A real solver service over loopback gRPC. The acceptance bound is the call's
own gRPC deadline: a Frontier asked for 2 s must answer before a 2.5 s
deadline, on a problem whose frontier takes many times longer unbounded (the
response says the limit cut it short), so the test is not a timing of the
solver but the contract a caller relies on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bitmesh.client import Client
from bitmesh.rpc.server import RunningServer
from bitmesh.rpc.service_main import start_service
from bitmesh.settings import load_settings
from bitmesh.v1 import common_pb2, solver_pb2
from solver_svc.servicer import build
from tests.hard_problems import hard_budgets, hard_problem

pytestmark = pytest.mark.integration

LAYERS, OPTIONS = 150, 24
LIMIT_S, DEADLINE_S = 2.0, 2.5


@pytest.fixture(scope="module")
def solver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Client]]:
    root: Path = tmp_path_factory.mktemp("ceilings")
    settings = load_settings(artifact_root=str(root))
    running = start_service("solver", build, settings, port=0)
    with Client(settings, addresses={"solver": f"127.0.0.1:{running.port}"}) as client:
        yield running, client
    running.stop(1)


def test_a_frontier_with_a_2_s_limit_answers_within_2_5_s(
    solver: tuple[RunningServer, Client],
) -> None:
    _, client = solver
    problem_id = client.register_problem(hard_problem(LAYERS, OPTIONS)).problem_id
    request = solver_pb2.FrontierRequest(
        problem_id=problem_id,
        axis=common_pb2.COST_AXIS_BOPS,
        constraints=hard_budgets(LAYERS, 33, ("size_bytes", "latency_ms")),
        points=50,
        time_limit_s=LIMIT_S,
    )
    try:
        reply = client.stub("solver").Frontier(request, timeout=DEADLINE_S)
    except grpc.RpcError as exc:
        pytest.fail(f"Frontier with a {LIMIT_S} s limit ended {exc.code().name}: {exc.details()}")
    # The problem is big enough that the limit, not the work, ended the trace.
    assert reply.timed_out
    assert 0 < len(reply.points) < 50
    for point in reply.points:  # a point cut short is FEASIBLE with its gap, never OPTIMAL
        assert point.status in (solver_pb2.SOLVE_STATUS_OPTIMAL, solver_pb2.SOLVE_STATUS_FEASIBLE)
        if point.status == solver_pb2.SOLVE_STATUS_FEASIBLE:
            assert point.gap > 0
