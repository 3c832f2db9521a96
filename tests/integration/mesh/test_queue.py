"""The Celery queue is real in both modes: a worker process answers a task
on every queue it is declared to consume (``WORKER_QUEUES``)."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from bitmesh.cli.up import worker_command
from bitmesh.jobs.plumbing import PING, WORKER_QUEUES
from bitmesh.settings import load_settings
from tests.integration.mesh.helpers import REPO_ROOT

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("queue", ["embedded", "redis"])
def test_worker_round_trip(
    tmp_path: Path, queue: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update({"BITMESH_ARTIFACT_ROOT": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)})
    env["BITMESH_TRAINER_WARM_IMPORTS"] = "0"  # pings only: no torch to import
    if queue == "redis":
        env["REDIS_URL"] = redis_url
        monkeypatch.setenv("REDIS_URL", redis_url)
    else:
        monkeypatch.delenv("REDIS_URL", raising=False)
    worker = subprocess.Popen(
        worker_command(f"t-{uuid.uuid4().hex[:6]}@%h", pool="solo", loglevel="WARNING"),
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        from trainer_svc.celery_app import make_celery

        settings = load_settings(artifact_root=str(tmp_path), redis_url=env.get("REDIS_URL"))
        app = make_celery(settings)
        # A ping on each declared queue: the worker `bitmesh up` starts must
        # consume every one of them (training, proxy trials, pings).
        results = {q: app.send_task(PING.task_name, args=[q], queue=q) for q in WORKER_QUEUES}
        assert {q: r.get(timeout=60) for q, r in results.items()} == {q: q for q in WORKER_QUEUES}
    finally:
        worker.terminate()
        worker.wait(30)
