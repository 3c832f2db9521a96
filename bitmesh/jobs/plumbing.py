"""Where each service's jobs live and travel: one declaration, read everywhere.

The store names, job kinds, Celery queues and task names used to be copied
into servicers, tasks, metrics, ``bitmesh up`` and the Kubernetes manifests,
and the copies drifted (training jobs were sent to ``bitmesh.trainer`` while
the worker Deployment and KEDA watched ``celery``). Every one of those places
now reads this module; the manifests' drift test checks the YAML against it.
Torch-free, so the solver and the CLI can import it.
"""

from __future__ import annotations

from dataclasses import dataclass


def redis_prefix(store: str) -> str:
    """The Redis key prefix of job store ``store``'s records, events and indexes
    (leases and the Optuna journal of that service live under it too)."""
    return f"bitmesh:{store}"


@dataclass(frozen=True)
class JobPlumbing:
    """One service's job plumbing.

    ``store`` names the job store (Redis key prefix ``bitmesh:<store>``, or
    ``jobs/<store>.sqlite3`` under the artifact root). ``queue`` and ``task``
    are the Celery queue and task name that carry its work to workers, or
    ``None`` where the work runs in the service's own threads.
    """

    store: str
    kinds: tuple[str, ...]
    queue: str | None = None
    task: str | None = None
    # The artifact-ref namespace of its jobs' checkpoints (keyed by job id),
    # which `bitmesh gc` removes once the job has ended.
    checkpoints: str | None = None

    @property
    def redis_prefix(self) -> str:
        """The Redis key prefix of this store's records, events and indexes."""
        return redis_prefix(self.store)

    @property
    def queue_name(self) -> str:
        """The queue, for plumbing that has one (a missing one is a bug here)."""
        if self.queue is None:
            raise LookupError(f"the {self.store} store's work travels on no queue")
        return self.queue

    @property
    def checkpoint_namespace(self) -> str:
        """The checkpoints' ref namespace, for plumbing whose jobs checkpoint."""
        if self.checkpoints is None:
            raise LookupError(f"the {self.store} store's jobs keep no checkpoints")
        return self.checkpoints

    @property
    def task_name(self) -> str:
        """The task name, for plumbing that has one."""
        if self.task is None:
            raise LookupError(f"the {self.store} store's work is sent as no task")
        return self.task


# The kinds are the ``kind`` of the records each service writes (and the
# prefix of their job ids): data in live stores, so they never change.
TRAINER = JobPlumbing(
    store="trainer",
    kinds=("qat", "search", "calibration"),
    queue="bitmesh.trainer",
    task="bitmesh.trainer.run_job",
    checkpoints="trainer-checkpoints",
)
SENSITIVITY = JobPlumbing(store="sensitivity", kinds=("sensitivity",))
PROXY_NAS = JobPlumbing(store="proxy_nas", kinds=("tune",))
# One (configuration, fidelity) trial run of a proxy search, on workers like
# training's. A run is no job record of its own (its spec and result are
# artifact refs keyed by run); it reads its search's record in this store.
PROXY_NAS_TRIALS = JobPlumbing(
    store="proxy_nas",
    kinds=(),
    queue="bitmesh.proxy_nas",
    task="bitmesh.proxy_nas.run_trial",
)
# Round-trip pings (a worker is up and consuming: tests, readiness waits)
# reach workers here. The container health check uses Celery's control ping,
# which travels on no queue.
PING = JobPlumbing(store="trainer", kinds=(), queue="bitmesh.ping", task="bitmesh.ping")

ALL_PLUMBING: tuple[JobPlumbing, ...] = (TRAINER, SENSITIVITY, PROXY_NAS, PROXY_NAS_TRIALS, PING)

# What a worker consumes (``celery worker --queues=...``): every queue above,
# in this order.
WORKER_QUEUES: tuple[str, ...] = tuple(p.queue for p in ALL_PLUMBING if p.queue is not None)
# The queues whose length scales the GPU worker pool (KEDA) and the
# ``bitmesh_queue_length`` metric reports: the ones that carry training work.
TRAINING_QUEUES: tuple[str, ...] = (TRAINER.queue_name, PROXY_NAS_TRIALS.queue_name)
# Task name -> the queue it is sent to (Celery's ``task_routes``).
TASK_QUEUES: dict[str, str] = {
    p.task: p.queue for p in ALL_PLUMBING if p.task is not None and p.queue is not None
}


def worker_queues_option() -> str:
    """The ``celery worker`` option that consumes exactly :data:`WORKER_QUEUES`
    (what ``bitmesh up`` passes and the worker Deployment must say)."""
    return "--queues=" + ",".join(WORKER_QUEUES)
