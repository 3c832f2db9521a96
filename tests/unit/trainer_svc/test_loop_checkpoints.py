"""When the training loop stores checkpoints, and what it says storing cost."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

from trainer_svc import loop
from trainer_svc.batches import StepBatches
from trainer_svc.loop import NullIO, train
from trainer_svc.specs import TrainingSettings

pytestmark = pytest.mark.unit


class Recording(NullIO):
    def __init__(self) -> None:
        self.saved: list[int] = []

    def save_checkpoint(self, state: dict[str, Any], step: int) -> None:
        self.saved.append(step)


def _run(settings: TrainingSettings) -> tuple[list[int], loop.LoopResult]:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(40, 4), torch.randint(0, 3, (40,)))
    batches = StepBatches(data, 8, 0, torch.device("cpu"))
    io = Recording()
    result = train(torch.nn.Linear(4, 3), batches, settings, io)
    return io.saved, result


def test_default_cadence_waits_the_minimum_time_between_checkpoints(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loop, "DEFAULT_CHECKPOINT_MIN_S", 1e9)
    saved, result = _run(TrainingSettings(steps=10))
    assert saved == [] and result.checkpoint_seconds == 0.0  # a short job stores none
    monkeypatch.setattr(loop, "DEFAULT_CHECKPOINT_MIN_S", 0.0)
    saved, result = _run(TrainingSettings(steps=10))
    assert saved == list(range(1, 10))  # every tenth of the steps once the time has passed
    assert 0.0 < result.checkpoint_seconds <= result.seconds


def test_an_explicit_interval_is_kept_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "DEFAULT_CHECKPOINT_MIN_S", 1e9)
    saved, _ = _run(TrainingSettings(steps=10, checkpoint_every=4))
    assert saved == [4, 8]
