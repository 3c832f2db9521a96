"""Layer discovery is remembered per architecture, class count and input shape."""

from __future__ import annotations

import pytest
import torch

from bitmesh.models import layer_cache
from bitmesh.models.layers import LayerProfile, discover_layers
from bitmesh.models.loading import ModelSpec, load_model

pytestmark = pytest.mark.unit

MODEL = ModelSpec(source="architecture", name_or_path="digits_cnn", input_shape=(1, 8, 8))


def test_found_once_per_name_classes_and_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layer_cache, "_found", {})
    calls: list[tuple[int, ...]] = []

    def counted(model: torch.nn.Module, shape: tuple[int, ...]) -> list[LayerProfile]:
        calls.append(tuple(shape))
        return discover_layers(model, shape)

    monkeypatch.setattr(layer_cache, "discover_layers", counted)
    model = load_model(MODEL)
    first = layer_cache.layers_of(model, MODEL)
    again = layer_cache.layers_of(load_model(MODEL), MODEL)
    assert again == first == discover_layers(model, MODEL.input_shape)
    assert again is not first  # a list of the caller's own
    other = ModelSpec(
        source="architecture", name_or_path="digits_cnn", input_shape=(1, 8, 8), num_classes=5
    )
    found = layer_cache.layers_of(load_model(other), other)
    assert calls == [(1, 8, 8), (1, 8, 8)]  # once per key
    assert found[-1].output_channels == 5
