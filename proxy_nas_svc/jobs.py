"""A search's life in the job store: the coordinator thread of the service.

The coordinator only waits and decides (Optuna asks, halving, tells); the
training happens in Celery workers, so it runs as a thread of the service
process that accepted the search, not as a task holding a worker slot. Its
state is the job record, the Optuna journal and the run results, all in the
shared stores. Every way out ends in a terminal state with a reason.

The process holds a lease on each search it coordinates (renewed by the
service's :class:`~bitmesh.jobs.sweeper.Sweeper`). A search whose service
died is claimed by a sweeper once its lease lapses and ended FAILED with the
reason (:meth:`SearchRunner.end_orphan`): its halving state lived in the dead
coordinator's memory, so it is not resumed (its finished runs stay cached by
key, so starting it again costs only the runs that never finished).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bitmesh.jobs.plumbing import PROXY_NAS
from bitmesh.jobs.records import JobRecord
from bitmesh.jobs.retry import RetryingStore, RetryPolicy
from bitmesh.jobs.runner import JobContext, execute_job
from bitmesh.jobs.store import JobStore
from bitmesh.jobs.sweeper import HeldLeases, end_orphan
from proxy_nas_svc.coordinator import Coordinator, CoordinatorOptions, RunBackend
from proxy_nas_svc.spec import SearchRequest
from proxy_nas_svc.study import create_study

if TYPE_CHECKING:
    from optuna.storages import BaseStorage


JOB_KIND = PROXY_NAS.kinds[0]


class SearchRunner:
    """Starts one coordinator thread per search and stops them on shutdown."""

    def __init__(
        self,
        store: JobStore,
        backend_for: Callable[[str], RunBackend],
        storage_factory: Callable[[], BaseStorage | None],
        options: CoordinatorOptions | None = None,
        leases: HeldLeases | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.store = store
        # A running search's store calls ride out an outage (bitmesh.jobs.retry).
        self.job_store: JobStore = RetryingStore(store, retry) if retry is not None else store
        self.leases = leases
        self.backend_for = backend_for
        self.storage_factory = storage_factory
        self.options = options or CoordinatorOptions()
        # Import Optuna once, here: two coordinator threads importing it for the
        # first time at once trip over its circular imports (seen: ImportError
        # of BaseStorage, KeyError 'optuna.study').
        import optuna
        import optuna.storages.journal

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._stopping = threading.Event()
        self._threads: dict[str, threading.Thread] = {}

    def start(self, job_id: str) -> None:
        if self.leases is not None and not self.leases.take(job_id):
            return  # another process coordinates it already
        thread = threading.Thread(
            target=self._run, args=(job_id,), name=f"search-{job_id}", daemon=True
        )
        self._threads = {k: t for k, t in self._threads.items() if t.is_alive()}
        self._threads[job_id] = thread
        thread.start()

    def _run(self, job_id: str) -> None:
        try:
            execute_job(
                self.job_store,
                job_id,
                lambda ctx: self.search(job_id, self.job_store.get(job_id).request, ctx),
                threading.Event(),
                stop_reason=self._stop_reason,
                label="search",
            )
        finally:
            if self.leases is not None:
                self.leases.drop(job_id)

    def end_orphan(self, record: JobRecord) -> bool:
        """The sweeper's handler: end a search whose coordinator died."""
        end_orphan(
            self.store,
            record,
            "the proxy NAS service coordinating this search stopped (killed, out of memory, "
            "or cut off from Redis past BITMESH_STORE_RETRY_SECONDS); start the search "
            "again: its finished runs are reused",
        )
        return False

    def _stop_reason(self) -> str | None:
        if self._stopping.is_set():
            return "the proxy NAS service stopped during the search; start it again"
        return None

    def search(self, job_id: str, request: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        search = SearchRequest.from_dict(request["search"])
        study = create_study(
            job_id, search.sampler, search.seed, search.trials, self.storage_factory()
        )
        coordinator = Coordinator(
            search,
            study,
            self.backend_for(job_id),
            key_prefix=job_id,
            sink=lambda progress, stage, message, event: ctx.report(
                progress, stage, message, event
            ),
            is_cancelled=lambda: self._stopping.is_set() or ctx.is_set(),
            options=self.options,
        )
        result = coordinator.run()
        result["config"] = dict(request.get("config_labels", {}))
        return result

    def shutdown(self, grace: float) -> None:
        """Stop coordinators (their searches end FAILED with the reason)."""
        self._stopping.set()
        for thread in list(self._threads.values()):
            thread.join(timeout=max(0.1, grace))
