"""A service asked for a taken port: refused, or a free one with ``any_port_if_taken``.

``bitmesh up`` once checked a default port free and then lost it to a
parallel process before its service bound it; the service now decides by
binding, and reports the port it got."""

from __future__ import annotations

import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bitmesh.client import Client
from bitmesh.rpc.server import PortTaken
from bitmesh.rpc.service_main import start_service
from bitmesh.settings import load_settings
from solver_svc.servicer import build
from tests.integration.mesh.helpers import REPO_ROOT

pytestmark = pytest.mark.integration


@pytest.fixture()
def taken_port() -> Iterator[int]:
    """A loopback port held (listening) by this test for its whole length."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def _line_with(proc: subprocess.Popen[str], text: str, timeout: float) -> str:
    """The first line of ``proc``'s output holding ``text``, read in a thread
    so that a service that hangs fails the test instead of hanging it."""
    found: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if text in line:
                found.put(line)
                return

    threading.Thread(target=read, daemon=True).start()
    try:
        return found.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"no line with {text!r} from the service within {timeout:g} s")


def test_taken_port_is_refused_without_the_fallback(tmp_path: Path, taken_port: int) -> None:
    settings = load_settings(artifact_root=str(tmp_path))
    with pytest.raises(PortTaken):
        start_service("solver", build, settings, port=taken_port)


def test_taken_port_falls_back_to_a_free_one(tmp_path: Path, taken_port: int) -> None:
    settings = load_settings(artifact_root=str(tmp_path))
    running = start_service("solver", build, settings, port=taken_port, any_port_if_taken=True)
    try:
        assert running.port not in (0, taken_port)
        with Client(settings, addresses={"solver": f"127.0.0.1:{running.port}"}) as client:
            assert client.health("solver", timeout=5.0) == "SERVING"
    finally:
        running.stop(0)


def test_service_reports_the_port_it_bound(tmp_path: Path, taken_port: int) -> None:
    """The entry point ``bitmesh up`` runs writes the bound port to --port-file."""
    port_file = tmp_path / "solver.port"
    command = [sys.executable, "-m", "solver_svc", "--port", str(taken_port)]
    command += ["--any-port-if-taken", "--port-file", str(port_file)]
    proc = subprocess.Popen(
        [*command, "--artifact-root", str(tmp_path / "art")],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        # Log lines first; "solver serving on HOST:PORT" comes after the port file.
        ready = _line_with(proc, " serving on ", timeout=120)
        reported = int(port_file.read_text())
        assert reported != taken_port
        assert ready.strip().endswith(f":{reported}"), ready
    finally:
        proc.terminate()
        proc.wait(timeout=30)
