"""The common start of every job kind: threads, data, batches, device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from trainer_svc.batches import StepBatches
from trainer_svc.workspace import Workspace, configure_threads, load_splits


@dataclass
class Prepared:
    batches: StepBatches
    test: Dataset[Any]
    example: Tensor  # the first training batch: tells which layer inputs are >= 0
    held_out: StepBatches | None = None  # training data the weights never see


def _split(data: Dataset[Any], fraction: float, seed: int) -> tuple[Dataset[Any], Dataset[Any]]:
    """(rest, held out): a seeded random ``fraction`` of ``data`` held out."""
    size = len(data)  # type: ignore[arg-type]
    count = min(size - 1, max(1, round(size * fraction)))
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed + 104_729)).tolist()
    return Subset(data, sorted(order[count:])), Subset(data, sorted(order[:count]))


def prepare(ws: Workspace, hold_out: float = 0.0) -> Prepared:
    """Pick threads, load the splits and move the model to the device; with
    ``hold_out`` > 0 that fraction of the training split is set aside."""
    settings = ws.request.training
    configure_threads(ws.layers, ws.device)
    train_data, test_data = load_splits(ws.request)
    held_out = None
    if hold_out > 0:
        train_data, reserved = _split(train_data, hold_out, settings.seed)
        held_out = StepBatches(reserved, settings.batch_size, settings.seed + 1, ws.device)
    batches = StepBatches(train_data, settings.batch_size, settings.seed, ws.device)
    ws.model.to(ws.device)
    return Prepared(batches=batches, test=test_data, example=batches.get(0)[0], held_out=held_out)
