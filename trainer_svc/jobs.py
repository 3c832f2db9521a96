"""A training job's life in the job store: run, resume, cancel, fail, publish.

:func:`run_job` is what the Celery task calls (tests call it directly). It is
idempotent: a job that already ended is not run again; a job found RUNNING
(its worker died) resumes from its last checkpoint; a second delivery of a
job whose runner is still alive waits on the lease instead of running it
twice. Every way out ends in a terminal state with a reason, written with the
store's compare-and-set, so a job has one result.
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
from bitmesh.errors import BitmeshError, Cancelled
from bitmesh.jobs.records import JobRecord, JobState
from bitmesh.jobs.retry import RetryPolicy, StoreOutage, call_with_retry
from bitmesh.jobs.runner import JobContext
from bitmesh.jobs.store import JobStore, transition
from trainer_svc import checkpoints
from trainer_svc.config import TrainerSettings
from trainer_svc.keepalive import Action, keep_alive
from trainer_svc.lease import Lease, LocalLease
from trainer_svc.outcome import WEIGHTS_MEDIA_TYPE, Outcome
from trainer_svc.specs import TrainingRequest

log = logging.getLogger(__name__)

ATTEMPTS_NAMESPACE = "trainer-attempts"
RESULTS_NAMESPACE = "trainer-results"
LEASE_POLL_S = 0.5


class LeaseLost(Exception):
    """Another runner took this job's lease (ours lapsed in a Redis outage
    longer than its TTL): that runner goes on from the checkpoint; we stop
    without writing anything, so the job still ends once."""


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
    weights = artifacts.put_bytes(outcome.weights, media_type=WEIGHTS_MEDIA_TYPE)
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
            "weights": _artifact_dict(weights),
            "config": _artifact_dict(config_artifact),
            "metrics": _artifact_dict(metrics),
        },
    }
    artifacts.set_ref(RESULTS_NAMESPACE, job_id, result)
    return result


def _finish(store: JobStore, job_id: str, **changes: Any) -> JobRecord:
    record = store.update(job_id, lambda r: transition(r, **changes))
    store.append_event(
        job_id,
        {
            "state": record.state.value,
            "progress": record.progress,
            "stage": record.stage,
            "message": record.message,
            "error": record.error,
        },
    )
    return record


def _bump_attempts(artifacts: ArtifactStore, job_id: str) -> int:
    previous = artifacts.get_ref(ATTEMPTS_NAMESPACE, job_id) or {}
    attempts = int(previous.get("attempts", 0)) + 1
    artifacts.set_ref(ATTEMPTS_NAMESPACE, job_id, {"attempts": attempts})
    return attempts


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
) -> JobState:
    """Run (or resume) one job to a terminal state; return that state.

    Raises :class:`StoreOutage` when the store stayed down past its retry
    window; the job is then QUEUED again (or was never touched) and the
    caller sends it again: it resumes from its checkpoint."""
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
        record = store.get(job_id)
        if record.state.terminal:
            return record.state
        if record.cancel_requested:
            return _finish(store, job_id, state=JobState.CANCELLED, message="cancelled").state
        attempts = _bump_attempts(artifacts, job_id)
        if attempts > settings.max_attempts:
            return _finish(
                store,
                job_id,
                state=JobState.FAILED,
                error=f"the job's worker stopped {attempts - 1} times without finishing "
                "(killed, or out of memory); not retrying",
            ).state
        resuming = checkpoints.latest(artifacts, job_id)
        stage = f"resuming at step {resuming['step']}" if resuming else "starting"
        store.update(
            job_id, lambda r: transition(r, state=JobState.RUNNING, stage=stage, message=stage)
        )
        try:
            return _run(job_id, record, store, artifacts, lost)
        except StoreOutage:
            if lost.is_set():  # another runner has it: nothing to hand back
                return store.get(job_id).state
            _requeue(job_id, store)
            raise  # the task retries (trainer_svc.tasks); this lease is released first


def _run(
    job_id: str,
    record: JobRecord,
    store: JobStore,
    artifacts: ArtifactStore,
    lost: threading.Event | None = None,
) -> JobState:
    from trainer_svc.execute import execute  # torch: only in the process that trains

    ctx = JobContext(store, job_id, threading.Event())
    try:
        request = TrainingRequest.from_dict(record.request)
        outcome = execute(request, JobIO(ctx, artifacts, total_steps_of(request), lost))
        ctx.report(0.99, stage="publishing", message="storing artifacts")
        result = publish(outcome, artifacts, job_id, request)
    except StoreOutage:
        raise  # not the job's failure: the task hands it back (trainer_svc.tasks)
    except LeaseLost:
        log.warning("job %s: another runner holds its lease now; stopping here", job_id)
        return store.get(job_id).state
    except Cancelled:
        return _finish(store, job_id, state=JobState.CANCELLED, message="cancelled").state
    except BitmeshError as exc:
        return _finish(
            store, job_id, state=JobState.FAILED, error=exc.message, message="failed"
        ).state
    except Exception as exc:
        log.exception("job %s failed", job_id)
        return _finish(
            store,
            job_id,
            state=JobState.FAILED,
            message="failed",
            error=f"internal error in job {job_id} ({type(exc).__name__}); see the worker log",
        ).state
    accuracy = result["evaluation"]["accuracy"]
    return _finish(
        store,
        job_id,
        state=JobState.SUCCEEDED,
        progress=1.0,
        result=result,
        stage="done",
        message=f"done: held-out accuracy {accuracy:.4f}",
    ).state


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
