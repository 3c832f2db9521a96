"""Torch fake quantizers (torch-only subpackage, but for ``range_spec.py``).

The public names are re-exported lazily so that ``import bitmesh.quant``
itself stays cheap; the formats they take live in the torch-free
:mod:`bitmesh.formats`, the range estimator's settings in the torch-free
:mod:`bitmesh.quant.range_spec`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bitmesh.quant.fake_quant import (
        FakeQuantizer,
        compute_scale,
        fake_quantize,
        quant_range,
        weight_error_sq,
    )
    from bitmesh.quant.range_estimators import ESTIMATOR_NAMES, RangeEstimator

__all__ = [
    "ESTIMATOR_NAMES",
    "FakeQuantizer",
    "RangeEstimator",
    "compute_scale",
    "fake_quantize",
    "quant_range",
    "weight_error_sq",
]

_HOMES = {
    "FakeQuantizer": "bitmesh.quant.fake_quant",
    "compute_scale": "bitmesh.quant.fake_quant",
    "fake_quantize": "bitmesh.quant.fake_quant",
    "quant_range": "bitmesh.quant.fake_quant",
    "weight_error_sq": "bitmesh.quant.fake_quant",
    "ESTIMATOR_NAMES": "bitmesh.quant.range_estimators",
    "RangeEstimator": "bitmesh.quant.range_estimators",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'bitmesh.quant' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
