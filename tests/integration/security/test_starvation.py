"""The issue-16 concurrency test: 64 Watch streams plus 64 slow solves.

Real services, each in its own process as deployed (``python -m
<service>_svc``), with their default caps: the sensitivity service with a
running analysis that 64 clients watch, and the solver with 64 solves of a
problem that runs to its time limit, both at once. (In one process with the
test's 128 client threads, all sharing one GIL, a health probe missed its 1 s
deadline in 2 of 4 runs on the loaded 2-core machine.) Health must still answer within 1 s and a new unary call must get
an answer or RESOURCE_EXHAUSTED within its deadline. Both bounds are the
calls' own gRPC deadlines (a probe that misses one ends DEADLINE_EXCEEDED and
fails the test), not a stopwatch. The state is reached by waiting on it: each
watcher has had its first event or its refusal, and the solver's metrics
count all 64 Solve calls taken (in flight or, on a slow machine, over: its
GIL admits them a few per second while the others solve).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bitmesh.rpc.streams import STREAM_CAP_SETTING, stream_cap
from bitmesh.v1 import (
    common_pb2,
    sensitivity_pb2,
    sensitivity_pb2_grpc,
    solver_pb2,
    solver_pb2_grpc,
)
from tests.hard_problems import hard_budgets, hard_problem
from tests.integration.mesh.helpers import ServiceProcess, spawn_service, wait_serving
from tests.integration.security.conftest import free_port, make_settings
from tests.metrics_scrape import metric_sum
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

WATCHERS = SOLVES = 64
HEALTH_DEADLINE_S = 1.0
UNARY_DEADLINE_S = 5.0
SOLVE_LIMIT_S = 5.0
LAYERS, OPTIONS = 300, 32
SERVING = health_pb2.HealthCheckResponse.SERVING
RUNNING = common_pb2.JOB_STATE_RUNNING
SLOW = sensitivity_pb2.StartAnalysisRequest(
    model=common_pb2.ModelRef(architecture="digits_cnn"),
    dataset=common_pb2.DatasetRef(kind=common_pb2.DATASET_KIND_DIGITS, batch_size=64),
    options=[common_pb2.QuantOption(weight=common_pb2.NumericFormat(name="int4"))],
    settings=sensitivity_pb2.EstimatorSettings(
        target_relative_se=0.0001, max_samples=100000, seed=2
    ),
)


@dataclass
class Service:
    """A service in its own process (as deployed: its own GIL) and a channel to it."""

    process: ServiceProcess
    port: int
    health_port: int
    metrics_port: int
    channel: grpc.Channel


def _spawn(name: str, root: Path) -> Service:
    health_port, metrics_port = free_port(), free_port()
    process = spawn_service(
        name,
        str(root / name),
        {
            "BITMESH_HEALTH_PORT": str(health_port),
            "BITMESH_METRICS_PORT": str(metrics_port),
            "BITMESH_LOG_LEVEL": "WARNING",
        },
    )
    started = wait_serving(name, process)
    # Keep reading its output, so a full pipe never blocks the service.
    threading.Thread(target=started.log.extend, args=(process.stdout,), daemon=True).start()
    port = int(started.address.rpartition(":")[2])
    return Service(
        started, port, health_port, metrics_port, grpc.insecure_channel(f"127.0.0.1:{port}")
    )


@pytest.fixture
def services(tmp_path: Path) -> Iterator[dict[str, Service]]:
    started: dict[str, Service] = {}
    try:
        for name in ("sensitivity", "solver"):
            started[name] = _spawn(name, tmp_path)
        yield started
    finally:
        for service in started.values():
            service.channel.close()
            service.process.stop()


def _health(port: int) -> int:
    """Health on the probe port, bound by the acceptance deadline."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        status: int = stub.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_DEADLINE_S).status
        return status


def _answer_or_busy(call: Callable[[], Any]) -> str:
    """ "answer" or "busy" (RESOURCE_EXHAUSTED); any other end fails the test."""
    try:
        call()
    except grpc.RpcError as exc:
        assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, (exc.code(), exc.details())
        return "busy"
    return "answer"


