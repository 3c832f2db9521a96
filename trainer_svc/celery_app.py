"""The Celery application the trainer's and proxy NAS's workers run.

With ``REDIS_URL`` set, Redis is broker and result backend. Without it the
embedded default is still a real queue with a real worker: kombu's filesystem
transport and Celery's file result backend under the artifact root, which
work across processes on one machine with no server (eager mode would not be
a queue). Long work is acknowledged late, redelivered on worker loss, and one
task is prefetched at a time.

Queues and task names come from :mod:`bitmesh.jobs.plumbing`: every task is
routed to its declared queue (training jobs, proxy NAS trials, pings), and a
worker consumes exactly ``WORKER_QUEUES`` (``bitmesh up`` and the worker
Deployment pass ``worker_queues_option()``; with no ``-Q`` a worker consumes
the same queues, the app's ``task_queues``).
"""

from __future__ import annotations

from pathlib import Path

from celery import Celery
from kombu import Exchange, Queue

from bitmesh.jobs.plumbing import PING, TASK_QUEUES, TRAINER, WORKER_QUEUES
from bitmesh.settings import Settings, load_settings
from trainer_svc.config import TrainerSettings

# Longest a task may go unacknowledged before Redis redelivers it (a trainer
# task refreshes its delivery while it runs: trainer_svc.keepalive).
VISIBILITY_TIMEOUT_S = TrainerSettings.model_fields["visibility_timeout_s"].default


def _queue(name: str) -> Queue:
    """A queue on its own direct exchange and routing key (queues sharing a key
    would each get a copy of every message)."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def _filesystem_config(root: Path) -> dict[str, object]:
    folders = {name: root / "queue" / name for name in ("in", "processed", "control", "claimed")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    results = root / "queue" / "results"
    results.mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": "filesystem://",
        # kombu's filesystem transport, stopping at once on a worker's
        # shutdown instead of after two 2 s drains (trainer_svc/fs_transport.py).
        "broker_transport": "trainer_svc.fs_transport:Transport",
        "broker_transport_options": {
            "data_folder_in": str(folders["in"]),
            "data_folder_out": str(folders["in"]),
            "processed_folder": str(folders["processed"]),
            "control_folder": str(folders["control"]),
            # Fetched messages wait here until acked (trainer_svc/fs_transport.py).
            "claimed_folder": str(folders["claimed"]),
            "store_processed": False,
            # A folder scan every 0.02 s (kombu's default is 1 s): a queued
            # job starts, and a worker's warm shutdown ends, within 20 ms (at
            # 0.1 s each job of a pipeline waited 50 ms on average to be
            # picked up); a scan of an empty folder costs microseconds.
            "polling_interval": 0.02,
        },
        "result_backend": f"file://{results}",
    }


def _redis_config(url: str, trainer: TrainerSettings) -> dict[str, object]:
    transport = {
        "visibility_timeout": trainer.visibility_timeout_s,
        "unacked_restore_interval": trainer.restore_interval_s,
        # Scan on every sweep: one ZRANGE per interval and worker.
        "unacked_restore_throttle": 1,
    }
    return {
        "broker_url": url,
        "result_backend": url,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": trainer.visibility_timeout_s},
    }


def make_celery(
    settings: Settings | None = None,
    trainer: TrainerSettings | None = None,
    *,
    discover: bool = True,
) -> Celery:
    """The app for ``settings``. ``discover=False`` (a service that only sends
    tasks by name) skips importing the task modules."""
    settings = settings or load_settings()
    trainer = trainer or TrainerSettings()
    app = Celery("bitmesh")
    if settings.redis_url:
        broker = _redis_config(settings.redis_url, trainer)
    else:
        broker = _filesystem_config(Path(settings.artifact_root.removeprefix("file://")))
    app.conf.update(
        **broker,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        task_track_started=True,
        # A task sent with no route still lands where every worker listens
        # (never on Celery's ``celery``, which no worker consumes).
        task_default_queue=PING.queue,
        task_queues=tuple(_queue(name) for name in WORKER_QUEUES),
        task_routes={task: {"queue": queue} for task, queue in TASK_QUEUES.items()},
    )
    if discover:
        # Lazily (when the worker starts): trainer_svc.tasks imports this
        # module; proxy_nas_svc.tasks imports no app (shared tasks).
        app.autodiscover_tasks(["trainer_svc", "proxy_nas_svc"], related_name="tasks")
    return app


def restore_lost_fetches(celery: Celery) -> int:
    """Embedded queue: put back the messages that processes now dead fetched
    and never acknowledged (trainer_svc/fs_transport.py); Redis: nothing (it
    restores unacknowledged deliveries itself)."""
    options = celery.conf.broker_transport_options or {}
    if "claimed_folder" not in options:
        return 0
    from trainer_svc.fs_transport import restore_claimed

    return restore_claimed(options["claimed_folder"], options["data_folder_in"])


def ready_to_send(celery: Celery) -> Celery:
    """``celery`` with what its first ``send_task`` would set up made now.

    Why: Celery imports the result backend's module and builds the producer
    pool on the first send, 0.4 s (loaded machine) of the first StartJob or
    StartSearch a service serves; the rest of its sends take a millisecond.
    A service calls this while it starts, before it serves. Neither step
    connects to the broker, so a service still starts while Redis is down."""
    _ = celery.backend
    _ = celery.amqp.producer_pool
    return celery


def send_job(celery: Celery, job_id: str) -> None:
    """Send a job id to the trainer queue by task name (no task code needed)."""
    celery.send_task(TRAINER.task_name, args=[job_id], queue=TRAINER.queue_name)


app = make_celery()
