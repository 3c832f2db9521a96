"""Start real service processes on loopback and find their ports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
_SERVING = re.compile(r"serving on ([\d.]+):(\d+)")


def exited(pid: int) -> bool:
    """Whether process ``pid`` has ended: gone, or a zombie not yet reaped.

    Why the zombie case: `bitmesh up --detach` leaves its processes to init,
    and some inits (a micro-VM's, a container's) reap only once a second, so
    ``os.kill(pid, 0)`` still succeeds for a while after the process exited.
    """
    try:
        os.kill(pid, 0)
    except OSError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen[str]
    address: str
    log: list[str]

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def spawn_service(
    name: str,
    artifact_root: str,
    extra_env: dict[str, str] | None = None,
    python_args: list[str] | None = None,
) -> subprocess.Popen[str]:
    """Start ``python -m <name>_svc`` on a free port; :func:`wait_serving` finds it."""
    env = {
        **os.environ,
        "BITMESH_ARTIFACT_ROOT": artifact_root,
        "PYTHONPATH": str(REPO_ROOT),
        **(extra_env or {}),
    }
    return subprocess.Popen(
        [sys.executable, *(python_args or []), "-m", f"{name}_svc", "--port", "0"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_serving(name: str, process: subprocess.Popen[str]) -> ServiceProcess:
    """Read the service's output until it says where it serves."""
    log: list[str] = []
    deadline = time.monotonic() + 90
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        log.append(line)
        match = _SERVING.search(line)
        if match:
            return ServiceProcess(name, process, f"{match.group(1)}:{match.group(2)}", log)
    process.kill()
    raise AssertionError(f"{name} did not start:\n{''.join(log)}")
