"""The pipeline tests' mesh: the trainer's (real Redis, a real Celery worker)
plus the other three services in this process, and a client of all four."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bitmesh.client import Client
from bitmesh.rpc.server import RunningServer
from tests.integration.trainer.conftest import TrainerMesh, mesh

__all__ = ["client", "mesh", "services"]


@pytest.fixture(scope="module")
def services(mesh: TrainerMesh) -> Iterator[dict[str, RunningServer]]:
    from bitmesh.rpc.service_main import start_service
    from proxy_nas_svc.servicer import build as build_proxy
    from sensitivity_svc.servicer import build as build_sensitivity
    from solver_svc.servicer import build as build_solver

    started = {
        "sensitivity": start_service("sensitivity", build_sensitivity, mesh.settings, port=0),
        "solver": start_service("solver", build_solver, mesh.settings, port=0),
        "proxy_nas": start_service("proxy_nas", build_proxy, mesh.settings, port=0),
    }
    yield started
    for server in started.values():
        server.stop(1)


@pytest.fixture
def client(mesh: TrainerMesh, services: dict[str, RunningServer]) -> Iterator[Client]:
    assert mesh.service is not None
    addresses = {name: f"127.0.0.1:{s.port}" for name, s in services.items()}
    addresses["trainer"] = f"127.0.0.1:{mesh.service.port}"
    with Client(mesh.settings, addresses=addresses, timeout=120) as c:
        yield c
