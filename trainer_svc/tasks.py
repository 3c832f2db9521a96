"""Celery tasks of the trainer. Thin: a job id in, the domain function does the work.

The request lives in the job record, so the message carries only the id; the
task opens the same job store and artifact store the service uses (from the
environment) and calls :func:`trainer_svc.jobs.run_job`, which is idempotent.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from celery import Task
from celery.signals import worker_process_init, worker_ready

from bitmesh.artifacts import ArtifactStore
from bitmesh.jobs.plumbing import PING, TRAINER
from bitmesh.jobs.retry import RetryingLease, RetryingStore, RetryPolicy, StoreOutage
from bitmesh.jobs.store import JobStore, open_job_store
from bitmesh.settings import load_settings
from trainer_svc.celery_app import app, restore_lost_fetches, send_job
from trainer_svc.config import TrainerSettings
from trainer_svc.keepalive import Action, redis_delivery_toucher
from trainer_svc.lease import Lease, open_lease

log = logging.getLogger(__name__)
SERVICE = TRAINER.store


@cache
def _stores() -> tuple[JobStore, ArtifactStore, Lease, TrainerSettings]:
    settings = load_settings()
    # A running job's store and lease calls ride out a Redis outage
    # (bitmesh.jobs.retry) for BITMESH_STORE_RETRY_SECONDS.
    policy = RetryPolicy(window_s=settings.store_retry_seconds)
    return (
        RetryingStore(open_job_store(settings.redis_url, settings.artifact_root, SERVICE), policy),
        ArtifactStore(settings.artifact_root),
        RetryingLease(open_lease(settings.redis_url, settings.artifact_root), policy),
        TrainerSettings(),
    )


@app.task(name=PING.task_name)
def ping(token: str) -> str:
    """Round trip through the queue; `bitmesh status` uses it to prove a worker runs."""
    return token


@app.task(
    name=TRAINER.task_name,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def run_training_job(self: Task, job_id: str) -> str:  # type: ignore[type-arg]
    """Run or resume one training job; returns its final state."""
    from trainer_svc.jobs import run_job, wait_for_store

    store, artifacts, lease, trainer = _stores()
    settings = load_settings()
    actions: list[Action] = []
    tag = (self.request.properties or {}).get("delivery_tag")
    if settings.redis_url and tag:
        actions.append(redis_delivery_toucher(settings.redis_url, str(tag)))
    try:
        state = run_job(job_id, store, artifacts, lease=lease, settings=trainer, keepalive=actions)
    except StoreOutage as exc:
        # Redis stayed down past BITMESH_STORE_RETRY_SECONDS: not done, not
        # failed. The job is QUEUED again (run_job); once Redis answers this
        # task is retried (a new message, this one acked) and the next
        # delivery resumes from the checkpoint.
        log.warning("job %s: %s", job_id, exc.message)
        wait_for_store(job_id, store)
        raise self.retry(exc=exc, countdown=1, max_retries=None) from exc
    return state.value if state is not None else "taken over by another runner"


@worker_process_init.connect
def _warm_job_modules(sender: Any = None, **_: Any) -> None:
    """Each pool process imports torch and the job modules before it takes a
    task, so the first job does not pay them (``trainer_svc.warm``);
    ``BITMESH_TRAINER_WARM_IMPORTS=0`` skips it (a worker that only answers pings)."""
    if TrainerSettings().warm_imports:
        from trainer_svc.warm import warm_imports

        warm_imports()


@worker_ready.connect
def _recover_orphans(sender: Any = None, **_: Any) -> None:
    """Embedded queue only: the filesystem transport does not redeliver a
    message whose worker died, so a starting worker re-sends RUNNING jobs
    whose lease has lapsed (the lease and the terminal check make an extra
    delivery harmless). Redis redelivers by itself."""
    if load_settings().redis_url:
        return
    from trainer_svc.orphans import orphaned_jobs

    # Fresh stores, not the cached ones: pool processes forked later must not
    # inherit this process's SQLite connections.
    restored = restore_lost_fetches(app)
    if restored:
        log.warning("put back %d messages fetched by workers that died", restored)
    settings = load_settings()
    store = open_job_store(settings.redis_url, settings.artifact_root, SERVICE)
    lease = open_lease(settings.redis_url, settings.artifact_root)
    for job_id in orphaned_jobs(store, lease):
        log.warning("re-sending job %s: its worker stopped while running it", job_id)
        send_job(app, job_id)
