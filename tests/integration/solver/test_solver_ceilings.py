"""The time a request asks for bounds the whole call, and a wide layer is
stored sparse and capped only on the pruned instance (issue 16, solver ceilings).

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
import numpy as np
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


def test_an_infeasible_solve_with_a_2_s_limit_answers_within_3_s(
    solver: tuple[RunningServer, Client],
) -> None:
    """Explaining infeasibility (a least-cost solve per budget under the
    others) shares the call's deadline: it once ran a full limit per budget,
    over 6 s here. The deadline has a second of slack (the Frontier test has
    half): this one failed once at 2.5 s on the 2-core machine under load."""
    _, client = solver
    problem_id = client.register_problem(hard_problem(300, 32)).problem_id
    request = solver_pb2.SolveRequest(
        problem_id=problem_id,
        budgets=hard_budgets(300, 12, ("size_bytes", "bops", "latency_ms")),
        time_limit_s=LIMIT_S,
    )
    with pytest.raises(grpc.RpcError) as caught:
        client.stub("solver").Solve(request, timeout=LIMIT_S + 1.0)
    error = caught.value
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION, error.details()
    details = error.details()
    if "no configuration meets the budgets" in details:
        # Proven infeasible; the explanation was cut by the call's limit.
        assert "not checked: the time limit ended" in details, details
    else:  # on a loaded machine the limit can end before the proof itself
        assert "none was proven impossible" in details, details


def _wide_pb(small: int, wide: int, *, trade_off: bool) -> solver_pb2.Problem:
    """``small`` four-option layers and one of ``wide`` options: on a strict
    Omega/size trade-off (none dominated) or of random costs (a few kept)."""
    rng = np.random.default_rng(16)
    msg = solver_pb2.Problem(name="wide")
    for i in range(small):
        params = int(rng.integers(1_000, 100_000))
        trace = float(rng.lognormal(-6, 1.5))
        layer = msg.layers.add(name=f"l{i}", parameters=params)
        for bits in (2, 4, 6, 8):
            omega = trace * params * 2.0 ** (-2 * bits) * float(rng.lognormal(0, 0.2))
            option = layer.options.add(key=f"w{bits}", omega=omega, weight_bits=bits)
            option.costs.size_bytes = params * bits / 8
    layer = msg.layers.add(name="wide", parameters=1_000)
    for k in range(wide):
        omega = float(wide - k) if trade_off else float(rng.lognormal(0, 1))
        option = layer.options.add(key=f"o{k}", omega=omega)
        option.costs.size_bytes = float(k) if trade_off else float(rng.uniform(250, 1_000))
    return msg


def test_a_wide_layer_is_registered_sparse_and_solved(
    solver: tuple[RunningServer, Client],
) -> None:
    """19,999 layers of 4 options and one of 256 (the most layers a request
    may have; 5 M cells padded) are taken: stored sparse, and the solve sees
    the wide layer's few undominated options."""
    _, client = solver
    msg = _wide_pb(19_999, 256, trade_off=False)
    assert msg.ByteSize() < 4_000_000
    registered = client.register_problem(msg)
    assert registered.options_after_presolve == 19_999 * 4 + 256
    # Four bits a weight on average, about.
    limit = sum(layer.parameters for layer in msg.layers) * 4 / 8
    answer = client.solve(
        solver_pb2.SolveRequest(
            problem_id=registered.problem_id,
            budgets=common_pb2.Budgets(max_size_bytes=limit),
            time_limit_s=60,
        )
    )
    assert answer.status == solver_pb2.SOLVE_STATUS_OPTIMAL
    assert answer.totals.size_bytes <= limit * (1 + 1e-9)


def test_a_wide_layer_that_stays_wide_is_refused_naming_the_dense_cap(
    solver: tuple[RunningServer, Client],
) -> None:
    """Every one of the 256 options is needed (a trade-off), so the instance
    pads 4,001 layers to 256: over the default 1 M dense cells."""
    _, client = solver
    request = solver_pb2.SolveRequest(
        problem=_wide_pb(4_000, 256, trade_off=True),
        budgets=common_pb2.Budgets(max_size_bytes=1e9),
        time_limit_s=10,
    )
    with pytest.raises(grpc.RpcError) as caught:
        client.stub("solver").Solve(request, timeout=30)
    error = caught.value
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert "BITMESH_SOLVER_MAX_DENSE_CELLS" in (error.details() or "")
    assert "1,024,256 dense cells" in (error.details() or "")
