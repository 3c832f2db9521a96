"""Layer discovery remembered per torchvision architecture, within a process.

:func:`~bitmesh.models.layers.discover_layers` is a forward pass with hooks
(0.4 s for a resnet18 at 3x32x32 on the shared 2-core machine), and a
pipeline pays it in several places for one model: ListLayers, each
sensitivity request, and every training job twice (at submission and in the
worker). A torchvision architecture's layers (names, weight shapes, MACs)
follow from its name, class count and input shape alone, never from its
weights, so that triple is the key. A program file is discovered each time:
its structure is its content.
"""

from __future__ import annotations

import threading

from torch import nn

from bitmesh.models.layers import LayerProfile, discover_layers
from bitmesh.models.loading import ModelSpec

#: A few entries per process: one per architecture, class count and input shape used.
MAX_ENTRIES = 64

_found: dict[tuple[str, int, tuple[int, ...]], tuple[LayerProfile, ...]] = {}
_lock = threading.Lock()


def layers_of(model: nn.Module, spec: ModelSpec) -> list[LayerProfile]:
    """The quantizable layers of ``model`` (built from ``spec``), a list of the caller's own."""
    if spec.source != "architecture":
        return discover_layers(model, spec.input_shape)
    key = (spec.name_or_path, spec.num_classes, tuple(spec.input_shape))
    with _lock:
        found = _found.get(key)
    if found is None:
        found = tuple(discover_layers(model, spec.input_shape))
        with _lock:
            if len(_found) >= MAX_ENTRIES:
                _found.clear()
            _found[key] = found
    return list(found)
