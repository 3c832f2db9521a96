"""ResNet-50 at 224x224 against HAWQ-V3's tables."""

from __future__ import annotations

import pytest
import torch

from bitmesh.models.layers import LayerProfile, discover_layers, total_macs
from bitmesh.models.loading import build_architecture

from .hawq_reference import load_reference, torchvision_name

pytestmark = pytest.mark.unit

SHAPE = (3, 224, 224)


@pytest.fixture(scope="module")
def profiled() -> tuple[int, list[LayerProfile]]:
    torch.manual_seed(0)
    model = build_architecture("resnet50", 1000, SHAPE).eval()
    return sum(p.numel() for p in model.parameters()), discover_layers(model, SHAPE)


def test_parameters_and_total_macs(profiled: tuple[int, list[LayerProfile]]) -> None:
    parameter_count, layers = profiled
    assert parameter_count == 25_557_032
    assert len(layers) == 54  # 53 convolutions + fc
    assert total_macs(layers) == pytest.approx(4.09e9, rel=0.01)


def test_per_layer_values_against_hawq(profiled: tuple[int, list[LayerProfile]]) -> None:
    reference = load_reference("resnet50")
    by_name = {layer.name: layer for layer in profiled[1]}
    names = [torchvision_name(name) for name in reference["ilp_layer_order"]]
    assert len(names) == 52
    # Written in millions (count / 1e6).
    hawq_weights = [round(v * 1e6) for v in reference["parameters"]["values_as_written"]]
    hawq_macs = [round(v * 1e6) for v in reference["bops"]["values_as_written"]]
    assert [by_name[name].parameters for name in names] == hawq_weights
    # HAWQ's (pytorchcv) ResNet-50 strides the first 1x1 conv of a downsampling
    # unit; torchvision's (ResNet v1.5) strides the 3x3 conv2 instead, so its
    # conv1 there runs at 4x the spatial size: 4x the MACs. Every other layer,
    # conv2 of those units included, matches exactly.
    strided_elsewhere = {f"layer{stage}.0.conv1" for stage in (2, 3, 4)}
    for name, macs in zip(names, hawq_macs, strict=True):
        expected = 4 * macs if name in strided_elsewhere else macs
        assert by_name[name].macs == expected, name
    assert set(by_name) - set(names) == {"conv1", "fc"}