def _solves_taken(metrics_port: int) -> float:
    """Solve calls the server has taken: in flight now plus finished."""
    return metric_sum(
        metrics_port,
        lambda s: (
            s.name in ("bitmesh_rpc_in_flight", "bitmesh_rpc_calls_total")
            and s.labels.get("grpc_method") == "Solve"
        ),
        timeout=30,
    )


def _first_or_refusal(call: Any) -> str:
    """ "served" once a watcher has its first event, else its refusal's code."""
    try:
        next(call)
    except grpc.RpcError as exc:
        assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, (exc.code(), exc.details())
        assert STREAM_CAP_SETTING in (exc.details() or "")
        return "refused"
    return "served"


def test_64_watchers_and_64_slow_solves_starve_neither_health_nor_unary_calls(
    services: dict[str, Service], tmp_path: Path
) -> None:
    sens, solver = services["sensitivity"], services["solver"]
    analyses = sensitivity_pb2_grpc.SensitivityServiceStub(sens.channel)
    solves = solver_pb2_grpc.SolverServiceStub(solver.channel)
    sens_settings = make_settings(tmp_path)  # the services' caps: the same environment

    job = analyses.StartAnalysis(SLOW, timeout=120)
    wait_for(
        lambda: analyses.GetAnalysis(job, timeout=10).status.state == RUNNING,
        60,
        "the analysis to run",
    )
    problem_id = solves.RegisterProblem(
        solver_pb2.RegisterProblemRequest(problem=hard_problem(LAYERS, OPTIONS)), timeout=60
    ).problem_id
    solve = solver_pb2.SolveRequest(
        problem_id=problem_id,
        budgets=hard_budgets(LAYERS, 30, ("size_bytes", "bops", "latency_ms")),
        time_limit_s=SOLVE_LIMIT_S,
    )

    watchers = [analyses.WatchAnalysis(job, timeout=120) for _ in range(WATCHERS)]
    pending: list[Any] = []
    try:
        ends = [_first_or_refusal(w) for w in watchers]
        # Streams take at most their own cap of the server's threads; the one
        # past it is refused at once, naming the setting, never left waiting.
        served = stream_cap(sens_settings.max_concurrent_streams, sens_settings.max_concurrent_rpcs)
        assert ends.count("served") == min(WATCHERS, served)
        assert ends.count("refused") == WATCHERS - min(WATCHERS, served)
        pending = [solves.Solve.future(solve, timeout=120) for _ in range(SOLVES)]
        # Every solve taken by the server (in flight, or already over).
        wait_for(
            lambda: _solves_taken(solver.metrics_port) >= SOLVES, 60, f"{SOLVES} Solve calls taken"
        )

        # Health answers on both probe ports within the acceptance deadline.
        assert _health(sens.health_port) == SERVING
        assert _health(solver.health_port) == SERVING
        # A new unary call gets an answer or RESOURCE_EXHAUSTED within its deadline.
        # The watchers left the sensitivity service threads for it.
        assert _answer_or_busy(lambda: analyses.GetAnalysis(job, timeout=UNARY_DEADLINE_S)) == (
            "answer"
        )
        no_profiles = solver_pb2.ListLatencyProfilesRequest()
        assert _answer_or_busy(
            lambda: solves.ListLatencyProfiles(no_profiles, timeout=UNARY_DEADLINE_S)
        ) in ("answer", "busy")

        analyses.CancelAnalysis(job, timeout=10)
        for watcher, end in zip(watchers, ends, strict=True):
            if end == "served":  # each stream followed the job to its end
                rest = list(watcher)
                assert rest and rest[-1].status.state == common_pb2.JOB_STATE_CANCELLED
        # Every slow solve ended within its limit: its answer (FEASIBLE at
        # the limit), FAILED_PRECONDITION when the limit found none, or
        # RESOURCE_EXHAUSTED when no solve slot freed in time; never lost.
        ends_of_solves = {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED}
        for future in pending:
            try:
                future.result()
            except grpc.RpcError as exc:
                assert exc.code() in ends_of_solves, (exc.code(), exc.details())
    finally:
        for watcher in watchers:
            watcher.cancel()
        for future in pending:
            future.cancel()
    assert _health(sens.health_port) == SERVING and _health(solver.health_port) == SERVING
