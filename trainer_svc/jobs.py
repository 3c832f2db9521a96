"""A training job's life in the job store: run, resume, cancel, fail, publish.

:func:`run_job` is what the Celery task calls (tests call it directly). It is
idempotent: a job that already ended is not run again; a job found RUNNING
(its worker died) resumes from its last checkpoint; a second delivery of a
job whose runner is still alive waits on the lease instead of running it
twice. It ends through the ladder every service's runner shares,
:func:`bitmesh.jobs.runner.execute_job`: every way out ends in a terminal
state with a reason and the one final-event shape, written with the store's
compare-and-set, so a job has one result.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from bitmesh.artifacts import Artifact, ArtifactStore
from bitmesh.jobs.lease import LeaseLost
from bitmesh.jobs.records import JobRecord, JobState
from bitmesh.jobs.retry import RetryPolicy, call_with_retry
from bitmesh.jobs.runner import JobContext, execute_job
from bitmesh.jobs.store import JobStore, transition
from trainer_svc import checkpoints
from trainer_svc.config import TrainerSettings
from trainer_svc.keepalive import Action, keep_alive
from trainer_svc.lease import Lease, LocalLease
from trainer_svc.outcome import WEIGHTS_MEDIA_TYPE, Outcome
from trainer_svc.specs import TrainingRequest

log = logging.getLogger(__name__)

__all__ = ["LeaseLost", "publish", "run_job", "wait_for_store"]

ATTEMPTS_NAMESPACE = "trainer-attempts"
RESULTS_NAMESPACE = "trainer-results"
LEASE_POLL_S = 0.5


class JobIO:
    """The loop's reporting, cancel checks and checkpoints, bound to one job."""

    def __init__(
        self,
        ctx: JobContext,
        artifacts: ArtifactStore,
        total_steps: int,
        lost: threading.Event | None = None,
    ) -> None:
        self.ctx = ctx
        self.artifacts = artifacts
        self.total_steps = total_steps
        self.lost = lost or threading.Event()

    def report(self, progress: float, point: dict[str, float], stage: str) -> None:
        step = int(point.get("step", 0))
        message = f"step {step}/{self.total_steps}" if point else stage
        event: dict[str, Any] = {"total_steps": self.total_steps}
        if point:
            event["metrics"] = point
        self.ctx.report(progress, stage=stage, message=message, event=event)

    def check_cancelled(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(f"job {self.ctx.job_id}'s lease was taken by another runner")
        self.ctx.raise_if_cancelled()

    def load_checkpoint(self) -> dict[str, Any] | None:
        return checkpoints.load(self.artifacts, self.ctx.job_id)

    def save_checkpoint(self, state: dict[str, Any], step: int) -> None:
        checkpoints.save(self.artifacts, self.ctx.job_id, state, step)


def total_steps_of(request: TrainingRequest) -> int:
    spec = request.spec
    batches = getattr(spec, "calibration_batches", None)
    return int(batches) if request.kind == "calibration" and batches else request.training.steps


def _artifact_dict(artifact: Artifact) -> dict[str, Any]:
    return asdict(artifact)


def publish(
    outcome: Outcome, artifacts: ArtifactStore, job_id: str, request: TrainingRequest
) -> dict[str, Any]:
    """Store weights, configuration and metrics; return the job's result (JSON)."""
    config = {name: option.key for name, option in outcome.config.items()}
    stored: dict[str, Any] = {}
    if outcome.weights is not None:  # None: the job changed no weight (Outcome)
        weights = artifacts.put_bytes(outcome.weights, media_type=WEIGHTS_MEDIA_TYPE)
        stored["weights"] = _artifact_dict(weights)
    config_artifact = artifacts.put_json(
        {
            "job_id": job_id,
            "kind": request.kind,
            "config": config,
            "model": request.to_dict()["model"],
            "policy": outcome.policy,
            "target": outcome.target,
        }
    )
    metrics = artifacts.put_json(
        {
            "job_id": job_id,
            "history": outcome.history,
            "evaluation": outcome.evaluation.to_dict(),
            "final_entropy": outcome.final_entropy,
        }
    )
    result = {
        "kind": request.kind,
        "config": config,
        "evaluation": outcome.evaluation.to_dict(),
        "history": outcome.history,
        "steps_done": outcome.steps_done,
        "resumed_from": outcome.resumed_from,
        "final_entropy": outcome.final_entropy,
        "policy": outcome.policy,
        "target": outcome.target,
        "seconds": outcome.seconds,
        "artifacts": {
            **stored,
            "config": _artifact_dict(config_artifact),
            "metrics": _artifact_dict(metrics),
        },
    }
    artifacts.set_ref(RESULTS_NAMESPACE, job_id, result)
    return result


def _bump_attempts(artifacts: ArtifactStore, job_id: str, key: str = "attempts") -> dict[str, int]:
    """Count one more of ``key`` for the job: ``attempts`` (deliveries that
    took its lease and ran it) or ``outages`` (of those, how many were handed
    back in a store outage). In the artifact store, not the job store: it is
    written while Redis is down."""
    counts = {k: int(v) for k, v in (artifacts.get_ref(ATTEMPTS_NAMESPACE, job_id) or {}).items()}
    counts[key] = counts.get(key, 0) + 1
    artifacts.set_ref(ATTEMPTS_NAMESPACE, job_id, counts)
    return counts


@contextmanager
def _holding(
    lease: Lease, store: JobStore, job_id: str, ttl: float, actions: list[Action]
) -> Iterator[threading.Event | None]:
    """Wait for the job's lease (or for the job to end: yields None), keep it
    renewed while the block runs, release it after. Yields an Event set if
    another runner takes the lease meanwhile (see :class:`LeaseLost`)."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    with keep_alive(max(0.2, ttl / 3), actions):  # our delivery stays fresh while we wait
        while not lease.acquire(job_id, owner, ttl):
            if store.get(job_id).state.terminal:
                yield None
                return
            time.sleep(LEASE_POLL_S)
    lost = threading.Event()

    def renew() -> None:
        if not lease.renew(job_id, owner, ttl):  # raises while Redis is down: next beat
            lost.set()

    try:
        with keep_alive(max(0.2, ttl / 3), [renew, *actions]):
            yield lost
    finally:
        lease.release(job_id, owner)


def run_job(
    job_id: str,
    store: JobStore,
    artifacts: ArtifactStore,
    *,
    lease: Lease | None = None,
    settings: TrainerSettings | None = None,
    keepalive: list[Action] | None = None,
) -> JobState | None:
    """Run (or resume) one job to a terminal state; return that state (None:
    another runner took the job over, see :class:`LeaseLost`).

    The job ends through :func:`bitmesh.jobs.runner.execute_job`, the ladder
    every service's runner shares; what is the trainer's own is passed to
    it: the lease held around it, the cap on deliveries (``admit``), the
    resume stage, and the hand-back on a store outage. Raises
    :class:`~bitmesh.jobs.retry.StoreOutage` when the store stayed down past its retry window;
    the job is then QUEUED again (or was never touched) and the caller sends
    it again: it resumes from its checkpoint."""
    settings = settings or TrainerSettings()
    record = store.get(job_id)
    artifacts = artifacts.for_tenant(record.tenant)  # its checkpoints and weights
    if record.state.terminal:
        log.info("job %s already %s: not running it again", job_id, record.state.value)
        return record.state
    with _holding(
        lease or LocalLease(), store, job_id, settings.lease_ttl_s, keepalive or []
    ) as lost:
        if lost is None:
            return store.get(job_id).state
        resuming = checkpoints.latest(artifacts, job_id)
        stage = f"resuming at step {resuming['step']}" if resuming else "starting"
        held = lost

        def hand_back() -> bool:
            if held.is_set():  # another runner has it: nothing to hand back
                return False
            _bump_attempts(artifacts, job_id, "outages")
            _requeue(job_id, store)
            return True  # the task retries (trainer_svc.tasks); this lease is released first

        return execute_job(
            store,
            job_id,
            lambda ctx: _train(ctx, artifacts, held),
            threading.Event(),
            label="job",
            logs="the worker log",
            admit=lambda record: _admit(artifacts, job_id, settings.max_attempts),
            starting=stage,
            done_message=_done_message,
            hand_back=hand_back,
        )


def _admit(artifacts: ArtifactStore, job_id: str, max_attempts: int) -> str | None:
    """Count this delivery; past ``max_attempts`` the job ends FAILED with why.

    Every delivery that runs the job counts, whatever ended the one before:
    a worker killed (redelivered, or re-sent by the resender) and a hand-back
    after a store outage (the task's retry) alike, so a job that keeps dying
    ends FAILED instead of being sent again for ever."""
    counts = _bump_attempts(artifacts, job_id)
    attempts = counts["attempts"]
    if attempts <= max_attempts:
        return None
    ran, outages = attempts - 1, counts.get("outages", 0)
    if not outages:
        return (
            f"the job's worker stopped {ran} times without finishing "
            "(killed, or out of memory); not retrying (BITMESH_TRAINER_MAX_ATTEMPTS raises the cap)"
        )
    return (
        f"the job ran {ran} times without finishing: {outages} handed back when the job store "
        "(Redis) stayed unreachable past BITMESH_STORE_RETRY_SECONDS, "
        f"{ran - outages} stopped (the worker killed, or out of memory); not retrying "
        "(BITMESH_TRAINER_MAX_ATTEMPTS raises the cap)"
    )


def _done_message(result: dict[str, Any]) -> str:
    return f"done: held-out accuracy {result['evaluation']['accuracy']:.4f}"


def _train(ctx: JobContext, artifacts: ArtifactStore, lost: threading.Event) -> dict[str, Any]:
    """The job's work: train its request, publish what it produced."""
    from trainer_svc.execute import execute  # torch: only in the process that trains

    request = TrainingRequest.from_dict(ctx.store.get(ctx.job_id).request)
    outcome = execute(request, JobIO(ctx, artifacts, total_steps_of(request), lost))
    ctx.report(0.99, stage="publishing", message="storing artifacts")
    return publish(outcome, artifacts, ctx.job_id, request)


def _requeue(job_id: str, store: JobStore) -> JobRecord:
    """After a :class:`StoreOutage`, with the lease still ours: wait for the
    store as long as the outage lasts (a worker can do nothing else without
    its broker, the same Redis), then put the job back to QUEUED, so it is
    not left RUNNING with nothing running it."""
    return call_with_retry(
        lambda: store.update(
            job_id,
            lambda r: (
                r
                if r.state is not JobState.RUNNING
                else transition(
                    r,
                    state=JobState.QUEUED,
                    stage="waiting to resume",
                    message="Redis was unreachable; waiting to resume from the checkpoint",
                )
            ),
        ),
        RetryPolicy(window_s=math.inf),
        what=f"the job store (to hand job {job_id} back)",
    )


def wait_for_store(job_id: str, store: JobStore) -> JobRecord:
    """Block until the store answers again (for a task about to retry)."""
    return call_with_retry(lambda: store.get(job_id), RetryPolicy(window_s=math.inf))
