"""A budget's ``latency_profile`` is a file a caller names: guarded and bounded.

A real solver service that others can reach (a token set), so request paths
are confined to the artifact root; the profile file is read no further than
``BITMESH_SOLVER_MAX_PROFILE_BYTES``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bitmesh.rpc.service_main import start_service
from bitmesh.v1 import common_pb2, solver_pb2, solver_pb2_grpc
from solver_svc.servicer import build
from tests.integration.security.conftest import TOKEN, make_settings

pytestmark = pytest.mark.integration

AUTH = (("authorization", f"Bearer {TOKEN}"),)
MAX_PROFILE_BYTES = 4096
KEYS = ("int4/int8", "int8/int8")


def _problem() -> solver_pb2.Problem:
    layers = []
    for i in range(3):
        options = [
            solver_pb2.ProblemOption(
                key=key,
                omega=1.0 / bits,
                weight_bits=bits,
                option=common_pb2.QuantOption(
                    weight=common_pb2.NumericFormat(name=f"int{bits}"),
                    activation=common_pb2.NumericFormat(name="int8"),
                ),
                costs=common_pb2.LayerCosts(size_bytes=1000 * bits, bops=1e6 * bits * 8),
            )
            for key, bits in zip(KEYS, (4, 8), strict=True)
        ]
        layers.append(solver_pb2.ProblemLayer(name=f"l{i}", parameters=8000, options=options))
    return solver_pb2.Problem(layers=layers, name="profiled")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    (root / "uploads").mkdir()
    table = {"kind": "table", "name": "measured", "source": "a test", "layers": {}}
    table["layers"] = {f"l{i}": {"int4/int8": 1.0, "int8/int8": 2.0} for i in range(3)}
    (root / "uploads" / "measured.json").write_text(json.dumps(table))
    big = dict(table, source="x" * MAX_PROFILE_BYTES)
    (root / "uploads" / "big.json").write_text(json.dumps(big))
    return root


@pytest.fixture(scope="module")
def stub(root: Path) -> Iterator[solver_pb2_grpc.SolverServiceStub]:
    settings = make_settings(root, auth_token=TOKEN, solver_max_profile_bytes=MAX_PROFILE_BYTES)
    running = start_service("solver", build, settings, port=0)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield solver_pb2_grpc.SolverServiceStub(channel)
    channel.close()
    running.stop(1)


def _solve(stub: solver_pb2_grpc.SolverServiceStub, profile: str) -> solver_pb2.Solution:
    request = solver_pb2.SolveRequest(
        problem=_problem(),
        budgets=common_pb2.Budgets(max_latency_ms=4.0, latency_profile=profile),
        time_limit_s=10,
    )
    return stub.Solve(request, metadata=AUTH, timeout=30)  # type: ignore[no-any-return]


def _refusal(stub: solver_pb2_grpc.SolverServiceStub, profile: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        _solve(stub, profile)
    return info.value


def test_an_uploaded_profile_and_a_shipped_name_are_read(
    stub: solver_pb2_grpc.SolverServiceStub,
) -> None:
    # measured.json: 1 ms per int4 layer, 2 ms per int8 layer; 4 ms allows one int8.
    solution = _solve(stub, "measured.json")
    assert solution.totals.latency_ms == pytest.approx(4.0)
    shipped = _solve(stub, "nvidia-t4")  # a name, looked up in the solver's own folder
    assert shipped.totals.latency_ms > 0


@pytest.mark.parametrize(
    "profile,match",
    [
        ("/etc/passwd.json", "escapes the artifact root"),  # not read here: hostile input
        ("../../x.csv", "escapes the artifact root"),  # not read here: hostile input
        ("measured\x00.json", "NUL byte"),
    ],
    ids=["absolute-outside", "dotdot", "nul"],
)
def test_profile_paths_are_guarded(
    stub: solver_pb2_grpc.SolverServiceStub, profile: str, match: str
) -> None:
    error = _refusal(stub, profile)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert match in error.details()


def test_profile_files_over_the_cap_are_refused_unread(
    stub: solver_pb2_grpc.SolverServiceStub,
) -> None:
    error = _refusal(stub, "big.json")
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "BITMESH_SOLVER_MAX_PROFILE_BYTES" in error.details()
    assert f"{MAX_PROFILE_BYTES:,}" in error.details()
