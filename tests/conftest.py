"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: $REDIS_URL (scripts/test.sh sets it), else a private server."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    pidfile = REPO_ROOT / ".pytest-redis.pid"
    env = {**os.environ, "BITMESH_REDIS_PIDFILE": str(pidfile)}
    url = subprocess.run(
        [str(REPO_ROOT / "scripts" / "redis.sh")],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    yield url
    server_pidfile = Path(pidfile.read_text().strip())
    if server_pidfile.exists():
        os.kill(int(server_pidfile.read_text().strip()), 15)
    pidfile.unlink(missing_ok=True)


@pytest.fixture
def artifact_root(tmp_path: Path) -> str:
    return str(tmp_path / "artifacts")
