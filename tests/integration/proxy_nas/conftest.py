"""A proxy NAS mesh: real Redis, two real Celery workers, the service in process.

Workers are the trainer's (``celery -A trainer_svc.celery_app worker``), which
discover ``proxy_nas_svc.tasks``; the trainer's fixture class starts and
kills them. Redis redelivers a dead worker's run after 5 s (WORKER_ENV).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bitmesh.client import Client
from bitmesh.rpc.server import RunningServer
from tests.integration.trainer.conftest import TrainerMesh, make_mesh

REDIS_DB = 14


@dataclass
class ProxyMesh:
    workers: TrainerMesh
    service: RunningServer

    def client(self) -> Client:
        unused = "127.0.0.1:1"
        return Client(
            self.workers.settings,
            addresses={
                "proxy_nas": f"127.0.0.1:{self.service.port}",
                "trainer": unused,
                "sensitivity": unused,
                "solver": unused,
            },
            timeout=60,
        )


@pytest.fixture(scope="module")
def proxy_mesh(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyMesh]:
    import redis

    from bitmesh.rpc.service_main import start_service
    from proxy_nas_svc.servicer import build

    workers = make_mesh(redis_url, REDIS_DB, tmp_path_factory.mktemp("proxy-mesh"))
    url = workers.redis_url
    service = None
    try:
        workers.start_worker()
        workers.start_worker()
        service = start_service("proxy_nas", build, workers.settings, port=0)
        yield ProxyMesh(workers, service)
    finally:
        if service is not None:
            service.stop(1)
        workers.stop()
        redis.Redis.from_url(url).flushdb()
