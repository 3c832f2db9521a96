"""Fixtures for the no-job-lost tests: a Redis the test may SIGKILL, and
service processes the test may SIGKILL and start again.

Leases, sweeps and retry windows are shortened through the settings
(``DURABILITY_ENV``) so that a dead runner is noticed in seconds; the
mechanisms are the production ones.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.redis_server import RedisProcess
from tests.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[3]
_SERVING = re.compile(r"serving on ([\d.]+):(\d+)")

DURABILITY_ENV = {
    "BITMESH_JOB_LEASE_SECONDS": "2",
    "BITMESH_SWEEP_SECONDS": "0.5",
    "BITMESH_REQUEUE_AFTER_SECONDS": "3",
    "OMP_NUM_THREADS": "1",
}


@pytest.fixture(scope="module")
def aof_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("aof-redis")).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class ServiceProcess:
    """``python -m <name>_svc`` on a free port, its output in a log file."""

    name: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    address: str = ""

    def start(self) -> ServiceProcess:
        offset = self.log.stat().st_size if self.log.exists() else 0
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"{self.name}_svc", "--port", "0"],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

        def serving() -> str | None:
            assert self.process is not None and self.process.poll() is None, self.text()
            match = _SERVING.search(self.log.read_bytes()[offset:].decode(errors="replace"))
            return f"{match.group(1)}:{match.group(2)}" if match else None

        self.address = wait_for(serving, 90, f"the {self.name} service to serve", poll=0.1)
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, its threads' jobs are orphaned."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()


def service_env(redis_url: str, artifact_root: Path, **extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("BITMESH_")},
        "REDIS_URL": redis_url,
        "BITMESH_ARTIFACT_ROOT": str(artifact_root),
        "PYTHONPATH": str(REPO_ROOT),
        **DURABILITY_ENV,
        **extra,
    }
