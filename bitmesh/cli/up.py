"""`bitmesh up` / `bitmesh down`: the whole mesh on loopback.

Four service processes plus one Celery worker. With REDIS_URL set, the worker
and the job stores use that Redis; without it, the embedded default (kombu's
filesystem transport, SQLite job stores) needs no server at all. Default
ports are used when free, else free ones are picked; the addresses go to the
mesh state file so clients find them. Each service binds its port itself and
reports the port it got (``--port-file``): a port checked free here could be
taken by another process before the service bound it.
"""

from __future__ import annotations

import contextlib
import os
import signal
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
    port_files: dict[ServiceName, Path] = {}
    for service in SERVICES:
        log_files[service] = logs / f"{service}.log"
        port_files[service] = logs / f"{service}.port"
        port_files[service].unlink(missing_ok=True)
        command = [sys.executable, "-m", f"{service}_svc", "--host", settings.host]
        command += ["--port", str(settings.port_of(service)), "--any-port-if-taken"]
        command += ["--port-file", str(port_files[service])]
        procs[service] = subprocess.Popen(
            command,
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
    # Recorded before the services answer, so `down` can stop a failed start.
    write_state(settings, state)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        for service, port in _bound_ports(port_files, procs, log_files, deadline).items():
            addresses[service] = f"{settings.host}:{port}"
        write_state(settings, state)
        _wait_serving(settings, addresses, procs, log_files, deadline)
    except BaseException:
        stop_mesh(settings)
        raise
    return state


def _bound_ports(
    port_files: dict[ServiceName, Path],
    procs: dict[str, subprocess.Popen[bytes]],
    log_files: dict[str, Path],
    deadline: float,
) -> dict[ServiceName, int]:
    """The port each service reports once it has bound one (its port file)."""
    ports: dict[ServiceName, int] = {}
    while len(ports) < len(port_files):
        for service, path in port_files.items():
            if service in ports:
                continue
            with contextlib.suppress(OSError, ValueError):
                ports[service] = int(path.read_text())
                continue
            if procs[service].poll() is not None:
                raise FailedPrecondition(
                    f"the {service} service exited while starting:\n{_log_tail(log_files[service])}"
                )
        if len(ports) < len(port_files):
            if time.monotonic() > deadline:
                missing = sorted(set(port_files) - set(ports))
                raise Unavailable(f"services not bound after {START_TIMEOUT_S:.0f} s: {missing}")
            time.sleep(0.05)
    return ports


def _wait_serving(
    settings: Settings,
    addresses: dict[str, str],
    procs: dict[str, subprocess.Popen[bytes]],
    log_files: dict[str, Path],
    deadline: float,
) -> None:
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
