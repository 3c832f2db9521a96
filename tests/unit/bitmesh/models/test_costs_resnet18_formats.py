"""ResNet-18 at 224x224: the size of every uniform configuration is a direct
count of element bits plus scale bits (issue 18's costs test).

The count here reads the modules' weight tensors, not the layer discovery,
and states each format's storage from its definition (METHODS.md section 10)
in a table of its own, so it shares nothing with ``bitmesh.costs`` but the
format names.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bitmesh.costs import average_weight_bits, option_costs, total_costs
from bitmesh.formats import BLOCK_FORMATS, FORMATS, QuantOption, get_format, parse_option
from bitmesh.models.layers import LayerProfile, discover_layers
from bitmesh.models.loading import build_architecture

pytestmark = pytest.mark.unit

SHAPE = (3, 224, 224)
#: (element bits, block size, bits per block scale, zero point, tensor-scale bits)
MX = {
    "mxfp8_e4m3": 8,
    "mxfp8_e5m2": 8,
    "mxfp6_e3m2": 6,
    "mxfp6_e2m3": 6,
    "mxfp4": 4,
    "mxint8": 8,
}


def storage(name: str) -> tuple[int, int, int, bool, int]:
    """How a format stores a weight, from its definition."""
    if name in MX:
        return MX[name], 32, 8, False, 0  # E8M0 scale per 32
    if name == "nvfp4":
        return 4, 16, 8, False, 32  # E4M3 scale per 16, FP32 per tensor
    bits, group, *rest = name.removeprefix("int").split("_")
    scale_bits = 32 if "fp32" in rest else 16
    return int(bits), int(group.removeprefix("g")), scale_bits, "zp" in rest, 0


def direct_bits(weights: list[torch.Tensor], name: str) -> int:
    """Element codes + every scale, zero point and tensor scale, counted over
    the modules' weights: blocks of input channels for each output channel
    and kernel position, a partial last block storing a full scale."""
    if name in BLOCK_FORMATS:
        bits, block, scale_bits, zero_point, tensor_bits = storage(name)
        total = 0
        for w in weights:
            out, inp = w.shape[0], w.shape[1]
            positions = math.prod(w.shape[2:])
            blocks = out * positions * -(-inp // block)
            total += w.numel() * bits + blocks * (scale_bits + (bits if zero_point else 0))
            total += tensor_bits
        return total
    fmt = FORMATS[name]
    per_channel = fmt.is_quantized
    return sum(w.numel() * fmt.bits + (32 * w.shape[0] if per_channel else 0) for w in weights)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_architecture("resnet18", 1000, SHAPE).eval()


@pytest.fixture(scope="module")
def layers(model: nn.Module) -> list[LayerProfile]:
    return discover_layers(model, SHAPE)


@pytest.fixture(scope="module")
def weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


WEIGHT_FORMATS = sorted(
    [n for n, f in FORMATS.items() if not n.startswith("uint")] + list(BLOCK_FORMATS)
)


def uniform_bits(layers: list[LayerProfile], option: QuantOption) -> tuple[float, float]:
    costs = total_costs(
        option_costs(p.parameters, p.macs, option, p.output_channels, weight_shape=p.weight_shape)
        for p in layers
    )
    return costs.total_bytes * 8, costs.scale_bytes * 8


def test_every_uniform_configuration_is_element_plus_scale_bits(
    layers: list[LayerProfile], weights: list[torch.Tensor]
) -> None:
    assert len(weights) == len(layers) == 21
    for name in WEIGHT_FORMATS:
        option = QuantOption(get_format(name), get_format("int8"))
        total, _ = uniform_bits(layers, option)
        assert total == direct_bits(weights, name), name


def test_named_numbers(layers: list[LayerProfile], weights: list[torch.Tensor]) -> None:
    """The bits per weight the issue names; conv1 (3 input channels) pays a
    whole scale for each partial block, so the model's averages sit a little
    above the per-block figures, which every other layer meets exactly."""
    params = sum(w.numel() for w in weights)
    inner = [p for p in layers if p.name != "conv1"]
    inner_params = sum(p.parameters for p in inner)

    def bits_per_weight(key: str, of: list[LayerProfile], count: int) -> float:
        costs = total_costs(
            option_costs(
                p.parameters,
                p.macs,
                parse_option(key),
                p.output_channels,
                weight_shape=p.weight_shape,
            )
            for p in of
        )
        return average_weight_bits(costs, count)

    assert bits_per_weight("mxfp4", inner, inner_params) == 4.25
    assert bits_per_weight("mxfp8_e4m3", inner, inner_params) == 8.25
    assert bits_per_weight("mxfp6_e2m3", inner, inner_params) == 6.25
    assert bits_per_weight("int4_g32", inner, inner_params) == 4.5
    # NVFP4: 4 + 8/16 per weight, plus one FP32 tensor scale per layer.
    assert bits_per_weight("nvfp4", inner, inner_params) == 4.5 + 20 * 32 / inner_params
    # The whole model, conv1 included (64 x 49 partial blocks of 3 weights).
    assert bits_per_weight("mxfp4", layers, params) == pytest.approx(4.251947, abs=1e-6)
    assert bits_per_weight("nvfp4", layers, params) == pytest.approx(4.501803, abs=1e-6)
    assert bits_per_weight("int4_g32", layers, params) == pytest.approx(4.503894, abs=1e-6)
    # Per-channel INT4 counts its FP32 scales too: 4 + 32 * 5800 channels / P.
    assert bits_per_weight("int4", layers, params) == pytest.approx(
        4 + 32 * 5800 / params, rel=1e-15
    )
    # Without the scales (weights-only budgets), every 4-bit format is 4.0.
    costs = total_costs(
        option_costs(
            p.parameters,
            p.macs,
            parse_option("nvfp4"),
            p.output_channels,
            weight_shape=p.weight_shape,
        )
        for p in layers
    )
    assert average_weight_bits(costs, params, "weights_only") == 4.0


def test_block_formats_count_bops_by_element_bits(layers: list[LayerProfile]) -> None:
    macs = sum(p.macs for p in layers)
    for key, bits in (("mxfp4/mxfp4", 4), ("nvfp4/nvfp4", 4), ("mxfp8_e4m3", 8)):
        option = parse_option(key)
        costs = total_costs(
            option_costs(
                p.parameters, p.macs, option, p.output_channels, weight_shape=p.weight_shape
            )
            for p in layers
        )
        assert costs.bops == macs * bits * bits
    w4a8 = parse_option("int4_g128/int8")
    costs = total_costs(
        option_costs(p.parameters, p.macs, w4a8, p.output_channels, weight_shape=p.weight_shape)
        for p in layers
    )
    assert costs.bops == macs * 4 * 8
