"""Import what a job runs on when a process starts, not inside its first job.

The job path imports torch, torchvision and the trainer's domain modules
lazily (``trainer_svc.jobs`` imports ``execute`` inside the run, the model
and dataset loaders import torchvision inside their functions), so the
torch-free parts of the package stay light. Left to the first job, those
imports land inside that job's wall time: on the shared 2-core machine the
first job of a fresh worker took 91 s of wall time for 6.9 s of work in
``benchmarks/bench_pipeline.py``. A Celery pool process calls
:func:`warm_imports` from ``worker_process_init`` (``trainer_svc.tasks``),
before it takes its first task, so a worker that answers a ping is warm;
the trainer service calls it before it serves, since ``StartJob`` validates
a request against the loaded model.

Only imports: nothing here builds a model, reads data or touches a device
(CUDA must not be initialised before a pool forks).
"""

from __future__ import annotations

from collections.abc import Iterable

from bitmesh import warm

#: What a training job or a proxy NAS trial imports on its way to the first step.
JOB_MODULES: tuple[str, ...] = (
    "torch",
    "torchvision.models",
    "torchvision.datasets",
    "torchvision.transforms",
    "PIL.Image",
    "trainer_svc.execute",
    "trainer_svc.workspace",
    "trainer_svc.convert",
    "proxy_nas_svc.runs",
)


def warm_imports(modules: Iterable[str] = JOB_MODULES) -> float:
    """Import the job modules (``bitmesh.warm.warm_imports``); the seconds it took."""
    return warm.warm_imports(modules)
