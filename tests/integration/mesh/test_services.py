"""All four services start, serve health and reflection, and stop on SIGTERM."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bitmesh.client import Client
from bitmesh.errors import NotFound, Unimplemented
from bitmesh.settings import SERVICES, load_settings
from bitmesh.v1 import proxy_nas_pb2, trainer_pb2
from tests.integration.mesh.helpers import ServiceProcess, spawn_service, wait_serving

pytestmark = pytest.mark.integration

EXPECTED_NAMES = {
    "sensitivity": "bitmesh.v1.SensitivityService",
    "solver": "bitmesh.v1.SolverService",
    "trainer": "bitmesh.v1.TrainerService",
    "proxy_nas": "bitmesh.v1.ProxyNasService",
}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServiceProcess]]:
    root = str(tmp_path_factory.mktemp("artifacts"))
    # All four start at once (their imports overlap), then each is awaited.
    spawned = {name: spawn_service(name, root) for name in SERVICES}
    try:
        procs = {name: wait_serving(name, process) for name, process in spawned.items()}
    except BaseException:
        for process in spawned.values():
            process.kill()
        raise
    yield procs
    for proc in procs.values():
        if proc.process.poll() is None:
            proc.process.kill()


@pytest.mark.parametrize("service", SERVICES)
def test_health_is_serving(mesh: dict[str, ServiceProcess], service: str) -> None:
    with grpc.insecure_channel(mesh[service].address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", EXPECTED_NAMES[service]):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=30)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("service", SERVICES)
def test_reflection_lists_the_service(mesh: dict[str, ServiceProcess], service: str) -> None:
    with grpc.insecure_channel(mesh[service].address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30
        )
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert EXPECTED_NAMES[service] in names
    assert "grpc.health.v1.Health" in names


def _client(mesh: dict[str, ServiceProcess]) -> Client:
    return Client(
        load_settings(), addresses={name: p.address for name, p in mesh.items()}, timeout=60
    )


def test_unknown_jobs_are_not_found(mesh: dict[str, ServiceProcess]) -> None:
    with _client(mesh) as client:
        with pytest.raises(NotFound, match="does not exist"):
            client.get_training("trainer-nope")
        with pytest.raises(NotFound):
            client.get_tuning("proxy-nope")
        with pytest.raises(NotFound):
            list(client.watch_analysis("sensitivity-nope", timeout=60))
        assert len(client.list_training().jobs) == 0  # a fresh store lists nothing


def test_calls_not_landed_say_what_is_missing(mesh: dict[str, ServiceProcess]) -> None:
    with _client(mesh) as client:
        for call, request in (
            (client.start_training, trainer_pb2.StartTrainingRequest()),
            (client.start_tuning, proxy_nas_pb2.StartSearchRequest()),
        ):
            try:
                call(request)
            except Unimplemented as exc:
                assert "lands with the issue" in exc.message
            except Exception as exc:  # the issue landed: then it must reject an empty request
                assert getattr(exc, "status_name", "") in {
                    "INVALID_ARGUMENT",
                    "FAILED_PRECONDITION",
                }, exc


def test_sigterm_stops_each_service_cleanly(mesh: dict[str, ServiceProcess]) -> None:
    for name, proc in mesh.items():
        code = proc.stop(timeout=30)
        rest = proc.process.stdout.read() if proc.process.stdout else ""
        assert code == 0, f"{name} exited {code}:\n{rest}"
        assert '"stopped"' in rest, f"{name} did not log a graceful stop:\n{rest}"
