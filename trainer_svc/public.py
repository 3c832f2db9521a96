"""What the trainer offers other services in-process: the one module proxy NAS imports.

Why: a proxy NAS trial *is* a trainer QAT request, trained by the same
workers. proxy_nas_svc used to import six trainer modules (specs, loop,
execute, workspace, config, celery_app), so nothing said which trainer names
were a contract and any move inside the trainer could break the search.
This module is that contract, and ``tests/unit/proxy_nas_svc/test_boundary.py``
fails when proxy_nas_svc imports any other trainer module.

Torch-free at import, like the proxy service itself (its lean-import test):
the functions that need torch import it when called. No Celery app either:
:func:`make_celery` builds one when called, so importing proxy NAS's shared
task module never imports the trainer's app or tasks (no import cycle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainer_svc.config import TrainerSettings
from trainer_svc.keepalive import Action, keep_alive, redis_delivery_toucher
from trainer_svc.specs import Distillation, QatSpec, TrainingRequest, TrainingSettings

if TYPE_CHECKING:
    from celery import Celery

    from bitmesh.settings import Settings
    from trainer_svc.loop import LoopIO
    from trainer_svc.outcome import Outcome

__all__ = [
    "Action",
    "Distillation",
    "LoopIO",
    "QatSpec",
    "TrainerSettings",
    "TrainingRequest",
    "TrainingSettings",
    "execute",
    "keep_alive",
    "make_celery",
    "redis_delivery_toucher",
    "validate",
]


def execute(request: TrainingRequest, io: LoopIO | None = None) -> Outcome:
    """Train ``request`` to its outcome, reporting to ``io`` (imports torch):
    :func:`trainer_svc.execute.execute`."""
    from trainer_svc.execute import execute as run

    return run(request, io)


def validate(request: TrainingRequest) -> None:
    """Raise what the job would raise at its start: unknown layers, data that
    does not fit the model, a missing file (imports torch). A program file is
    judged from the sandbox's table, never loaded in the calling process:
    :func:`trainer_svc.workspace.check_at_submission`."""
    from trainer_svc.workspace import check_at_submission

    check_at_submission(request)


def make_celery(settings: Settings) -> Celery:
    """The workers' Celery app, for a service that only sends tasks by name
    (no task module is imported), ready to send before the service serves
    (:func:`trainer_svc.celery_app.ready_to_send`)."""
    from trainer_svc.celery_app import make_celery as make
    from trainer_svc.celery_app import ready_to_send

    return ready_to_send(make(settings, discover=False))


def __getattr__(name: str) -> Any:
    """``LoopIO`` (the loop's reporting protocol) lives beside the torch loop:
    importing it from here costs torch only when it is really used at run
    time (proxy NAS names it in annotations only)."""
    if name == "LoopIO":
        from trainer_svc.loop import LoopIO

        return LoopIO
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
