"""The Celery application the trainer's and proxy NAS's workers run.

With ``REDIS_URL`` set, Redis is broker and result backend. Without it the
embedded default is still a real queue with a real worker: kombu's filesystem
transport and Celery's file result backend under the artifact root, which
work across processes on one machine with no server (eager mode would not be
a queue). Long work is acknowledged late, redelivered on worker loss, and one
task is prefetched at a time.
"""

from __future__ import annotations

from pathlib import Path

from celery import Celery

from bitmesh.settings import Settings, load_settings

# Longest a task may run unacknowledged before Redis redelivers it. Jobs
# checkpoint and resume, so a redelivery after a crash costs one chunk.
VISIBILITY_TIMEOUT_S = 2 * 3600


def _filesystem_config(root: Path) -> dict[str, object]:
    folders = {name: root / "queue" / name for name in ("in", "processed")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    results = root / "queue" / "results"
    results.mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": "filesystem://",
        "broker_transport_options": {
            "data_folder_in": str(folders["in"]),
            "data_folder_out": str(folders["in"]),
            "processed_folder": str(folders["processed"]),
            "store_processed": False,
        },
        "result_backend": f"file://{results}",
    }


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or load_settings()
    app = Celery("bitmesh")
    if settings.redis_url:
        broker: dict[str, object] = {
            "broker_url": settings.redis_url,
            "result_backend": settings.redis_url,
            "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S},
            "result_backend_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S},
        }
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
    )
    app.autodiscover_tasks(["trainer_svc", "proxy_nas_svc"], related_name="tasks", force=True)
    return app


app = make_celery()
