"""Chaos benchmark: no job lost while workers, Redis and services die.

A mesh of real processes on loopback (a Redis with AOF ``appendfsync
everysec`` of its own, two Celery workers, the trainer, sensitivity and proxy
NAS services) takes a stream of jobs of every kind (training, sensitivity
analyses, proxy searches) while the benchmark, one disruption at a time:

1. SIGKILLs the worker process group running a training job, and starts a
   new worker;
2. SIGKILLs Redis and starts it again (AOF) a few seconds later;
3. SIGKILLs and restarts each service once (trainer, sensitivity, proxy NAS).

Then it waits for every job to end and reads the job stores:

- ``jobs_lost``: submitted jobs with no record or not terminal at the end;
- ``duplicate_results``: jobs whose event stream carries more than one
  terminal event;
- ``stuck_running``: jobs still RUNNING at the end;
- ``p99_recovery_s``: for each disruption, the time from its start until
  every job open at that moment has been written again (progress or end),
  the 99th percentile over disruptions.

A proxy search whose service is killed ends FAILED with the reason (by
design: its halving state lived in the dead coordinator), so
``jobs_succeeded`` may be below ``jobs_submitted`` with ``jobs_lost=0``; each
failure's reason is printed. Leases, sweeps and windows are shortened
through the settings (as the integration tests do) so the run takes a few
minutes; the mechanisms are the production ones. Timings vary with the
machine (METHODS.md section 11).

    .venv/bin/python benchmarks/bench_chaos.py [--jobs 2] [--steps 300]

The last line is ``RESULT jobs_submitted=... jobs_succeeded=... jobs_lost=0
duplicate_results=0 stuck_running=0 p99_recovery_s=...``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bitmesh.cli.up import worker_command  # noqa: E402
from bitmesh.client import Client  # noqa: E402
from bitmesh.errors import BitmeshError  # noqa: E402
from bitmesh.jobs.plumbing import PROXY_NAS, SENSITIVITY, TRAINER  # noqa: E402
from bitmesh.jobs.records import JobState  # noqa: E402
from bitmesh.jobs.store import RedisJobStore  # noqa: E402
from bitmesh.settings import load_settings  # noqa: E402
from bitmesh.v1 import common_pb2 as c  # noqa: E402
from bitmesh.v1 import proxy_nas_pb2 as p  # noqa: E402
from bitmesh.v1 import sensitivity_pb2 as s  # noqa: E402
from bitmesh.v1 import trainer_pb2 as t  # noqa: E402
from tests.integration.durability.conftest import ServiceProcess, service_env  # noqa: E402
from tests.redis_server import RedisProcess  # noqa: E402

CHAOS_ENV = {
    "BITMESH_STORE_RETRY_SECONDS": "60",
    "BITMESH_TRAINER_LEASE_TTL_S": "3",
    "BITMESH_TRAINER_VISIBILITY_TIMEOUT_S": "10",
    "BITMESH_TRAINER_RESTORE_INTERVAL_S": "1",
    "BITMESH_MAX_CONCURRENT_JOBS": "8",
}
STORES = {"training": TRAINER, "sensitivity": SENSITIVITY, "proxy": PROXY_NAS}
SERVICES = ("trainer", "sensitivity", "proxy_nas")


def _training(steps: int, seed: int) -> t.StartTrainingRequest:
    return t.StartTrainingRequest(
        model=c.ModelRef(architecture="digits_cnn"),
        dataset=c.DatasetRef(kind=c.DATASET_KIND_DIGITS),
        qat=t.QatSpec(default_option=c.QuantOption(weight=c.NumericFormat(name="int8"))),
        training=t.TrainingSettings(
            steps=steps, checkpoint_every=20, learning_rate=0.05, seed=seed
        ),
    )


def _analysis(seed: int) -> s.StartAnalysisRequest:
    return s.StartAnalysisRequest(
        model=c.ModelRef(architecture="digits_cnn"),
        dataset=c.DatasetRef(kind=c.DATASET_KIND_DIGITS, batch_size=64),
        options=[c.QuantOption(weight=c.NumericFormat(name="int4"))],
        settings=s.EstimatorSettings(
            target_relative_se=1e-6, max_samples=200, seed=seed, num_batches=1
        ),
    )


def _search(seed: int) -> p.StartSearchRequest:
    return p.StartSearchRequest(
        model=c.ModelRef(architecture="digits_cnn"),
        dataset=c.DatasetRef(kind=c.DATASET_KIND_DIGITS),
        default_option=c.QuantOption(weight=c.NumericFormat(name="int8")),
        space=[
            p.Hyperparameter(
                name="learning_rate", categorical=p.Categorical(choices=["0.002", "0.02", "0.2"])
            )
        ],
        trials=2,
        fidelity=[p.Rung(data_fraction=0.25, steps=10)],
        full_fidelity=p.Rung(data_fraction=1.0, steps=20),
        reduction_factor=2,
        parallel_trials=1,
        sampler="random",
        seed=seed,
    )


@dataclass
class Mesh:
    root: Path
    redis: RedisProcess
    env: dict[str, str]
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    worker_logs: dict[int, Path] = field(default_factory=dict)

    def start_worker(self) -> subprocess.Popen[bytes]:
        name = f"chaos{len(self.workers)}-{uuid.uuid4().hex[:6]}"
        log = self.root / f"{name}.log"
        worker = subprocess.Popen(
            worker_command(f"{name}@%h", pool="prefork"),
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.append(worker)
        self.worker_logs[worker.pid] = log
        return worker

    def kill_worker(self, worker: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(30)

    def client(self) -> Client:
        settings = load_settings(
            redis_url=self.env["REDIS_URL"], artifact_root=self.env["BITMESH_ARTIFACT_ROOT"]
        )
        unused = "127.0.0.1:1"
        addresses = {"solver": unused}
        for name, service in self.services.items():
            addresses[name] = service.address or unused
        return Client(settings, addresses=addresses, timeout=30)

    def stop(self) -> None:
        for service in self.services.values():
            service.kill()
        for worker in self.workers:
            if worker.poll() is None:
                self.kill_worker(worker)
        self.redis.stop()


def _retrying(call: Callable[[], str], deadline: float) -> str | None:
    """Submit through outages: UNAVAILABLE (and a full cap) are retried."""
    while time.monotonic() < deadline:
        try:
            return call()
        except BitmeshError as exc:
            if exc.status_name not in ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "INTERNAL"):
                raise
        except Exception:  # a service being restarted: connection refused
            pass
        time.sleep(0.5)
    return None


@dataclass
class Submitted:
    kind: str
    job_id: str


class Stream:
    """Submits a job of every kind every ``gap_s`` until ``stop`` (or ``jobs``
    rounds), so every disruption meets running work."""

    def __init__(self, mesh: Mesh, jobs: int, steps: int, deadline: float) -> None:
        self.mesh, self.jobs, self.steps, self.deadline = mesh, jobs, steps, deadline
        self.submitted: list[Submitted] = []
        self.stop = threading.Event()
        self.done = threading.Event()
        self.lock = threading.Lock()

    def run(self, gap_s: float) -> None:
        for i in range(self.jobs):
            if self.stop.is_set():
                break
            for kind, submit in (
                ("training", lambda cl, i=i: cl.start_training(_training(self.steps, i)).job_id),
                ("sensitivity", lambda cl, i=i: cl.start_analysis(_analysis(i)).job_id),
                ("proxy", lambda cl, i=i: cl.start_tuning(_search(i)).job_id),
            ):

                def call(submit: Callable[[Client], str] = submit) -> str:
                    with self.mesh.client() as client:
                        return submit(client)

                job_id = _retrying(call, self.deadline)
                if job_id is not None:
                    with self.lock:
                        self.submitted.append(Submitted(kind, job_id))
            self.stop.wait(gap_s)
        self.done.set()


def _stores(mesh: Mesh) -> dict[str, RedisJobStore]:
    return {
        kind: RedisJobStore(mesh.env["REDIS_URL"], prefix=plumbing.redis_prefix)
        for kind, plumbing in STORES.items()
    }


def _open_jobs(
    mesh: Mesh, stream: Stream, running_only: bool = False, kinds: tuple[str, ...] = ()
) -> dict[str, float]:
    """job id -> last update, for the submitted jobs (of ``kinds``, all when
    empty) not terminal (or RUNNING) now."""
    stores = _stores(mesh)
    with stream.lock:
        submitted = [j for j in stream.submitted if not kinds or j.kind in kinds]
    out = {}
    for job in submitted:
        with contextlib.suppress(Exception):
            record = stores[job.kind].get(job.job_id)
            wanted = record.state is JobState.RUNNING if running_only else True
            if wanted and not record.state.terminal:
                out[job.job_id] = record.updated
    return out


def _recovered(mesh: Mesh, stream: Stream, open_at: dict[str, float], since: float) -> bool:
    """Every job running at the disruption has been written since ``since``
    (progress, a hand-back, a resume or its end)."""
    now_open = _open_jobs(mesh, stream)
    return all(job_id not in now_open or now_open[job_id] > since for job_id in open_at)


def _running_of(mesh: Mesh, stream: Stream, kind: str) -> bool:
    stores = _stores(mesh)
    with stream.lock:
        jobs = [j for j in stream.submitted if j.kind == kind]
    for job in jobs:
        with contextlib.suppress(Exception):
            if stores[kind].get(job.job_id).state is JobState.RUNNING:
                return True
    return False


def _disrupt(
    mesh: Mesh, stream: Stream, name: str, action: Callable[[], None], meets: str
) -> float:
    """Wait (up to a minute) for a ``meets`` job to run, then disrupt."""
    wait_until = time.monotonic() + 60
    while not _running_of(mesh, stream, meets) and time.monotonic() < wait_until:
        time.sleep(0.5)
    # What the disruption hits: the jobs of its kind (all kinds for Redis).
    affected = tuple(STORES) if "Redis" in name else (meets,)
    open_at = _open_jobs(mesh, stream, running_only=True, kinds=affected)
    started = time.time()
    print(f"chaos: {name} ({len(open_at)} jobs open)", flush=True)
    action()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            if _recovered(mesh, stream, open_at, started):
                break
        except Exception:
            pass
        time.sleep(0.5)
    recovery = time.time() - started
    print(f"chaos: {name} recovered in {recovery:.1f} s", flush=True)
    return recovery


def _holds_a_training_job(mesh: Mesh, worker: subprocess.Popen[bytes]) -> bool:
    """From its log: a training task received and not yet ended."""
    text = mesh.worker_logs[worker.pid].read_text(errors="replace")
    task = re.escape(TRAINER.task_name)
    received = len(re.findall(rf"Task {task}\[[^]]+\] received", text))
    ended = len(re.findall(rf"Task {task}\[[^]]+\] (?:succeeded|failed|raised|retry)", text))
    return received > ended


def _kill_busy_worker(mesh: Mesh) -> None:
    alive = [w for w in mesh.workers if w.poll() is None]
    busy = [w for w in alive if _holds_a_training_job(mesh, w)]
    victim = (busy or alive)[-1]
    print(f"chaos: SIGKILL worker {victim.pid} (busy: {bool(busy)})", flush=True)
    mesh.kill_worker(victim)
    mesh.start_worker()


def _restart_redis(mesh: Mesh) -> None:
    mesh.redis.kill()
    time.sleep(3)  # the outage itself
    mesh.redis.start()


def _restart_service(mesh: Mesh, name: str) -> None:
    mesh.services[name].kill()
    mesh.services[name].start()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[rank]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=8, help="at most this many of each kind")
    parser.add_argument("--steps", type=int, default=400, help="training steps per job")
    parser.add_argument("--max-seconds", type=float, default=540.0)
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.steps < 20:
        print("--jobs must be >= 1 and --steps >= 20", file=sys.stderr)
        return 2
    started = time.monotonic()
    deadline = started + args.max_seconds
    root = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    redis = RedisProcess(root / "redis").start()
    env = service_env(redis.url(0), root / "artifacts", **CHAOS_ENV)
    mesh = Mesh(root, redis, env)
    try:
        for name in SERVICES:
            mesh.services[name] = ServiceProcess(name, env, root / f"{name}.log")
            mesh.services[name].start()
        mesh.start_worker()
        mesh.start_worker()
        stream = Stream(mesh, args.jobs, args.steps, deadline - 120)
        submitter = threading.Thread(target=stream.run, args=(10.0,), daemon=True)
        submitter.start()
        recoveries = [
            _disrupt(mesh, stream, "SIGKILL a worker", lambda: _kill_busy_worker(mesh), "training"),
            _disrupt(mesh, stream, "restart Redis (AOF)", lambda: _restart_redis(mesh), "training"),
        ]
        for name, meets in zip(SERVICES, ("training", "sensitivity", "proxy"), strict=True):
            recoveries.append(
                _disrupt(
                    mesh,
                    stream,
                    f"restart {name}",
                    lambda n=name: _restart_service(mesh, n),
                    meets,
                )
            )
        stream.stop.set()
        stream.done.wait(max(1.0, deadline - time.monotonic()))
        while _open_jobs(mesh, stream) and time.monotonic() < deadline:
            time.sleep(1.0)

        stores = _stores(mesh)
        succeeded = lost = duplicates = stuck = 0
        for job in stream.submitted:
            store = stores[job.kind]
            try:
                record = store.get(job.job_id)
            except BitmeshError:
                lost += 1
                continue
            ends = [e for e in store.events_since(job.job_id, 0) if JobState(e["state"]).terminal]
            duplicates += len(ends) > 1
            stuck += record.state is JobState.RUNNING
            lost += not record.state.terminal
            succeeded += record.state is JobState.SUCCEEDED
            if record.state is JobState.FAILED:
                print(f"{job.kind} {job.job_id} FAILED: {record.error}", flush=True)
        elapsed = time.monotonic() - started
        print(
            f"elapsed {elapsed:.0f} s; recoveries "
            + ", ".join(f"{r:.1f}" for r in recoveries)
            + f" s; logs in {root}",
            flush=True,
        )
        print(
            f"RESULT jobs_submitted={len(stream.submitted)} jobs_succeeded={succeeded} "
            f"jobs_lost={lost} duplicate_results={duplicates} stuck_running={stuck} "
            f"p99_recovery_s={_percentile(recoveries, 0.99):.1f}",
            flush=True,
        )
        return 0 if lost == duplicates == stuck == 0 else 1
    finally:
        mesh.stop()


if __name__ == "__main__":
    raise SystemExit(main())
