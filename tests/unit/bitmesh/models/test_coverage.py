"""Every torchvision classification family: layers found, their share of the
weights, and MACs / BOPs / sizes against an independent count.

The oracle is torch's own ``FlopCounterMode`` (it counts every matmul and
convolution by module, groups included), which shares no code with
``discover_layers``. ViT-B is built on the meta device and then given
zeroed CPU storage: counts depend on shapes only, and skipping the
random initialisation of its 86 M weights keeps the test fast.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bitmesh.costs import option_costs
from bitmesh.formats import parse_option
from bitmesh.models.layers import LayerProfile, discover_layers, weight_coverage
from bitmesh.models.loading import build_architecture

pytestmark = pytest.mark.unit

SHAPE = (3, 32, 32)
#: The issue's five (attention, depthwise, squeeze-excite, grouped convs),
#: plus one of each remaining family.
MODELS = (
    "vit_b_16",
    "swin_t",
    "convnext_tiny",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "resnet18",
    "mobilenet_v2",
    "regnet_x_400mf",
)
INT8 = parse_option("int8/int8")


#: Built without initialising weights (their buffers hold no index tables,
#: which Swin's and RegNet's do, and ViT-B's 86 M weights are the slow ones).
_SHAPE_ONLY = {"vit_b_16"}


def _shape_only(name: str) -> nn.Module:
    if name not in _SHAPE_ONLY:
        return build_architecture(name, 10, SHAPE).eval()
    with torch.device("meta"):
        model = build_architecture(name, 10, SHAPE)
    model = model.to_empty(device="cpu").eval()
    with torch.no_grad():  # garbage memory holds denormals, which run very slowly
        for tensor in (*model.parameters(), *model.buffers()):
            tensor.zero_()
    return model


@pytest.fixture(scope="module", params=MODELS)
def built(request: pytest.FixtureRequest) -> tuple[nn.Module, list[LayerProfile], dict]:
    model = _shape_only(request.param)
    layers = discover_layers(model, SHAPE)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *SHAPE))
    root = type(model).__name__
    flops = {
        name.removeprefix(f"{root}."): sum(ops.values())
        for name, ops in counter.get_flop_counts().items()
    }
    return model, layers, flops


def test_layers_hold_99_percent_of_the_weights(built: tuple) -> None:
    model, layers, _ = built
    assert weight_coverage(model, layers) >= 0.99


def test_macs_and_costs_equal_a_direct_count(built: tuple) -> None:
    model, layers, flops = built
    parameters = dict(model.named_parameters())
    for layer in layers:
        # One MAC is two FLOPs in torch's counter.
        assert 2 * layer.macs == flops[layer.name], layer.name
        weight = parameters[f"{layer.name}.weight"]
        assert layer.parameters == weight.numel()
        costs = option_costs(layer.parameters, layer.macs, INT8, layer.output_channels)
        assert costs.bops == flops[layer.name] // 2 * 8 * 8
        assert costs.size_bytes == weight.numel()


def test_depthwise_and_grouped_convs_are_costed_per_group() -> None:
    layers = {layer.name: layer for layer in discover_layers(_shape_only("mobilenet_v2"), SHAPE)}
    depthwise = layers["features.1.conv.0.0"]  # 32 channels, groups=32, 3x3, 16x16 out
    assert depthwise.weight_shape == (32, 1, 3, 3)
    assert depthwise.macs == 32 * 16 * 16 * 9


def test_list_layers_reports_the_coverage() -> None:
    from bitmesh.models.loading import ModelSpec
    from sensitivity_svc.layer_table import layer_table

    spec = ModelSpec(source="architecture", name_or_path="mobilenet_v3_small", input_shape=SHAPE)
    table = layer_table(spec, [INT8])
    model = build_architecture("mobilenet_v3_small", 10, SHAPE)
    assert table.weight_parameters == sum(p.numel() for p in model.parameters() if p.ndim >= 2)
    covered = sum(layer.parameters for layer in table.layers)
    assert table.weight_coverage == covered / table.weight_parameters
