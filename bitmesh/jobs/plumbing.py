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

    @property
    def redis_prefix(self) -> str:
        """The Redis key prefix of this store's records, events and indexes."""
        return f"bitmesh:{self.store}"


TRAINER = JobPlumbing(
    store="trainer",
    kinds=("train", "search"),
    queue="bitmesh.trainer",
    task="bitmesh.trainer.run_job",
)
SENSITIVITY = JobPlumbing(store="sensitivity", kinds=("analysis",))
PROXY_NAS = JobPlumbing(store="proxy_nas", kinds=("tune",))
# One (configuration, fidelity) trial run of a proxy search; its records live
# in the proxy NAS store, its work on workers like training's.
PROXY_NAS_TRIALS = JobPlumbing(
    store="proxy_nas",
    kinds=("trial",),
    queue="bitmesh.proxy_nas",
    task="bitmesh.proxy_nas.run_trial",
)
# Health pings from ``bitmesh status`` and the health check reach workers here.
PING = JobPlumbing(store="trainer", kinds=(), queue="bitmesh.ping", task="bitmesh.ping")

ALL_PLUMBING: tuple[JobPlumbing, ...] = (TRAINER, SENSITIVITY, PROXY_NAS, PROXY_NAS_TRIALS, PING)

# What a worker consumes (``celery worker --queues=...``): every queue above,
# in this order.
WORKER_QUEUES: tuple[str, ...] = tuple(p.queue for p in ALL_PLUMBING if p.queue is not None)
# The queues whose length scales the GPU worker pool (KEDA) and the
# ``bitmesh_queue_length`` metric reports: the ones that carry training work.
TRAINING_QUEUES: tuple[str, ...] = (TRAINER.queue or "", PROXY_NAS_TRIALS.queue or "")
