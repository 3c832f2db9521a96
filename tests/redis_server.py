"""A redis-server of a test's own, started with the arguments it needs.

Why not the suite's shared private Redis (tests/conftest.py): these tests
start Redis the way a manifest says (``--maxmemory``, ``--requirepass``,
AOF), settings that would change the server under every other test.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.waiting import wait_for


def free_port() -> int:
    """A TCP port free on loopback now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class RedisServer:
    port: int
    password: str | None
    process: subprocess.Popen[bytes]

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"


@contextmanager
def redis_server(
    folder: Path, args: Sequence[str] = (), password: str | None = None
) -> Iterator[RedisServer]:
    """Run ``redis-server <args>`` on a free loopback port with ``folder`` as
    its ``--dir``; stopped (and waited for) on exit."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (scripts/redis.sh installs it)")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [binary, *args, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    command += ["--save", "", "--logfile", str(folder / "redis.log")]
    if password:
        command += ["--requirepass", password]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServer(port, password, process)
    client = redis.Redis.from_url(server.url(), socket_connect_timeout=1)

    def up() -> bool:
        assert process.poll() is None, (folder / "redis.log").read_text()
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False

    try:
        wait_for(up, 20, f"redis-server on port {port}")
        yield server
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
