"""Training batches as a pure function of the step number.

Batch ``t`` is the ``t % n``-th slice of epoch ``t // n``'s permutation, and an
epoch's permutation depends only on (seed, epoch). A job resumed at step
``t`` from a checkpoint therefore sees exactly the batches it would have seen,
with no loader state to save.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset, default_collate

from bitmesh.errors import InvalidArgument


def _tensors_of(dataset: Dataset[Any]) -> tuple[Tensor, Tensor] | None:
    """(inputs, labels) when the data is in memory (fast path), else None."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1]
    if isinstance(dataset, Subset):
        inner = _tensors_of(dataset.dataset)
        if inner is not None:
            index = torch.as_tensor(list(dataset.indices), dtype=torch.long)
            return inner[0][index], inner[1][index]
    return None


class StepBatches:
    """Deterministic shuffled batches by step (``drop_last``: equal batch sizes)."""

    def __init__(
        self, dataset: Dataset[Any], batch_size: int, seed: int, device: torch.device
    ) -> None:
        self.dataset = dataset
        self.size = len(dataset)  # type: ignore[arg-type]
        if self.size == 0:
            raise InvalidArgument("the training data is empty")
        self.batch_size = min(batch_size, self.size)
        self.per_epoch = self.size // self.batch_size
        self.seed = seed
        self.device = device
        self._tensors = _tensors_of(dataset)
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = torch.randperm(self.size, generator=generator)
            self._epoch = epoch
        return self._order

    def indices(self, step: int) -> Tensor:
        epoch, position = divmod(step, self.per_epoch)
        start = position * self.batch_size
        return self._permutation(epoch)[start : start + self.batch_size]

    def get(self, step: int) -> tuple[Tensor, Tensor]:
        index = self.indices(step)
        if self._tensors is not None:
            x, y = self._tensors[0][index], self._tensors[1][index]
        else:
            x, y = default_collate([self.dataset[i] for i in index.tolist()])
            y = torch.as_tensor(y)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def batches_of(
    dataset: Dataset[Any], batch_size: int, device: torch.device
) -> Iterator[tuple[Tensor, Tensor]]:
    """The whole dataset in order, in batches (evaluation)."""
    tensors = _tensors_of(dataset)
    size = len(dataset)  # type: ignore[arg-type]
    for start in range(0, size, batch_size):
        if tensors is not None:
            x, y = tensors[0][start : start + batch_size], tensors[1][start : start + batch_size]
        else:
            x, y = default_collate(
                [dataset[i] for i in range(start, min(size, start + batch_size))]
            )
            y = torch.as_tensor(y)
        yield x.to(device), y.to(device)
