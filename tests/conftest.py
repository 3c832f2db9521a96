"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
_WORKER_REDIS_PIDFILE = "_bitmesh_worker_redis_pidfile"


def _start_private_redis(pidfile: Path) -> str:
    """A redis-server of our own on a free loopback port (scripts/redis.sh)."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["BITMESH_REDIS_PIDFILE"] = str(pidfile)
    return subprocess.run(
        [str(REPO_ROOT / "scripts" / "redis.sh")],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _stop_private_redis(pidfile: Path) -> None:
    if pidfile.exists():
        server_pidfile = Path(pidfile.read_text().strip())
        if server_pidfile.exists():
            os.kill(int(server_pidfile.read_text().strip()), 15)
        pidfile.unlink(missing_ok=True)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker gets its own Redis, set as REDIS_URL for
    the worker and every process it starts. Why: tests flush databases and
    run Celery queues of fixed names; two workers sharing one server would
    consume or delete each other's jobs.

    Each worker, and every service or Celery worker it starts, also runs
    torch on one thread: two workers on two cores each spinning two
    intra-op threads spent most of their time waiting for each other (one
    Hessian test went from 9 s alone to 48 s beside another worker).
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    pidfile = REPO_ROOT / f".pytest-redis-{worker}-{os.getpid()}.pid"
    os.environ["REDIS_URL"] = _start_private_redis(pidfile)
    setattr(config, _WORKER_REDIS_PIDFILE, pidfile)


def pytest_unconfigure(config: pytest.Config) -> None:
    pidfile = getattr(config, _WORKER_REDIS_PIDFILE, None)
    if pidfile is not None:
        _stop_private_redis(pidfile)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: $REDIS_URL (scripts/test.sh sets it), else a private server."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    pidfile = REPO_ROOT / f".pytest-redis-{os.getpid()}.pid"
    yield _start_private_redis(pidfile)
    _stop_private_redis(pidfile)


@pytest.fixture
def artifact_root(tmp_path: Path) -> str:
    return str(tmp_path / "artifacts")
