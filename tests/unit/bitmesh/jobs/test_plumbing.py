"""The job plumbing declaration is what the code really uses.

Every Celery task of the mesh is declared and routed to its declared queue,
a worker consumes every declared queue, the job kinds are the ones the
services write, and the two services' Celery modules do not import each
other. (The manifests are checked against the same declaration in
tests/unit/deploy/test_settings_drift.py.)
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest

from bitmesh.jobs.plumbing import (
    PING,
    PROXY_NAS,
    PROXY_NAS_TRIALS,
    SENSITIVITY,
    TASK_QUEUES,
    TRAINER,
    TRAINING_QUEUES,
    WORKER_QUEUES,
    worker_queues_option,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[4]


def test_queues_are_distinct_and_training_ones_are_consumed() -> None:
    assert len(set(WORKER_QUEUES)) == len(WORKER_QUEUES)
    assert set(TRAINING_QUEUES) <= set(WORKER_QUEUES)
    assert PING.queue not in TRAINING_QUEUES
    assert "celery" not in WORKER_QUEUES  # Celery's default: no worker consumes it
    assert worker_queues_option() == "--queues=" + ",".join(WORKER_QUEUES)
    with pytest.raises(LookupError, match="sensitivity"):
        _ = SENSITIVITY.queue_name


def test_every_task_of_the_worker_app_is_declared_and_routed() -> None:
    import proxy_nas_svc.tasks  # noqa: F401  (registers its shared task)
    import trainer_svc.tasks  # noqa: F401
    from trainer_svc.celery_app import app

    ours = {name for name in app.tasks if name.startswith("bitmesh.")}
    assert ours == set(TASK_QUEUES), "a task is missing from bitmesh/jobs/plumbing.py"
    for task, queue in TASK_QUEUES.items():
        assert app.amqp.router.route({}, task)["queue"].name == queue, task
    assert {q.name for q in app.conf.task_queues} == set(WORKER_QUEUES)
    # Anything sent without a route still lands on a queue workers consume.
    assert app.conf.task_default_queue in WORKER_QUEUES


def test_bitmesh_up_starts_a_worker_on_the_declared_queues() -> None:
    from bitmesh.cli.up import worker_command

    command = worker_command("w@%h", pool="solo")
    assert command[1:6] == ["-m", "celery", "-A", "trainer_svc.celery_app", "worker"]
    assert [a for a in command if a.startswith("--queues")] == [worker_queues_option()]


def test_job_kinds_are_the_ones_the_services_write() -> None:
    from proxy_nas_svc.jobs import JOB_KIND
    from sensitivity_svc.servicer import KIND
    from trainer_svc.specs import JobKind

    assert TRAINER.kinds == get_args(JobKind)
    assert SENSITIVITY.kinds == (KIND,)
    assert PROXY_NAS.kinds == (JOB_KIND,)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return names


def test_no_celery_import_cycle_between_trainer_and_proxy_nas() -> None:
    """proxy_nas_svc's task module binds to no app; trainer_svc never imports
    proxy_nas_svc (its app discovers the task module by name, lazily)."""
    assert "trainer_svc.celery_app" not in _imports(REPO / "proxy_nas_svc" / "tasks.py")
    for module in (REPO / "trainer_svc").glob("*.py"):
        assert not any(n.startswith("proxy_nas_svc") for n in _imports(module)), module.name
    assert PROXY_NAS_TRIALS.queue != TRAINER.queue
