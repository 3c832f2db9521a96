"""Run jobs and record how they end: the one ladder, and the thread runner.

A job is a function of a :class:`JobContext`; it reports progress through the
context and checks for cancellation between units of work.
:func:`execute_job` runs one to its end and records every outcome; every
runner goes through it (the sensitivity service's threads, the proxy NAS
coordinators, the trainer's Celery tasks). :class:`ThreadJobRunner` runs
jobs in threads of the serving process (the sensitivity service's way) and
caps how many run at once (RESOURCE_EXHAUSTED beyond the cap, nothing lost:
the refused job is never created).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from bitmesh.errors import BitmeshError, Cancelled, ResourceExhausted
from bitmesh.jobs.admission import tenant_cap_exhausted
from bitmesh.jobs.ending import finish
from bitmesh.jobs.lease import LeaseLost
from bitmesh.jobs.records import JobRecord, JobState, new_job_id
from bitmesh.jobs.retry import RetryingStore, RetryPolicy, StoreOutage
from bitmesh.jobs.store import JobStore, request_cancel, transition
from bitmesh.jobs.sweeper import HeldLeases
from bitmesh.tenants import DEFAULT_TENANT

log = logging.getLogger(__name__)


class JobContext:
    """What a running job sees: progress reporting and its cancel flag."""

    def __init__(self, store: JobStore, job_id: str, cancel_event: threading.Event) -> None:
        self.store = store
        self.job_id = job_id
        self._cancel_event = cancel_event
        self._last_check = 0.0

    def report(
        self,
        progress: float,
        stage: str = "",
        message: str = "",
        event: dict[str, Any] | None = None,
    ) -> None:
        record = self.store.update(
            self.job_id,
            lambda r: transition(
                r,
                progress=max(0.0, min(1.0, progress)),
                stage=stage or r.stage,
                message=message or r.message,
            ),
        )
        self.store.append_event(
            self.job_id,
            {
                "state": record.state.value,
                "progress": record.progress,
                "stage": record.stage,
                "message": record.message,
                **(event or {}),
            },
        )

    def is_set(self) -> bool:
        """True once a cancel was asked for (from any process; polled at most 5x/s)."""
        if self._cancel_event.is_set():
            return True
        now = time.monotonic()
        if now - self._last_check > 0.2:
            self._last_check = now
            if self.store.get(self.job_id).cancel_requested:
                self._cancel_event.set()
        return self._cancel_event.is_set()

    def raise_if_cancelled(self) -> None:
        if self.is_set():
            raise Cancelled(f"job {self.job_id} was cancelled")


JobWork = Callable[[JobContext], dict[str, Any]]


def _no_reason() -> str | None:
    return None


def _admit_all(record: JobRecord) -> str | None:
    return None


def attempts_cap(max_attempts: int, setting: str) -> Callable[[JobRecord], str | None]:
    """An ``admit`` that refuses a job started ``max_attempts`` times already:
    each start after the first means its runner died mid-job (killed, out of
    memory), and a job that kills its runner would otherwise be resumed for
    ever. ``setting`` names the variable that raises the cap."""

    def admit(record: JobRecord) -> str | None:
        if record.attempts < max_attempts:
            return None
        return (
            f"started {record.attempts} times without finishing: its runner stopped each "
            f"time (killed, or out of memory); not retrying ({setting} raises the cap)"
        )

    return admit


def execute_job(
    store: JobStore,
    job_id: str,
    work: JobWork,
    cancel_event: threading.Event,
    stop_reason: Callable[[], str | None] = _no_reason,
    label: str = "job",
    *,
    logs: str = "the service log",
    admit: Callable[[JobRecord], str | None] = _admit_all,
    starting: str = "",
    done_message: Callable[[dict[str, Any]], str] | None = None,
    hand_back: Callable[[], bool] | None = None,
) -> JobState | None:
    """Run ``work`` for a job and record how it ended, whatever happens;
    return the state it ended in (None: it was not ended here, see below).

    Why one function: every runner (the sensitivity service's threads, the
    proxy NAS coordinators, the trainer's Celery tasks) needs the same
    guarantees: a job that ended or was cancelled before it started never
    runs; every way out ends in a terminal state with a reason a user can act
    on; the last event is :func:`bitmesh.jobs.ending.final_event`, so
    watchers stop. What differs between runners is a parameter:

    - ``stop_reason`` tells a service shutdown from a user's cancel: when it
      returns a reason and no cancel was asked for, the job ends FAILED with
      it, not CANCELLED.
    - ``label`` and ``logs`` name the job and where its traceback went in
      the reason of an unexpected error (never the exception's text).
    - ``admit`` is asked, with the record, once the job is known to be open
      and not cancelled, before it is marked RUNNING (which counts one more
      of its ``attempts``); a reason it returns ends the job FAILED with it:
      a cap on the runs of a job that keeps killing its runner
      (:func:`attempts_cap`, the trainer's delivery count).
    - ``starting`` is the stage and message written with RUNNING
      ("resuming at step 40"); ``done_message`` the message of a success
      (its stage is then "done").
    - A :class:`~bitmesh.jobs.retry.StoreOutage` (the store was down past its
      retry window) records nothing, since nothing can be. With no
      ``hand_back`` the job is left to the service's sweeper, which claims it
      once its lease lapses and resumes or ends it (:mod:`bitmesh.jobs.sweeper`).
      ``hand_back`` returning True means it put the job back to be sent
      again (the trainer: QUEUED, under its lease), and the outage propagates
      so the caller can retry (Celery's ``Task.retry``); False means there is
      nothing to hand back (another runner holds it).
    - :class:`~bitmesh.jobs.lease.LeaseLost` from ``work``: another runner
      holds the job now; this one stops and writes nothing."""
    try:
        return _execute_job(
            store,
            job_id,
            work,
            cancel_event,
            stop_reason,
            label,
            logs,
            admit,
            starting,
            done_message,
        )
    except LeaseLost:
        log.warning("%s %s: another runner holds its lease now; stopping here", label, job_id)
        return None
    except StoreOutage as exc:
        if hand_back is not None and hand_back():
            raise
        log.error("%s %s: %s; its sweeper takes it over", label, job_id, exc.message)
        return None


def _execute_job(
    store: JobStore,
    job_id: str,
    work: JobWork,
    cancel_event: threading.Event,
    stop_reason: Callable[[], str | None],
    label: str,
    logs: str,
    admit: Callable[[JobRecord], str | None],
    starting: str,
    done_message: Callable[[dict[str, Any]], str] | None,
) -> JobState:
    record = store.get(job_id)
    if record.state.terminal:
        return record.state  # cancelled while queued, or a redelivery of a finished job
    if record.cancel_requested:  # cancelled while its runner was dead: do not start it again
        return finish(store, job_id, state=JobState.CANCELLED, message="cancelled").state
    refusal = admit(record)
    if refusal:
        return finish(store, job_id, state=JobState.FAILED, error=refusal, message="failed").state
    changes: dict[str, Any] = {"stage": starting, "message": starting} if starting else {}
    record = store.update(
        job_id,
        lambda r: transition(r, state=JobState.RUNNING, attempts=r.attempts + 1, **changes),
    )
    if record.state is not JobState.RUNNING:
        return record.state  # cancelled in between

    ctx = JobContext(store, job_id, cancel_event)
    try:
        result = work(ctx)
    except (StoreOutage, LeaseLost):
        raise
    except Cancelled:
        reason = stop_reason()
        if reason and not store.get(job_id).cancel_requested:
            ending: dict[str, Any] = {"state": JobState.FAILED, "error": reason}
        else:
            ending = {"state": JobState.CANCELLED, "message": "cancelled"}
    except BitmeshError as exc:
        ending = {"state": JobState.FAILED, "error": exc.message}
    except Exception as exc:
        log.exception("%s %s failed", label, job_id)
        ending = {
            "state": JobState.FAILED,
            "error": f"internal error in {label} {job_id} ({type(exc).__name__}); see {logs}",
        }
    else:
        ending = {"state": JobState.SUCCEEDED, "progress": 1.0, "result": result}
        if done_message is not None:
            ending.update(stage="done", message=done_message(result))
    if ending["state"] is JobState.FAILED:
        ending["message"] = "failed"
    return finish(store, job_id, **ending).state


class ThreadJobRunner:
    """Bounded in-process execution of jobs recorded in a :class:`JobStore`."""

    def __init__(
        self,
        store: JobStore,
        kind: str,
        max_concurrent: int,
        leases: HeldLeases | None = None,
        retry: RetryPolicy | None = None,
        max_attempts: int | None = None,
        max_per_tenant: int | None = None,
    ) -> None:
        """``max_per_tenant``: one tenant's running jobs (BITMESH_MAX_JOBS_PER_TENANT;
        None: only ``max_concurrent`` caps), so that no tenant takes every thread.
        ``leases``: held on every job from before its record exists until
        it ends, so a sweeper can tell a dead process's jobs (none by default).
        ``retry``: how long a running job's store calls ride out an outage
        (calls of RPCs, ``submit`` and ``cancel``, fail at once instead).
        ``max_attempts``: starts of one job (the first, and each resume of an
        orphan) before it ends FAILED instead (BITMESH_JOB_MAX_ATTEMPTS)."""
        self.store = store
        self.job_store: JobStore = RetryingStore(store, retry) if retry is not None else store
        self.leases = leases
        self.admit = (
            attempts_cap(max_attempts, "BITMESH_JOB_MAX_ATTEMPTS")
            if max_attempts is not None
            else _admit_all
        )
        self.kind = kind
        self.max_concurrent = max_concurrent
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix=kind)
        self._lock = threading.Lock()
        self.max_per_tenant = max_per_tenant
        self._running: dict[str, tuple[Future[None], threading.Event]] = {}
        self._tenants: dict[str, str] = {}  # running job id -> its tenant

    def submit(
        self,
        request: dict[str, Any],
        work: JobWork,
        job_id: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> JobRecord:
        """Record a job of ``tenant`` and run ``work`` for it in a thread."""
        with self._lock:
            # A job frees its slot once its record is terminal, even if its
            # thread is still winding down (a client that saw it end may
            # resubmit at once).
            self._running = {
                k: v
                for k, v in self._running.items()
                if not v[0].done() and not self.store.get(k).state.terminal
            }
            if len(self._running) >= self.max_concurrent:
                raise ResourceExhausted(
                    f"{len(self._running)} {self.kind} jobs are running, the cap is "
                    f"{self.max_concurrent}; wait for one to finish or cancel one "
                    "(BITMESH_MAX_CONCURRENT_JOBS raises the cap)"
                )
            self._tenants = {k: v for k, v in self._tenants.items() if k in self._running}
            mine = sum(1 for k in self._running if self._tenants.get(k) == tenant)
            if self.max_per_tenant is not None and mine >= self.max_per_tenant:
                raise tenant_cap_exhausted(self.kind, mine, self.max_per_tenant)
            job_id = job_id or new_job_id(self.kind)
            if self.leases is not None and not self.leases.take(job_id):
                raise ResourceExhausted(f"job {job_id} is already running; start another")
            try:
                record = self.store.create(
                    JobRecord(job_id=job_id, kind=self.kind, request=request, tenant=tenant)
                )
            except BaseException:
                if self.leases is not None:
                    self.leases.drop(job_id)
                raise
            event = threading.Event()
            future = self._pool.submit(self._run, record.job_id, work, event)
            self._running[record.job_id] = (future, event)
            self._tenants[record.job_id] = tenant
        return record

    def cancel(self, job_id: str) -> JobRecord:
        record = request_cancel(self.store, job_id)
        entry = self._running.get(job_id)
        if entry is not None:
            entry[1].set()
        return record

    def resume(self, job_id: str, work: JobWork) -> None:
        """Run an orphan again (its lease already held, see bitmesh.jobs.sweeper),
        past the cap: it was admitted once, and refusing it would leave it RUNNING."""
        with self._lock:
            event = threading.Event()
            future = self._pool.submit(self._run, job_id, work, event)
            self._running[job_id] = (future, event)
            self._tenants[job_id] = self.store.get(job_id).tenant  # counts toward its tenant's cap

    def _run(self, job_id: str, work: JobWork, cancel_event: threading.Event) -> None:
        try:
            execute_job(self.job_store, job_id, work, cancel_event, admit=self.admit)
        finally:
            if self.leases is not None:
                self.leases.drop(job_id)

    def shutdown(self, grace: float) -> None:
        """Let running jobs finish for ``grace`` seconds, then cancel the rest."""
        deadline = time.monotonic() + grace
        for future, event in list(self._running.values()):
            remaining = deadline - time.monotonic()
            if remaining > 0:
                with contextlib.suppress(Exception):
                    future.result(timeout=remaining)
            if not future.done():
                event.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
