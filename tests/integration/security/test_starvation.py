"""The issue-16 concurrency test: 64 Watch streams plus 64 slow solves.

Real services from the one factory with their default caps: the sensitivity
service with a running analysis that 64 clients watch, and the solver with 64
solves of a problem that runs to its time limit, both at once in this
process. Health must still answer within 1 s and a new unary call must get
an answer or RESOURCE_EXHAUSTED within its deadline. Both bounds are the
calls' own gRPC deadlines (a probe that misses one ends DEADLINE_EXCEEDED and
fails the test), not a stopwatch. The state is reached by waiting on it: each
watcher has had its first event or its refusal, and the solver's metrics
count 64 Solve calls in flight.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from bitmesh.rpc.server import RunningServer
from bitmesh.rpc.service_main import start_service
from bitmesh.rpc.streams import STREAM_CAP_SETTING, stream_cap
from bitmesh.settings import Settings
from bitmesh.v1 import (
    common_pb2,
    sensitivity_pb2,
    sensitivity_pb2_grpc,
    solver_pb2,
    solver_pb2_grpc,
)
from sensitivity_svc.servicer import build as sensitivity_build
from solver_svc.servicer import build as solver_build
from tests.hard_problems import hard_budgets, hard_problem
from tests.integration.security.conftest import free_port, make_settings
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


def _serve(name: str, factory: Any, root: Path) -> tuple[RunningServer, Settings, grpc.Channel]:
    settings = make_settings(root / name, health_port=free_port(), metrics_port=free_port())
    running = start_service(name, factory, settings, port=0)  # type: ignore[arg-type]
    return running, settings, grpc.insecure_channel(f"127.0.0.1:{running.port}")


@pytest.fixture
def services(
    tmp_path: Path,
) -> Iterator[dict[str, tuple[RunningServer, Settings, grpc.Channel]]]:
    started = {
        "sensitivity": _serve("sensitivity", sensitivity_build, tmp_path),
        "solver": _serve("solver", solver_build, tmp_path),
    }
    yield started
    for running, _, channel in started.values():
        channel.close()
        running.stop(1)


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
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in ("bitmesh_rpc_in_flight", "bitmesh_rpc_calls_total")
        and s.labels.get("grpc_method") == "Solve"
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
    services: dict[str, tuple[RunningServer, Settings, grpc.Channel]],
) -> None:
    sens, sens_settings, sens_channel = services["sensitivity"]
    solver, _, solver_channel = services["solver"]
    analyses = sensitivity_pb2_grpc.SensitivityServiceStub(sens_channel)
    solves = solver_pb2_grpc.SolverServiceStub(solver_channel)

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
        get = lambda: analyses.GetAnalysis(job, timeout=UNARY_DEADLINE_S)  # noqa: E731
        assert _answer_or_busy(get) == "answer"  # watchers left it a thread
        profiles = lambda: solves.ListLatencyProfiles(  # noqa: E731
            solver_pb2.ListLatencyProfilesRequest(), timeout=UNARY_DEADLINE_S
        )
        assert _answer_or_busy(profiles) in ("answer", "busy")

        analyses.CancelAnalysis(job, timeout=10)
        for watcher, end in zip(watchers, ends, strict=True):
            if end == "served":  # each stream followed the job to its end
                last = list(watcher)[-1:] or [None]
                assert last[0] is None or last[0].status.state in (
                    common_pb2.JOB_STATE_CANCELLED,
                    RUNNING,
                )
        # Every slow solve ended with its answer (FEASIBLE at its limit), or
        # FAILED_PRECONDITION when the limit found none: never a lost call.
        for future in pending:
            try:
                future.result()
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.FAILED_PRECONDITION, exc.details()
    finally:
        for watcher in watchers:
            watcher.cancel()
        for future in pending:
            future.cancel()
    assert _health(sens.health_port) == SERVING and _health(solver.health_port) == SERVING
