"""A trainer mesh for the integration tests: real Redis, real Celery workers.

Each test module gets its own Redis database (``REDIS_DB`` in the module) and
artifact root, a Celery worker process (prefork, concurrency 1, in its own
process group so a test can SIGKILL the whole worker) and an in-process
trainer gRPC service on a free port that the test can stop and restart.
Timeouts are shortened so a killed worker's job is picked up in seconds.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bitmesh.artifacts import ArtifactStore
from bitmesh.cli.up import worker_command
from bitmesh.client import Client
from bitmesh.jobs.plumbing import PING, TRAINER
from bitmesh.jobs.store import RedisJobStore
from bitmesh.rpc.server import RunningServer
from bitmesh.settings import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[3]
WORKER_ENV = {
    "BITMESH_TRAINER_VISIBILITY_TIMEOUT_S": "5",
    "BITMESH_TRAINER_RESTORE_INTERVAL_S": "1",
    "BITMESH_TRAINER_LEASE_TTL_S": "3",
}


def _with_db(url: str, db: int) -> str:
    return re.sub(r"/\d+$", "", url.rstrip("/")) + f"/{db}"


@dataclass
class TrainerMesh:
    redis_url: str
    root: Path
    settings: Settings
    env: dict[str, str]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    service: RunningServer | None = None
    logs: dict[int, Path] = field(default_factory=dict)  # worker pid -> its log

    # -- workers ----------------------------------------------------------------
    def start_worker(self) -> subprocess.Popen[bytes]:
        name = f"w{len(self.workers)}-{uuid.uuid4().hex[:6]}"
        log = (self.root / f"{name}.log").open("wb")
        worker = subprocess.Popen(
            worker_command(f"{name}@%h", pool="prefork"),
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.append(worker)
        self.logs[worker.pid] = self.root / f"{name}.log"
        self._wait_ready(worker)
        return worker

    def running(self, worker: subprocess.Popen[bytes], task: str) -> bool:
        """Whether ``worker`` holds a ``task`` it has not finished, read from
        its log. Why: a worker killed while it idles in BRPOP can take a
        message Redis has already handed it down with it (kombu moves a
        message to its unacked set only after reading it), so a test that
        kills one "mid-run" must wait until it really holds a run."""
        text = self.logs[worker.pid].read_text(errors="replace")
        started = len(re.findall(rf"Task {re.escape(task)}\[[^]]+\] received", text))
        ended = len(
            re.findall(rf"Task {re.escape(task)}\[[^]]+\] (?:succeeded|failed|raised)", text)
        )
        return started > ended

    def _wait_ready(self, worker: subprocess.Popen[bytes]) -> None:
        from trainer_svc.celery_app import make_celery

        app = make_celery(self.settings, discover=False)
        token = uuid.uuid4().hex
        result = app.send_task(PING.task_name, args=[token])
        try:
            assert result.get(timeout=90) == token
        except Exception:
            assert worker.poll() is None, "the worker exited while starting"
            raise

    def kill_worker(self, worker: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Signal the worker's whole process group (main process and pool children)."""
        if worker.poll() is None:
            os.killpg(worker.pid, sig)
        worker.wait(30)

    # -- service ----------------------------------------------------------------
    def start_service(self) -> RunningServer:
        from bitmesh.rpc.service_main import start_service
        from trainer_svc.servicer import build

        self.service = start_service("trainer", build, self.settings, port=0)
        return self.service

    def stop_service(self) -> None:
        if self.service is not None:
            self.service.stop(1)
            self.service = None

    def client(self) -> Client:
        assert self.service is not None
        address = f"127.0.0.1:{self.service.port}"
        unused = "127.0.0.1:1"
        return Client(
            self.settings,
            addresses={
                "trainer": address,
                "sensitivity": unused,
                "solver": unused,
                "proxy_nas": unused,
            },
            timeout=60,
        )

    # -- stores -----------------------------------------------------------------
    def store(self) -> RedisJobStore:
        return RedisJobStore(self.redis_url, prefix=TRAINER.redis_prefix)

    def artifacts(self) -> ArtifactStore:
        return ArtifactStore(str(self.root / "artifacts"))

    def queue_length(self) -> int:
        import redis

        return int(redis.Redis.from_url(self.redis_url).llen(TRAINER.queue_name))

    def stop(self) -> None:
        """End of the module: nothing of its jobs matters any more (the
        database is flushed next), so the workers are killed, all at once,
        instead of each waiting out a warm shutdown (1-2 s apiece)."""
        self.stop_service()
        running = [w for w in self.workers if w.poll() is None]
        for worker in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
        for worker in running:
            worker.wait(30)


def make_mesh(redis_url: str, db: int, root: Path) -> TrainerMesh:
    """A TrainerMesh on an emptied Redis database ``db`` with its artifacts
    under ``root``; workers and the service are started by the caller."""
    import redis

    url = _with_db(redis_url, db)
    redis.Redis.from_url(url).flushdb()
    artifact_root = str(root / "artifacts")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BITMESH_")},
        "REDIS_URL": url,
        "BITMESH_ARTIFACT_ROOT": artifact_root,
        "PYTHONPATH": str(REPO_ROOT),
        **WORKER_ENV,
    }
    settings = load_settings(redis_url=url, artifact_root=artifact_root)
    return TrainerMesh(url, root, settings, env)


@pytest.fixture(scope="module")
def mesh(
    request: pytest.FixtureRequest, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrainerMesh]:
    import redis

    db = int(getattr(request.module, "REDIS_DB", 10))
    trainer = make_mesh(redis_url, db, tmp_path_factory.mktemp("trainer-mesh"))
    url = trainer.redis_url
    trainer.start_worker()
    trainer.start_service()
    try:
        yield trainer
    finally:
        trainer.stop()
        redis.Redis.from_url(url).flushdb()


@pytest.fixture(scope="module")
def pretrained(mesh: TrainerMesh) -> str:
    """A trained full-precision digits_cnn (the teacher, and QAT's start)."""
    from bitmesh.data.datasets import DatasetSpec
    from bitmesh.models.loading import ModelSpec
    from trainer_svc.execute import execute
    from trainer_svc.specs import QatSpec, TrainingRequest, TrainingSettings

    model = ModelSpec(source="architecture", name_or_path="digits_cnn", input_shape=(1, 8, 8))
    outcome = execute(
        TrainingRequest(
            "qat",
            model,
            DatasetSpec(kind="digits"),
            QatSpec(),
            TrainingSettings(steps=300, learning_rate=0.05),
        )
    )
    assert outcome.evaluation.accuracy > 0.95
    path = mesh.root / "digits_fp32.pt"
    path.write_bytes(outcome.weights)
    return str(path)
