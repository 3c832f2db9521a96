"""A redis-server of a test's own: its own port and folder, started with the
arguments the test needs, killed and started again at will.

Why not the suite's shared private Redis (tests/conftest.py): these tests
start Redis the way a manifest says (``--maxmemory``, ``--requirepass``,
AOF), or SIGKILL it mid-job; either would change the server under every
other test. One module for both uses (there were two, each with its own
``free_port`` and start-up wait).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.waiting import wait_for

# What the manifests run: no RDB snapshots, the append-only file fsynced
# every second, so a SIGKILL loses at most the last second of writes.
AOF_ARGS = ("--save", "", "--appendonly", "yes", "--appendfsync", "everysec")


def free_port() -> int:
    """A TCP port free on loopback now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcess:
    """``start``, ``kill`` (SIGKILL), ``start`` again on the same port and data."""

    def __init__(
        self, folder: Path, args: Sequence[str] = AOF_ARGS, password: str | None = None
    ) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.args = tuple(args)
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisProcess:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (scripts/redis.sh installs it)"
        command = [binary, *self.args, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.folder), "--logfile", str(self.folder / "redis.log")]
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(self._up, 30, f"redis-server on port {self.port} to answer")
        return self

    def _up(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log()
        return self.answers()

    def log(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def answers(self) -> bool:
        client = redis.Redis.from_url(self.url(), socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.exceptions.RedisError:
            return False
        finally:
            client.close()

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
                self.process.wait()
        self.process = None


@contextmanager
def redis_server(
    folder: Path, args: Sequence[str] = (), password: str | None = None
) -> Iterator[RedisProcess]:
    """Run ``redis-server <args>`` (no snapshots) on a free loopback port with
    ``folder`` as its ``--dir``; stopped (and waited for) on exit. Skips the
    test where redis-server is not installed."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/redis.sh installs it)")
    server = RedisProcess(folder, ("--save", "", *args), password).start()
    try:
        yield server
    finally:
        server.stop()
