"""QuantLayer with block-scaled formats: which axis an input blocks along, and
NVFP4's running range as its tensor scale."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitmesh.formats import get_format, parse_option
from bitmesh.quant import fake_quantize
from bitmesh.quant.blocked import fake_quantize_blocked
from bitmesh.quant.qmodel import QuantSettings, wrap_with_config

pytestmark = pytest.mark.unit


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(40, 8, 3, padding=1)
        self.fc = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # (N, 8, 4, 4)
        return self.fc(y.reshape(y.shape[0], 2, 64))  # a Linear on (N, T, C)


def test_inputs_block_along_their_reduction_dim_and_weights_along_input_channels() -> None:
    torch.manual_seed(0)
    net = _Net().eval()
    x = torch.randn(3, 40, 4, 4)
    reference = {
        "conv": lambda inp: net.conv._conv_forward(
            fake_quantize_blocked(inp, get_format("mxfp4"), axis=1),
            fake_quantize(net.conv.weight, get_format("mxfp4")),
            net.conv.bias,
        ),
        "fc": lambda inp: F.linear(
            fake_quantize_blocked(inp, get_format("mxfp8_e4m3"), axis=-1),
            fake_quantize(net.fc.weight, get_format("int4_g32")),
            net.fc.bias,
        ),
    }
    with torch.no_grad():
        y = reference["conv"](x)
        want = reference["fc"](y.reshape(3, 2, 64))
    config = {"conv": parse_option("mxfp4"), "fc": parse_option("int4_g32/mxfp8_e4m3")}
    layers = wrap_with_config(net, config, QuantSettings(), x)
    with torch.no_grad():
        net.train()
        net(x)  # ranges seen (the MX recipes do not use them)
        net.eval()
        got = net(x)
    assert torch.equal(got, want)
    assert layers["fc"].block_axis == -1 and layers["conv"].block_axis == 1


def test_nvfp4_inputs_take_the_running_range_as_tensor_scale() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(32, 4)).eval()
    calibrate = torch.randn(8, 32)
    layers = wrap_with_config(net, {"0": parse_option("nvfp4/nvfp4")}, QuantSettings(), calibrate)
    net.train()
    with torch.no_grad():
        net(calibrate)
    net.eval()
    clip = float(calibrate.abs().max())
    assert layers["0"].activation_clip() == pytest.approx(clip)
    x = torch.randn(8, 32) * 3  # beyond the calibrated range: saturates at it
    with torch.no_grad():
        got = net(x)
        want = F.linear(
            fake_quantize(x, get_format("nvfp4"), clip=clip),
            fake_quantize(net[0].inner.weight, get_format("nvfp4")),
            net[0].inner.bias,
        )
    assert torch.equal(got, want)
    assert not torch.equal(
        got, F.linear(fake_quantize(x, get_format("nvfp4")), net[0].inner.weight)
    )
