"""ResNet-18 at 224x224 against HAWQ-V3's tables and published totals (MUST-PASS)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitmesh.costs import layer_costs, total_costs
from bitmesh.models.layers import LayerProfile, discover_layers, total_macs
from bitmesh.models.loading import build_architecture

from .hawq_reference import load_reference, torchvision_name

pytestmark = pytest.mark.unit

SHAPE = (3, 224, 224)
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return build_architecture("resnet18", 1000, SHAPE).eval()


@pytest.fixture(scope="module")
def layers(resnet18: nn.Module) -> list[LayerProfile]:
    return discover_layers(resnet18, SHAPE)


def test_parameter_count(resnet18: nn.Module) -> None:
    assert sum(p.numel() for p in resnet18.parameters()) == 11_689_512


def test_layer_list_and_total_macs(layers: list[LayerProfile]) -> None:
    assert len(layers) == 21  # 20 convolutions + fc
    assert layers[0].name == "conv1" and layers[-1].name == "fc"
    assert layers[-1].kind == "linear" and layers[-1].macs == 512 * 1000
    assert total_macs(layers) == pytest.approx(1.82e9, rel=0.01)


def test_per_layer_macs_and_weights_equal_hawq(layers: list[LayerProfile]) -> None:
    reference = load_reference("resnet18")
    by_name = {layer.name: layer for layer in layers}
    names = [torchvision_name(name) for name in reference["ilp_layer_order"]]
    assert len(names) == 19
    assert [by_name[name].macs for name in names] == reference["bops"]["values_as_written"]
    assert [by_name[name].parameters for name in names] == reference["parameters"][
        "values_as_written"
    ]
    # HAWQ leaves exactly the first conv and the fc out of its ILP.
    assert set(by_name) - set(names) == {"conv1", "fc"}


def _model_costs(layers: list[LayerProfile], bits: int, edge_bits: int) -> tuple[float, float]:
    """(size MiB, GBOPs) with the first and last layer at ``edge_bits``, as HAWQ does."""
    edges = {layers[0].name, layers[-1].name}
    total = total_costs(
        layer_costs(
            layer.parameters,
            layer.macs,
            edge_bits if layer.name in edges else bits,
            edge_bits if layer.name in edges else bits,
        )
        for layer in layers
    )
    return total.size_bytes / MIB, total.bops / 1e9


def test_totals_match_hawq_model_zoo(layers: list[LayerProfile]) -> None:
    rows = {
        row[0]: row for row in load_reference("resnet18")["published_results_model_zoo_md"]["rows"]
    }
    for scheme, bits, edge_bits in (
        ("fp32", 32, 32),
        ("uniform8 (W8A8)", 8, 8),
        ("uniform4 (W4A4)", 4, 8),
    ):
        size_mib, gbops = _model_costs(layers, bits, edge_bits)
        published_size, published_gbops = rows[scheme][1], rows[scheme][2]
        assert size_mib == pytest.approx(published_size, abs=0.05), scheme
        # The W4A4 row reads 34 where the formula gives 34.7: HAWQ rounds down.
        assert gbops == pytest.approx(published_gbops, rel=0.025), scheme
