"""The solver over real gRPC on loopback: register, solve, frontier, what-if, errors."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from bitmesh.client import Client
from bitmesh.errors import FailedPrecondition, InvalidArgument, NotFound
from bitmesh.rpc.service_main import start_service
from bitmesh.settings import load_settings
from bitmesh.v1 import common_pb2, solver_pb2
from solver_svc.servicer import build

pytestmark = pytest.mark.integration

KEYS = ("int2/int8", "int4/int8", "int8/int8")
BITS = (2, 4, 8)


def make_problem(layers: int = 6, seed: int = 0) -> solver_pb2.Problem:
    import random

    rng = random.Random(seed)
    out = []
    for i in range(layers):
        params = rng.randint(1_000, 50_000)
        macs = params * rng.randint(10, 100)
        trace = rng.uniform(0.1, 5.0)
        options = [
            solver_pb2.ProblemOption(
                key=key,
                omega=trace * 4.0 ** (-bits),
                weight_bits=bits,
                costs=common_pb2.LayerCosts(size_bytes=params * bits / 8, bops=macs * bits * 8),
            )
            for key, bits in zip(KEYS, BITS, strict=True)
        ]
        out.append(solver_pb2.ProblemLayer(name=f"layer{i}", parameters=params, options=options))
    return solver_pb2.Problem(layers=out, name="random")


def brute_force(problem: solver_pb2.Problem, max_size: float) -> float:
    best = math.inf
    for choice in itertools.product(range(len(KEYS)), repeat=len(problem.layers)):
        size = sum(
            layer.options[k].costs.size_bytes
            for layer, k in zip(problem.layers, choice, strict=True)
        )
        if size <= max_size:
            best = min(
                best,
                sum(
                    layer.options[k].omega for layer, k in zip(problem.layers, choice, strict=True)
                ),
            )
    return best


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    settings = load_settings(artifact_root=str(tmp_path_factory.mktemp("art")))
    running = start_service("solver", build, settings, port=0)
    with Client(settings, addresses={"solver": f"127.0.0.1:{running.port}"}, timeout=60) as c:
        yield c
    running.stop(1)


def test_solve_is_exact_and_meets_budget(client: Client) -> None:
    problem = make_problem()
    registered = client.register_problem(problem)
    assert registered.problem_id.startswith("p-") and registered.layers == 6
    again = client.register_problem(problem)
    assert again.problem_id == registered.problem_id  # content addressed
    all8 = sum(layer.options[2].costs.size_bytes for layer in problem.layers)
    limit = 0.5 * all8
    solution = client.solve(
        solver_pb2.SolveRequest(
            problem_id=registered.problem_id, budgets=common_pb2.Budgets(max_size_bytes=limit)
        )
    )
    assert solution.status == solver_pb2.SOLVE_STATUS_OPTIMAL
    assert solution.totals.size_bytes <= limit * (1 + 1e-9)
    assert solution.total_omega == pytest.approx(brute_force(problem, limit), rel=1e-9)
    assert {a.layer for a in solution.assignment} == {f"layer{i}" for i in range(6)}
    assert all(a.option.weight.name in {"int2", "int4", "int8"} for a in solution.assignment)


def test_frontier_then_what_if_answers_from_it(client: Client) -> None:
    problem = make_problem(seed=1)
    pid = client.register_problem(problem).problem_id
    traced = client.frontier(
        solver_pb2.FrontierRequest(problem_id=pid, axis=common_pb2.COST_AXIS_BOPS, points=15)
    )
    points = list(traced.points)
    assert len(points) >= 2
    bops = [p.totals.bops for p in points]
    omegas = [p.total_omega for p in points]
    assert bops == sorted(bops)
    assert all(
        a >= b - 1e-12 for a, b in itertools.pairwise(omegas)
    )  # Pareto: more BOPs, less Omega
    answer = client.what_if(pid, common_pb2.Budgets(max_bops=points[-1].totals.bops))
    assert answer.answered_from == "frontier"
    assert answer.total_omega == pytest.approx(points[-1].total_omega)
    between = 0.5 * (points[0].totals.bops + points[1].totals.bops)
    exact = client.solve(
        solver_pb2.SolveRequest(problem_id=pid, budgets=common_pb2.Budgets(max_bops=between))
    )
    assert client.what_if(pid, common_pb2.Budgets(max_bops=between)).total_omega == pytest.approx(
        exact.total_omega
    )


def test_concurrent_what_ifs_on_one_problem_are_each_exact(client: Client) -> None:
    """Solves of one problem run side by side (no per-problem lock): eight
    callers at once, size and BOPs limits both moving (exact solves, not
    frontier lookups), each answer equal to brute force."""
    problem = make_problem(seed=7)
    pid = client.register_problem(problem).problem_id
    all8 = sum(layer.options[2].costs.size_bytes for layer in problem.layers)
    all8_bops = sum(layer.options[2].costs.bops for layer in problem.layers)
    limits = [(all8 * (0.3 + 0.05 * i), all8_bops * (2.0 - 0.01 * i)) for i in range(16)]

    def ask(limit: tuple[float, float]) -> float:
        budgets = common_pb2.Budgets(max_size_bytes=limit[0], max_bops=limit[1])
        return client.what_if(pid, budgets).total_omega

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, limits))
    # The BOPs limits are loose (all-INT8 BOPs or more): size alone decides.
    assert answers == pytest.approx([brute_force(problem, size) for size, _ in limits], rel=1e-9)


def test_infeasible_budget_names_the_least_achievable(client: Client) -> None:
    pid = client.register_problem(make_problem(seed=2)).problem_id
    with pytest.raises(FailedPrecondition, match="size") as info:
        client.solve(
            solver_pb2.SolveRequest(problem_id=pid, budgets=common_pb2.Budgets(max_size_bytes=1.0))
        )
    assert "least" in info.value.message


def test_bad_problems_are_invalid_argument(client: Client) -> None:
    nan = make_problem(layers=2)
    nan.layers[0].options[0].omega = float("nan")
    with pytest.raises(InvalidArgument, match="omega"):
        client.register_problem(nan)
    negative = make_problem(layers=2)
    negative.layers[1].options[1].costs.size_bytes = -1
    with pytest.raises(InvalidArgument, match="size_bytes"):
        client.register_problem(negative)
    tied = make_problem(layers=2)
    del tied.layers[1].options[0]
    tied.ties.add(layers=["layer0", "layer1"])
    with pytest.raises(InvalidArgument, match="tie"):
        client.register_problem(tied)


def test_unknown_problem_is_not_found(client: Client) -> None:
    with pytest.raises(NotFound, match="RegisterProblem"):
        client.what_if("p-" + "0" * 32, common_pb2.Budgets(max_bops=1))


def test_latency_profiles_are_listed(client: Client) -> None:
    reply = client.list_latency_profiles()
    names = {p.name for p in reply.profiles}
    assert {"nvidia-t4", "nvidia-a100"} <= names
    assert all(p.source for p in reply.profiles)
