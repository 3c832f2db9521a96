"""A loaded .pt2 gets its Conv/Linear modules back: same names, same state_dict,
same outputs, and the quantizers can wrap and train it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from bitmesh.formats import parse_option
from bitmesh.models.loading import ModelSpec, load_model
from bitmesh.quant.qmodel import QuantSettings, wrap_with_config

pytestmark = pytest.mark.unit


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, stride=2, groups=8, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.depthwise(torch.relu(self.conv(x))))
        return self.head(x.mean(dim=(2, 3)))


def _program(tmp_path: Path) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    net = _Net().eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(net, (torch.randn(2, 3, 8, 8),), dynamic_shapes=({0: batch},))
    path = tmp_path / "net.pt2"
    torch.export.save(program, path)
    spec = ModelSpec(
        source="exported_program", name_or_path=str(path), input_shape=(3, 8, 8), num_classes=5
    )
    return net, load_model(spec)


def test_layers_are_modules_again_with_the_same_state_and_outputs(tmp_path: Path) -> None:
    net, loaded = _program(tmp_path)
    assert isinstance(loaded.get_submodule("conv"), nn.Conv2d)
    depthwise = loaded.get_submodule("depthwise")
    assert isinstance(depthwise, nn.Conv2d) and depthwise.groups == 8
    assert depthwise.stride == (2, 2) and depthwise.bias is None
    assert isinstance(loaded.get_submodule("head"), nn.Linear)
    assert set(loaded.state_dict()) == set(net.state_dict())
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-6)


def test_a_lifted_program_is_wrapped_and_trained(tmp_path: Path) -> None:
    _, loaded = _program(tmp_path)
    x = torch.randn(8, 3, 8, 8)
    config = {name: parse_option("int8") for name in ("conv", "depthwise", "head")}
    layers = wrap_with_config(loaded, config, QuantSettings(), x)
    assert set(layers) == set(config)
    loaded.train()  # torch refuses this on a raw program; the flag steers the quantizers
    assert loaded.training and all(layer.training for layer in layers.values())
    loss = loaded(x).square().mean()
    loss.backward()
    assert loaded.get_parameter("head.inner.weight").grad is not None
    loaded.eval()
    assert not loaded.training
