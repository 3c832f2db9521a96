"""`bitmesh up` / `bitmesh down`: the whole mesh on loopback.

Four service processes plus one Celery worker. With REDIS_URL set, the worker
and the job stores use that Redis; without it, the embedded default (kombu's
filesystem transport, SQLite job stores) needs no server at all. Default
ports are used when free, else free ones are picked; the addresses go to the
mesh state file so clients find them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bitmesh.client import Client
from bitmesh.errors import FailedPrecondition, Unavailable
from bitmesh.jobs.plumbing import worker_queues_option
from bitmesh.mesh_state import clear_state, read_state, write_state
from bitmesh.settings import SERVICES, ServiceName, Settings

START_TIMEOUT_S = 90.0


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs. A zombie (exited, not yet reaped) does not:
    the mesh's processes are not our children once ``up --detach`` returns,
    so init reaps them, and some inits (a container's or a micro-VM's) reap
    only once a second; ``os.kill(pid, 0)`` alone would count such an exited
    process as running and ``down`` would wait up to a second for nothing."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Linux: the state letter of /proc/<pid>/stat is Z (elsewhere: False)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def running_mesh(settings: Settings) -> dict[str, object] | None:
    """The recorded mesh if its processes are alive."""
    state = read_state(settings)
    if not state:
        return None
    pids = state.get("pids", {})
    if isinstance(pids, dict) and pids and all(_alive(int(p)) for p in pids.values()):
        return state
    return None


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def worker_command(
    hostname: str, *, concurrency: int = 1, pool: str | None = None, loglevel: str = "INFO"
) -> list[str]:
    """The Celery worker command line of the mesh (``bitmesh up``, and the tests
    that start workers): it consumes exactly the declared ``WORKER_QUEUES``,
    as the worker Deployment does, and like it runs without mingle and gossip:
    bitmesh never revokes tasks or reads worker events, and mingle alone
    waits a second at every start for neighbours that do not answer."""
    command = [sys.executable, "-m", "celery", "-A", "trainer_svc.celery_app", "worker"]
    command += [worker_queues_option(), "--concurrency", str(concurrency)]
    if pool is not None:
        command += ["--pool", pool]
    command += ["--without-mingle", "--without-gossip"]
    return [*command, "--loglevel", loglevel, "--hostname", hostname]


def start_mesh(settings: Settings, with_worker: bool = True) -> dict[str, object]:
    """Start every service (and a worker); return the recorded state."""
    existing = running_mesh(settings)
    if existing:
        return existing
    root = Path(settings.artifact_root.removeprefix("file://"))
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BITMESH_ARTIFACT_ROOT": settings.artifact_root}
    if settings.redis_url:
        env["REDIS_URL"] = settings.redis_url
    procs: dict[str, subprocess.Popen[bytes]] = {}
    addresses: dict[str, str] = {}
    log_files: dict[str, Path] = {}
    for service in SERVICES:
        port = settings.port_of(service)
        if not _port_free(settings.host, port):
            port = _free_port(settings.host)
        addresses[service] = f"{settings.host}:{port}"
        log_files[service] = logs / f"{service}.log"
        procs[service] = subprocess.Popen(
            [sys.executable, "-m", f"{service}_svc", "--host", settings.host, "--port", str(port)],
            env=env,
            stdout=log_files[service].open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    if with_worker:
        log_files["worker"] = logs / "worker.log"
        procs["worker"] = subprocess.Popen(
            worker_command(f"bitmesh-{os.getpid()}@%h"),
            env=env,
            stdout=log_files["worker"].open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    state: dict[str, object] = {
        "addresses": addresses,
        "pids": {name: p.pid for name, p in procs.items()},
        "logs": {name: str(p) for name, p in log_files.items()},
        "redis_url": settings.redis_url or "",
        "started": time.time(),
    }
    write_state(settings, state)
    try:
        _wait_serving(settings, addresses, procs, log_files)
    except BaseException:
        stop_mesh(settings)
        raise
    return state


def _wait_serving(
    settings: Settings,
    addresses: dict[str, str],
    procs: dict[str, subprocess.Popen[bytes]],
    log_files: dict[str, Path],
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with Client(settings, addresses=addresses) as client:
        pending: set[ServiceName] = set(SERVICES)
        while pending:
            for service in list(pending):
                if procs[service].poll() is not None:
                    raise FailedPrecondition(
                        f"the {service} service exited while starting:\n{_log_tail(log_files[service])}"
                    )
                if client.health(service, timeout=1.0) == "SERVING":
                    pending.discard(service)
            if pending and time.monotonic() > deadline:
                raise Unavailable(
                    f"services not serving after {START_TIMEOUT_S:.0f} s: {sorted(pending)}"
                )
            if pending:
                time.sleep(0.3)


def stop_mesh(settings: Settings, timeout: float = 30.0) -> list[str]:
    """SIGTERM every recorded process, wait, SIGKILL stragglers; clear the state."""
    state = read_state(settings) or {}
    pids = {str(k): int(v) for k, v in dict(state.get("pids", {})).items()}
    for pid in pids.values():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
        for pid in pids.values():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
    for pid in pids.values():
        if _alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    clear_state(settings)
    return sorted(pids)
