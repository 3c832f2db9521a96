"""A redis-server a test owns: its own port, AOF on, killed and restarted at will.

Why not the suite's shared server (tests/conftest.py): these tests SIGKILL
Redis mid-job. ``appendfsync everysec`` is what the manifests run, so a
restart loses at most the last second of writes, as in production.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.waiting import wait_for

# Loopback only; no RDB snapshots; the append-only file fsynced every second.
_ARGS = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "everysec")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcess:
    """``start``, ``kill`` (SIGKILL), ``start`` again on the same port and data."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisProcess:
        server = shutil.which("redis-server")
        assert server, "redis-server is not installed (scripts/redis.sh installs it)"
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [server, *_ARGS, "--port", str(self.port), "--dir", str(self.folder)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self.answers, 30, f"redis-server on port {self.port} to answer")
        return self

    def answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.exceptions.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no AOF rewrite; what everysec fsynced stays."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None

    def down_for(self, seconds: float) -> None:
        """Kill now, start again after ``seconds`` (the outage itself, not a wait
        before an assertion)."""
        self.kill()
        time.sleep(seconds)
        self.start()
