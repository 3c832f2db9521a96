"""Proxy NAS calls the solver as its caller (issue 16, ``bitmesh.rpc.auth.as_caller``).

A budgets search makes proxy NAS call the solver on the caller's behalf;
the solver resolves a budget's ``latency_profile`` in the calling tenant's
files. Over real servers with a token file (alice, bob and the shared
token's ``default``): alice's profile, uploaded into her own uploads only,
is found for alice's search, by its relative name and its absolute path,
and its numbers are the ones solved with; bob naming alice's file gets
exactly the NOT_FOUND of a file that does not exist.

Which part proves the forwarding: alice's search. Proxy NAS's path guard
rewrites her relative name to the real path in her uploads, and the solver
checks that path again against the tenant of the token it is called with:
were proxy NAS to call it with its own (shared) token, the solver would
serve ``default`` and refuse alice's file (checked by breaking
``as_caller`` in proxy_nas_svc/servicer.py: the first test fails with that
NOT_FOUND). Bob's refusal comes at proxy NAS's own door (the same guard),
before any solver call.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bitmesh.rpc.server import RunningServer
from bitmesh.rpc.service_main import start_service
from bitmesh.v1 import common_pb2, proxy_nas_pb2, proxy_nas_pb2_grpc
from tests.integration.security.conftest import TOKEN, make_settings
from tests.integration.security.test_tenants import TOKENS, auth, refusal, same_as_missing

pytestmark = pytest.mark.integration

LAYERS = ("conv1", "conv2", "conv3", "fc1", "fc2")  # digits_cnn's
#: Alice's measured latencies: 1 ms per int4 layer, 2 ms per int8 layer.
LATENCY_MS = {"int4/int4": 1.0, "int8/int8": 2.0}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, RunningServer]]:
    """A solver, then proxy NAS pointed at it, sharing a root and a token file."""
    from proxy_nas_svc.servicer import build as proxy_nas
    from solver_svc.servicer import build as solver

    root = tmp_path_factory.mktemp("forwarding")
    token_file = tmp_path_factory.mktemp("secret") / "tokens"
    token_file.write_text("".join(f"{t}: {k}\n" for t, k in TOKENS.items()))
    settings = make_settings(root, auth_token=TOKEN, token_file=str(token_file))
    started = [start_service("solver", solver, settings, port=0)]
    try:
        peer = settings.model_copy(update={"solver_address": f"127.0.0.1:{started[0].port}"})
        started.append(start_service("proxy_nas", proxy_nas, peer, port=0))
        yield root, started[1]
    finally:
        for running in started:
            running.stop(1)


@pytest.fixture(scope="module")
def alices_profile(mesh: tuple[Path, RunningServer]) -> Path:
    root, _ = mesh
    path = root / "tenants" / "alice" / "uploads" / "measured.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = {
        "kind": "table",
        "name": "alice-measured",
        "source": "alice's own device",
        "layers": {layer: dict(LATENCY_MS) for layer in LAYERS},
    }
    path.write_text(json.dumps(table))
    return path


def _search(profile: str, max_latency_ms: float) -> proxy_nas_pb2.StartSearchRequest:
    return proxy_nas_pb2.StartSearchRequest(
        model=common_pb2.ModelRef(architecture="digits_cnn"),
        dataset=common_pb2.DatasetRef(kind=common_pb2.DATASET_KIND_DIGITS),
        budgets=common_pb2.Budgets(max_latency_ms=max_latency_ms, latency_profile=profile),
        candidates=[
            common_pb2.QuantOption(weight=common_pb2.NumericFormat(name=name))
            for name in ("int4", "int8")
        ],
        space=[
            proxy_nas_pb2.Hyperparameter(
                name="learning_rate", categorical=proxy_nas_pb2.Categorical(choices=["0.02"])
            )
        ],
        trials=1,
        fidelity=[proxy_nas_pb2.Rung(data_fraction=0.25, steps=2)],
    )


def _stub(server: RunningServer) -> Iterator[proxy_nas_pb2_grpc.ProxyNasServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield proxy_nas_pb2_grpc.ProxyNasServiceStub(channel)


@pytest.fixture
def stub(mesh: tuple[Path, RunningServer]) -> Iterator[proxy_nas_pb2_grpc.ProxyNasServiceStub]:
    yield from _stub(mesh[1])


def test_alices_search_solves_with_her_own_profile(
    stub: proxy_nas_pb2_grpc.ProxyNasServiceStub, alices_profile: Path
) -> None:
    for profile in ("measured.json", str(alices_profile)):  # her uploads; the same, absolute
        job = stub.StartSearch(_search(profile, 6.0), metadata=auth("alice"), timeout=120)
        assert job.job_id, profile
        stub.CancelSearch(job, metadata=auth("alice"), timeout=30)
    # Her numbers are the ones solved with: five layers at 1 ms each at best.
    error = refusal(
        stub.StartSearch, _search("measured.json", 4.9), metadata=auth("alice"), timeout=120
    )
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert "no configuration" in error.details()


def test_bob_naming_alices_profile_gets_not_found(
    stub: proxy_nas_pb2_grpc.ProxyNasServiceStub, alices_profile: Path
) -> None:
    absent = str(alices_profile.with_name("absent.json"))
    seen = refusal(
        stub.StartSearch, _search(str(alices_profile), 6.0), metadata=auth("bob"), timeout=120
    )
    unseen = refusal(stub.StartSearch, _search(absent, 6.0), metadata=auth("bob"), timeout=120)
    same_as_missing(seen, str(alices_profile), unseen, absent)
    # Her relative name is his own uploads, where there is no such file.
    mine = refusal(
        stub.StartSearch, _search("measured.json", 6.0), metadata=auth("bob"), timeout=120
    )
    assert mine.code() is grpc.StatusCode.NOT_FOUND, mine.details()
    assert str(alices_profile.parent) not in mine.details()
