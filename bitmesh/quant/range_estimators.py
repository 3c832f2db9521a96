"""Activation range estimators: how an activation quantizer picks its clip.

Weights are quantized with the range of the tensor itself; activations change
with every batch, so their quantizer keeps a running range, updated in
training mode and frozen in eval mode. The three estimators are the knobs of
HAWQ-V3's training script that LCPAQ searches (METHODS.md section 7):

- ``minmax``: running maximum of the batch maxima (never shrinks).
- ``ema``: exponential moving average of the batch maxima.
- ``percentile``: exponential moving average of a batch percentile, which
  ignores a few outliers that would otherwise waste the grid.

The momentum follows HAWQ-V3's ``act_range_momentum`` convention: it is the
weight of the *old* value, ``r <- m * r + (1 - m) * batch``. The first batch
sets the range directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
from torch import Tensor

from bitmesh.errors import InvalidArgument
from bitmesh.quant.range_spec import ESTIMATOR_NAMES, RangeEstimator

__all__ = ["ESTIMATOR_NAMES", "RangeEstimator", "batch_statistic", "update_range"]


def _magnitudes(x: Tensor, unsigned: bool) -> Tensor:
    """What the clip must cover: |x|, or only the positive part for unsigned
    formats (negatives clamp to 0 whatever the clip)."""
    x = x.detach().to(torch.float32)
    return x.clamp_min(0.0) if unsigned else x.abs()


def _max_statistic(x: Tensor, unsigned: bool, estimator: RangeEstimator) -> Tensor:
    return _magnitudes(x, unsigned).amax()


def _percentile_statistic(x: Tensor, unsigned: bool, estimator: RangeEstimator) -> Tensor:
    # kthvalue instead of torch.quantile: no input-size cap and no sort. Rank
    # ceil(p n) is numpy's "inverted_cdf" percentile (a value that occurs).
    flat = _magnitudes(x, unsigned).reshape(-1)
    k = min(flat.numel(), max(1, math.ceil(estimator.percentile / 100.0 * flat.numel())))
    return flat.kthvalue(k).values


def _running_max(running: Tensor, batch: Tensor, estimator: RangeEstimator) -> Tensor:
    return torch.maximum(running, batch)


def _moving_average(running: Tensor, batch: Tensor, estimator: RangeEstimator) -> Tensor:
    return estimator.momentum * running + (1.0 - estimator.momentum) * batch


_Statistic = Callable[[Tensor, bool, RangeEstimator], Tensor]
_Combine = Callable[[Tensor, Tensor, RangeEstimator], Tensor]

_STATISTICS: Mapping[str, tuple[_Statistic, _Combine]] = MappingProxyType(
    {
        "minmax": (_max_statistic, _running_max),
        "ema": (_max_statistic, _moving_average),
        "percentile": (_percentile_statistic, _moving_average),
    }
)


def batch_statistic(x: Tensor, estimator: RangeEstimator, *, unsigned: bool = False) -> Tensor:
    """The range one batch suggests (a 0-dim float32 tensor, no grad)."""
    if x.numel() == 0:
        raise InvalidArgument("cannot estimate an activation range from an empty tensor")
    statistic, _ = _STATISTICS[estimator.name]
    with torch.no_grad():
        return statistic(x, unsigned, estimator)


def update_range(
    running: Tensor | None, x: Tensor, estimator: RangeEstimator, *, unsigned: bool = False
) -> Tensor:
    """The new running range after seeing batch ``x``; ``running=None`` means
    no batch has been seen yet, so the batch's statistic is returned as is."""
    batch = batch_statistic(x, estimator, unsigned=unsigned)
    if running is None:
        return batch
    _, combine = _STATISTICS[estimator.name]
    with torch.no_grad():
        return combine(running.to(batch), batch, estimator)
