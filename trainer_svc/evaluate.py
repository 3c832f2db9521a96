"""Every job ends here: the quantized model on the held-out split, and the
costs of its configuration."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from bitmesh.costs import LayerCosts
from bitmesh.formats import QuantOption
from bitmesh.models.layers import LayerProfile
from trainer_svc.batches import batches_of
from trainer_svc.costing import config_costs

EVAL_BATCH_SIZE = 256


@dataclass(frozen=True)
class Evaluation:
    """Held-out accuracy (0..1) and mean cross-entropy, with the costs."""

    accuracy: float
    loss: float
    samples: int
    costs: LayerCosts

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "samples": self.samples,
            "costs": asdict(self.costs),
        }


def accuracy_and_loss(
    model: nn.Module, dataset: Dataset[Any], device: torch.device
) -> tuple[float, float, int]:
    """(accuracy, mean cross-entropy, samples) in eval mode; the caller's mode is restored."""
    was_training = model.training
    model.eval()
    correct, loss_sum, count = 0, 0.0, 0
    try:
        with torch.no_grad():
            for x, y in batches_of(dataset, EVAL_BATCH_SIZE, device):
                logits = model(x)
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(dim=1) == y).sum())
                count += int(y.numel())
    finally:
        model.train(was_training)
    return correct / max(1, count), loss_sum / max(1, count), count


def evaluate(
    model: nn.Module,
    dataset: Dataset[Any],
    device: torch.device,
    layers: Sequence[LayerProfile],
    config: Mapping[str, QuantOption],
) -> Evaluation:
    accuracy, loss, samples = accuracy_and_loss(model, dataset, device)
    return Evaluation(
        accuracy=accuracy, loss=loss, samples=samples, costs=config_costs(layers, config)
    )
