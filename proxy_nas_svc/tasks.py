"""Celery tasks of the proxy NAS service: one trial run per message.

A shared task: it binds to whichever Celery app imports it (the worker's
app, ``trainer_svc.celery_app``, discovers ``proxy_nas_svc.tasks``), so this
module imports no app and there is no import cycle between the two
services' Celery modules. Trials travel on their own queue,
``PROXY_NAS_TRIALS`` of :mod:`bitmesh.jobs.plumbing`, which every worker
consumes. Thin: a run key in, :func:`proxy_nas_svc.runs.execute_run` does
the work. While a run trains, its Redis delivery is kept fresh, so Redis
redelivers it only when its worker is gone (after the visibility timeout).
"""

from __future__ import annotations

from functools import cache

from celery import Task, shared_task

from bitmesh.artifacts import ArtifactStore
from bitmesh.jobs.lease import Lease, open_lease
from bitmesh.jobs.plumbing import PROXY_NAS_TRIALS
from bitmesh.jobs.store import JobStore, open_job_store
from bitmesh.jobs.sweeper import process_owner
from bitmesh.settings import load_settings
from bitmesh.tenants import DEFAULT_TENANT
from proxy_nas_svc.runs import RUN_TRIAL_TASK, execute_run, run_lease_id
from trainer_svc.public import Action, TrainerSettings, keep_alive, redis_delivery_toucher

SERVICE = PROXY_NAS_TRIALS.store


@cache
def _stores() -> tuple[JobStore, ArtifactStore, Lease]:
    settings = load_settings()
    return (
        open_job_store(settings.redis_url, settings.artifact_root, SERVICE),
        ArtifactStore(settings.artifact_root),
        open_lease(settings.redis_url, settings.artifact_root, SERVICE),
    )


@shared_task(
    name=RUN_TRIAL_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True
)
def run_trial_task(self: Task, key: str, tenant: str = DEFAULT_TENANT) -> str:  # type: ignore[type-arg]
    """Train one (configuration, fidelity) run of ``tenant``'s search;
    idempotent per key, in that tenant's store.

    The run's lease, held while it trains, tells a second delivery to leave
    it and tells the coordinator that a run without a result is not lost
    (``CeleryBackend.lost``)."""
    store, root, lease = _stores()
    artifacts = root.for_tenant(tenant)
    lease_id = run_lease_id(key, tenant)
    settings = load_settings()
    trainer = TrainerSettings()
    owner = process_owner()
    if not lease.acquire(lease_id, owner, trainer.lease_ttl_s):
        return "running elsewhere"
    actions: list[Action] = [lambda: lease.renew(lease_id, owner, trainer.lease_ttl_s)]
    tag = (self.request.properties or {}).get("delivery_tag")
    if settings.redis_url and tag:
        actions.append(redis_delivery_toucher(settings.redis_url, str(tag)))
    interval = max(0.2, min(30.0, trainer.visibility_timeout_s / 3, trainer.lease_ttl_s / 3))
    try:
        with keep_alive(interval, actions):
            return execute_run(key, artifacts, store)
    finally:
        lease.release(lease_id, owner)
