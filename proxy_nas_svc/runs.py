"""Trial runs through the queue: specs and results in the artifact store.

A run's message carries only its key. The coordinator writes the run's
trainer request under ``proxy-nas-runs/<key>`` before sending it; the worker
writes the result under ``proxy-nas-results/<key>``. Both live under the
artifact root every process of the mesh shares, so any worker can run any
run, and a run whose result exists is not trained again (a redelivered or
re-sent message costs one lookup).

Each search's runs live in its tenant's store (bitmesh/tenants.py): the
message carries the tenant beside the key, so the same run asked for by two
tenants is trained once for each and neither learns of the other's result.
A message without a tenant (sent before tenants) is the tenant ``default``'s.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bitmesh.artifacts import ArtifactStore
from bitmesh.errors import Cancelled, Unavailable
from bitmesh.jobs.lease import Lease
from bitmesh.jobs.plumbing import PROXY_NAS_TRIALS
from bitmesh.jobs.store import JobStore
from bitmesh.tenants import DEFAULT_TENANT
from proxy_nas_svc.trial import RunResult, run_trial

if TYPE_CHECKING:
    from celery import Celery

    from trainer_svc.public import TrainingRequest

log = logging.getLogger(__name__)

RUNS_NAMESPACE = "proxy-nas-runs"
RESULTS_NAMESPACE = "proxy-nas-results"
RUN_TRIAL_TASK = PROXY_NAS_TRIALS.task_name
CANCEL_POLL_S = 1.0


def run_lease_id(key: str, tenant: str = DEFAULT_TENANT) -> str:
    """The lease a worker holds while it trains ``tenant``'s run ``key``
    (proxy NAS store); ``default``'s keeps the name it had before tenants."""
    return f"run:{key}" if tenant == DEFAULT_TENANT else f"run:{tenant}:{key}"


class CeleryBackend:
    """Runs as Celery tasks on the workers (the proxy NAS trial queue).

    With ``lease`` and ``queue_length`` it can tell a lost run (``lost``):
    no result, its run lease free (no worker trains it) and the trial queue
    empty (no message waits for a worker, its own included)."""

    def __init__(
        self,
        celery: Celery,
        artifacts: ArtifactStore,
        job_id: str,
        lease: Lease | None = None,
        queue_length: Callable[[], int] | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        """``artifacts``: the mesh's root store; the runs go to ``tenant``'s."""
        self.celery = celery
        self.tenant = tenant
        self.artifacts = artifacts.for_tenant(tenant)
        self.job_id = job_id
        self.lease = lease
        self.queue_length = queue_length

    def submit(self, key: str, request: TrainingRequest) -> None:
        self.artifacts.set_ref(
            RUNS_NAMESPACE, key, {"job_id": self.job_id, "request": request.to_dict()}
        )
        self.celery.send_task(
            RUN_TRIAL_TASK, args=[key, self.tenant], queue=PROXY_NAS_TRIALS.queue_name
        )

    def result(self, key: str) -> RunResult | None:
        data = self.artifacts.get_ref(RESULTS_NAMESPACE, key)
        return RunResult.from_dict(data) if data is not None else None

    def lost(self, key: str) -> bool:
        if self.lease is None or self.queue_length is None:
            return False
        try:
            if self.queue_length() > 0 or self.result(key) is not None:
                return False
            probe = f"lost-probe:{uuid.uuid4().hex[:8]}"
            if not self.lease.acquire(run_lease_id(key, self.tenant), probe, 1.0):
                return False
            self.lease.release(run_lease_id(key, self.tenant), probe)
        except Unavailable:
            return False  # the store is down: ask again at the next poll
        return True


class TrialIO:
    """The trainer loop's hooks for one run: it stops when its search is cancelled."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store = store
        self.job_id = job_id
        self._checked = 0.0

    def report(self, progress: float, point: dict[str, float], stage: str) -> None:
        pass

    def check_cancelled(self) -> None:
        now = time.monotonic()
        if now - self._checked < CANCEL_POLL_S:
            return
        self._checked = now
        record = self.store.get(self.job_id)
        if record.cancel_requested or record.state.terminal:
            raise Cancelled(f"search {self.job_id} ended; run stopped")

    def load_checkpoint(self) -> dict[str, Any] | None:
        return None

    def save_checkpoint(self, state: dict[str, Any], step: int) -> None:
        pass


def execute_run(key: str, artifacts: ArtifactStore, store: JobStore) -> str:
    """Run the run ``key`` once: skip it if its result exists or its search ended.

    Returns what happened: "done" (already had a result), "skipped", "ok",
    "failed" or "cancelled"."""
    from trainer_svc.public import TrainingRequest

    if artifacts.get_ref(RESULTS_NAMESPACE, key) is not None:
        return "done"
    spec = artifacts.get_ref(RUNS_NAMESPACE, key)
    if spec is None:
        log.warning("run %s has no spec; dropping its message", key)
        return "skipped"
    job_id = str(spec["job_id"])
    if store.get(job_id).state.terminal:
        return "skipped"
    request = TrainingRequest.from_dict(spec["request"])
    try:
        result = run_trial(request, TrialIO(store, job_id))
    except Cancelled:
        return "cancelled"
    artifacts.set_ref(RESULTS_NAMESPACE, key, result.to_dict())
    return "ok" if result.ok else "failed"
