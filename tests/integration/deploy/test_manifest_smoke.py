"""The manifests run: every overlay that needs no GPU, started as processes.

Each overlay is rendered with kustomize (as tests/unit/deploy does), every
Deployment's container and the Redis StatefulSet become local processes
with the command, args and environment the manifests give them
(tests/integration/deploy/pods.py says what is translated and why), and a
training job, a sensitivity analysis and a proxy search (its budgets solved
by the solver service) run through them to SUCCEEDED, with TLS and the token
on, as in a cluster. Then the gc CronJob's command runs once and the results
are still there.

A queue, an env name, a port or a command that the manifests and the code
disagree on fails here: a worker on the wrong ``--queues`` never takes the
training job (checked by hand: ``--queues=celery`` fails the training wait),
a port that no ``containerPort`` declares is a port nothing routes to, and a
setting under a name Settings does not read leaves the service on its
defaults (plaintext, no token, SQLite), which the probe and the client see.

Fast on purpose: digits_cnn, a few steps, a few probes.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bitmesh.client import Client
from bitmesh.settings import SERVICES, Settings
from bitmesh.v1 import common_pb2 as c
from bitmesh.v1 import proxy_nas_pb2 as p
from bitmesh.v1 import sensitivity_pb2 as s
from bitmesh.v1 import trainer_pb2 as t
from tests.integration.deploy.pods import (
    Cluster,
    ContainerLauncher,
    Launcher,
    LocalLauncher,
    Pod,
    engine_problem,
    tail,
)
from tests.unit.deploy.manifests import OVERLAYS, render

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

START_TIMEOUT_S = 240.0
JOB_TIMEOUT_S = 300.0
# How long a training job may wait for a worker before the test says why.
PICKUP_TIMEOUT_S = 120.0

MODEL = c.ModelRef(architecture="digits_cnn")
DIGITS = c.DatasetRef(kind=c.DATASET_KIND_DIGITS, batch_size=64)
INT4 = c.QuantOption(weight=c.NumericFormat(name="int4"))
INT8 = c.QuantOption(weight=c.NumericFormat(name="int8"))


@dataclass
class Mesh:
    cluster: Cluster
    launcher: Launcher
    pods: dict[str, Pod]
    processes: dict[str, subprocess.Popen[bytes]]
    logs: dict[str, Path]

    def logs_text(self) -> str:
        return "\n".join(f"--- {name}\n{tail(log)}" for name, log in self.logs.items())

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(
                    f"{name} exited with {process.returncode}:\n{tail(self.logs[name])}"
                )

    def wait(self, condition, timeout: float, what: str, poll: float = 0.5):  # type: ignore[no-untyped-def]
        """Poll ``condition`` until truthy, failing early when a pod died."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.logs_text()}")
            time.sleep(poll)

    def client_settings(self) -> Settings:
        """A client as the services' peers are configured (addresses, CA,
        token, and the client certificate where the overlay has mutual TLS)."""
        env = next(pod.env for pod in self.pods.values() if pod.component in SERVICES)
        files = next(pod.mounts for pod in self.pods.values() if pod.component in SERVICES)

        def local(setting: str) -> str | None:
            """The pod's file named by ``setting``, where it lies here."""
            if setting not in env:
                return None
            folder, _, name = env[setting].rpartition("/")
            return str(files[folder] / name)

        return Settings(
            auth_token=env["BITMESH_AUTH_TOKEN"],
            tls_ca_file=local("BITMESH_TLS_CA_FILE"),
            tls_client_cert_file=local("BITMESH_TLS_CLIENT_CERT_FILE"),
            tls_client_key_file=local("BITMESH_TLS_CLIENT_KEY_FILE"),
            call_timeout_seconds=60,
            **{f"{svc}_address": env[f"BITMESH_{svc.upper()}_ADDRESS"] for svc in SERVICES},  # type: ignore[arg-type]
        )


def _health(port: int, service: str) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _ready(mesh: Mesh, pod: Pod) -> bool:
    """The pod's readiness probe (liveness where it has none), run here."""
    probe = pod.container.get("readinessProbe") or pod.container.get("livenessProbe") or {}
    if "grpc" in probe:
        port = mesh.cluster.port_of(pod.name, int(probe["grpc"]["port"]))
        return _health(port, probe["grpc"].get("service", ""))
    if pod.component == "redis":
        # Its exec probe (redis-cli ping) dials the default port; ask the
        # loopback port the pod was given, with the manifest's password.
        password = pod.env.get("REDISCLI_AUTH")
        client = redis.Redis(port=pod.port(6379), password=password, socket_timeout=2)
        try:
            return bool(client.ping())
        except redis.exceptions.RedisError:
            return False
        finally:
            client.close()
    if "exec" in probe:
        done = mesh.launcher.run(pod, probe["exec"]["command"], timeout=60)
        return done.returncode == 0
    raise AssertionError(f"{pod.name} has no probe to tell that it is ready")


def start_mesh(mesh: Mesh) -> None:
    """Start every pod of ``mesh`` and wait until each is ready; what started
    is in ``mesh.processes`` even when this fails (the caller stops it)."""
    cluster, launcher, pods = mesh.cluster, mesh.launcher, mesh.pods
    # Redis first (what the cluster's Service gives the others), then the rest.
    order = sorted(pods.values(), key=lambda pod: pod.component != "redis")
    for pod in order:
        if pod.component == "redis":
            # The container listens on redis-server's default port, its
            # containerPort; here that is the pod's loopback port.
            pod.argv += ["--port", str(pod.port(6379)), "--bind", "127.0.0.1"]
        log = cluster.root / "logs" / f"{pod.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        mesh.logs[pod.name] = log
        mesh.processes[pod.name] = launcher.start(pod, log)
        if pod.component == "redis":
            mesh.wait(lambda pod=pod: _ready(mesh, pod), START_TIMEOUT_S, f"{pod.name} ready")
    for pod in order:
        mesh.wait(lambda pod=pod: _ready(mesh, pod), START_TIMEOUT_S, f"{pod.name} ready", poll=1)


