"""The Celery queue is real in both modes: a worker process answers a task."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bitmesh.settings import load_settings
from tests.integration.mesh.helpers import REPO_ROOT

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("queue", ["embedded", "redis"])
def test_worker_round_trip(
    tmp_path: Path, queue: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update({"BITMESH_ARTIFACT_ROOT": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)})
    if queue == "redis":
        env["REDIS_URL"] = redis_url
        monkeypatch.setenv("REDIS_URL", redis_url)
    else:
        monkeypatch.delenv("REDIS_URL", raising=False)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "trainer_svc.celery_app",
            "worker",
            "--concurrency",
            "1",
            "--pool",
            "solo",
            "--loglevel",
            "WARNING",
            "--hostname",
            f"t-{uuid.uuid4().hex[:6]}@%h",
        ],
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
        token = uuid.uuid4().hex
        result = app.send_task("bitmesh.ping", args=[token])
        assert result.get(timeout=60) == token
    finally:
        worker.terminate()
        worker.wait(30)
