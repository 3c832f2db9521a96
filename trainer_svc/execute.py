"""Run one training request to its outcome: the domain entry point.

No job store, no queue: :mod:`trainer_svc.jobs` wraps this for the worker,
and benchmarks and tests call it directly with a :class:`~trainer_svc.loop.NullIO`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bitmesh.devices import resolve_device
from trainer_svc.calibration import run_calibration
from trainer_svc.loop import LoopIO, NullIO
from trainer_svc.outcome import Outcome
from trainer_svc.qat import run_qat
from trainer_svc.search import run_search
from trainer_svc.specs import TrainingRequest
from trainer_svc.workspace import Workspace, validate

RUNNERS: dict[str, Callable[[Workspace, LoopIO], Outcome]] = {
    "qat": run_qat,
    "search": run_search,
    "calibration": run_calibration,
}


def execute(request: TrainingRequest, io: LoopIO | None = None) -> Outcome:
    """Validate against the model and data, then run the job kind's domain function.

    Seeded before the model is built, so a job's random initialisation (and
    everything after it) depends on its seed only. It runs on the
    ``BITMESH_DEVICE`` device (a GPU when there is one); ``prepare`` moves the
    model and every batch there."""
    torch.manual_seed(request.training.seed)
    workspace = validate(request, resolve_device())
    return RUNNERS[request.kind](workspace, io or NullIO())