def stop_mesh(mesh: Mesh) -> None:
    """SIGTERM each pod in the reverse of the start order (Redis last, so
    that no pod's shutdown waits on a broker that is gone)."""
    stuck = []
    for name, process in reversed(mesh.processes.items()):
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            stuck.append(f"{name} did not stop on SIGTERM:\n{tail(mesh.logs[name])}")
    assert not stuck, "\n".join(stuck)


@pytest.fixture(
    params=[pytest.param(("processes", o), id=f"{o}-processes") for o in OVERLAYS]
    + [
        pytest.param(("containers", o), id=f"{o}-containers", marks=pytest.mark.containers)
        for o in OVERLAYS
    ]
)
def mesh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mesh]:
    how, overlay = request.param
    cluster = Cluster(render(overlay), tmp_path)
    missing = cluster.missing()
    if missing:
        pytest.skip(f"overlay {overlay} cannot run on one machine: {'; '.join(missing)}")
    launcher: Launcher = LocalLauncher()
    if how == "containers":
        images = sorted({pod.image for pod in cluster.pods() if ContainerLauncher.handles(pod)})
        problem = engine_problem(images)
        if problem:
            pytest.skip(f"NO IMAGES: {problem}; scripts/images.sh builds them and runs this")
        launcher = ContainerLauncher(tmp_path.name[-12:].replace("_", "-").lower())
    started = Mesh(cluster, launcher, {pod.name: pod for pod in cluster.pods()}, {}, {})
    try:
        start_mesh(started)
        yield started
    finally:
        try:
            stop_mesh(started)
        finally:
            launcher.cleanup()


# -- the jobs -----------------------------------------------------------------
def _training() -> t.StartTrainingRequest:
    return t.StartTrainingRequest(
        model=MODEL,
        dataset=DIGITS,
        qat=t.QatSpec(default_option=INT8),
        training=t.TrainingSettings(steps=6, learning_rate=0.01, seed=1, eval_every=3),
    )


def _analysis() -> s.StartAnalysisRequest:
    return s.StartAnalysisRequest(
        model=MODEL,
        dataset=DIGITS,
        options=[INT4, INT8],
        settings=s.EstimatorSettings(target_relative_se=0.5, max_samples=10, seed=1, num_batches=1),
    )


def _search() -> p.StartSearchRequest:
    return p.StartSearchRequest(
        model=MODEL,
        dataset=DIGITS,
        budgets=c.Budgets(max_avg_weight_bits=6),
        space=[
            p.Hyperparameter(
                name="learning_rate", categorical=p.Categorical(choices=["0.01", "0.05"])
            )
        ],
        trials=2,
        fidelity=[p.Rung(data_fraction=0.1, steps=2)],
        full_fidelity=p.Rung(data_fraction=0.1, steps=2),
        reduction_factor=2,
        parallel_trials=1,
        seed=0,
    )


def _ended(get: Callable[[str], Any], job_id: str) -> Callable[[], Any]:
    """A condition: the job's result once it has ended, else None."""

    def check() -> Any:
        result = get(job_id)
        terminal = (c.JOB_STATE_SUCCEEDED, c.JOB_STATE_FAILED, c.JOB_STATE_CANCELLED)
        return result if result.status.state in terminal else None

    return check


def test_overlay_runs_training_sensitivity_and_proxy_search(mesh: Mesh) -> None:
    with Client(mesh.client_settings()) as client:
        assert set(client.health_all().values()) == {"SERVING"}
        training = client.start_training(_training()).job_id
        analysis = client.start_analysis(_analysis()).job_id
        search = client.start_tuning(_search()).job_id

        mesh.wait(
            lambda: client.get_training(training).status.state != c.JOB_STATE_QUEUED,
            PICKUP_TIMEOUT_S,
            f"a worker to take training job {training} (does the worker's --queues "
            "consume bitmesh/jobs/plumbing.py's WORKER_QUEUES?)",
        )
        results = {
            "training": mesh.wait(
                _ended(client.get_training, training),
                JOB_TIMEOUT_S,
                f"training job {training} to end",
            ),
            "sensitivity": mesh.wait(
                _ended(client.get_analysis, analysis),
                JOB_TIMEOUT_S,
                f"analysis {analysis} to end",
            ),
            "proxy search": mesh.wait(
                _ended(client.get_tuning, search),
                JOB_TIMEOUT_S,
                f"proxy search {search} to end",
            ),
        }
        for what, result in results.items():
            assert result.status.state == c.JOB_STATE_SUCCEEDED, (
                f"{what}: {result.status.error}\n{mesh.logs_text()}"
            )
        assert results["sensitivity"].report.layers
        assert results["proxy search"].config and results["proxy search"].trials
        weights = results["training"].weights
        assert weights.sha256

        # The gc CronJob's command, once: it keeps what the results reference.
        for cron in mesh.cluster.cron_pods():
            done = mesh.launcher.run(cron, cron.argv, timeout=120)
            assert done.returncode == 0, f"{cron.name}: {done.stdout}{done.stderr}"
        assert client.get_training(training).weights.sha256 == weights.sha256
        (artifacts,) = {
            folder
            for pod in mesh.pods.values()
            for path, folder in pod.mounts.items()
            if path == pod.env.get("BITMESH_ARTIFACT_ROOT")
        }
        blob = artifacts / "cas" / weights.sha256[:2] / weights.sha256
        assert blob.is_file(), "gc deleted the weights a stored result references"
