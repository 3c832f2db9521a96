"""discover_layers: names, order, kinds, MACs, and the TorchScript/export paths."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from bitmesh.errors import InvalidArgument
from bitmesh.models.digits_cnn import DigitsCNN
from bitmesh.models.layers import LayerProfile, discover_layers, total_macs

pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore:`torch.jit")]


def test_digits_cnn_layers_by_hand() -> None:
    layers = discover_layers(DigitsCNN(), (1, 8, 8))
    assert [layer.name for layer in layers] == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert [layer.kind for layer in layers] == ["conv2d"] * 3 + ["linear"] * 2
    # conv1: 16 x 8 x 8 outputs, each 1 x 3 x 3 MACs; conv2: 32x8x8 x 16x3x3;
    # conv3 after 2x2 pooling: 32x4x4 x 32x3x3; fc1: 128 -> 64; fc2: 64 -> 10.
    expected_macs = [16 * 64 * 9, 32 * 64 * 16 * 9, 32 * 16 * 32 * 9, 128 * 64, 64 * 10]
    assert [layer.macs for layer in layers] == expected_macs
    assert layers[0] == LayerProfile(
        name="conv1",
        kind="conv2d",
        parameters=16 * 9,
        weight_shape=(16, 1, 3, 3),
        output_channels=16,
        macs=16 * 64 * 9,
        bias_parameters=0,
    )
    assert layers[3].parameters == 128 * 64
    assert layers[3].bias_parameters == 64
    assert total_macs(layers) == sum(expected_macs)


class _Mixed(nn.Module):
    """Conv1d, grouped and strided Conv2d, Conv3d, a Linear over a sequence
    called twice, and a module never called; defined out of forward order."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Linear(5, 5)
        self.head = nn.Linear(16, 3)
        self.seq = nn.Linear(6, 8)
        self.conv3d = nn.Conv3d(2, 4, kernel_size=(1, 3, 3), padding=(0, 1, 1))
        self.grouped = nn.Conv2d(4, 8, kernel_size=3, stride=2, padding=1, groups=2)
        self.conv1d = nn.Conv1d(3, 4, kernel_size=3)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 3, 8)
        y = self.conv1d(x)  # (N, 4, 6)
        z = self.conv3d(y.reshape(-1, 2, 1, 2, 6))  # (N, 4, 1, 2, 6)
        z = self.bn(self.grouped(z.reshape(-1, 4, 2, 6)))  # (N, 8, 1, 3)
        s = self.seq(y)  # (N, 4, 8): one linear over 4 positions
        s2 = self.seq(y[:, :2])  # (N, 2, 8): the same module again, 2 positions
        pooled = torch.cat([z.mean((2, 3)), s.mean(1) + s2.mean(1)], dim=1)  # (N, 16)
        return self.head(pooled)


def test_mixed_kinds_order_and_macs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bitmesh.models.layers"):
        layers = discover_layers(_Mixed(), (3, 8))
    by_name = {layer.name: layer for layer in layers}
    assert [layer.name for layer in layers] == ["conv1d", "conv3d", "grouped", "seq", "head"]
    assert [layer.kind for layer in layers] == ["conv1d", "conv3d", "conv2d", "linear", "linear"]
    assert by_name["conv1d"].macs == (4 * 6) * 3 * 3
    assert by_name["conv3d"].macs == (4 * 1 * 2 * 6) * 2 * 1 * 3 * 3
    # groups=2: each output sees in_channels / groups = 2 channels.
    assert by_name["grouped"].macs == (8 * 1 * 3) * 2 * 3 * 3
    assert by_name["grouped"].weight_shape == (8, 2, 3, 3)
    # seq runs twice: over 4 positions, then over 2; 6 -> 8 each time.
    assert by_name["seq"].macs == (4 + 2) * 6 * 8
    assert by_name["head"].macs == 16 * 3
    assert "unused" not in by_name
    assert "unused" in caplog.text


def test_mixed_model_scripted_and_exported_agree_with_hooks() -> None:
    model = _Mixed().eval()
    eager = discover_layers(model, (3, 8))
    assert discover_layers(torch.jit.script(model), (3, 8)) == eager
    exported = torch.export.export(model, (torch.zeros(1, 3, 8),)).module()
    assert discover_layers(exported, (3, 8)) == eager


def test_training_mode_is_restored() -> None:
    model = DigitsCNN().train()
    discover_layers(model, (1, 8, 8))
    assert model.training
    assert model.bn1.num_batches_tracked.item() == 0  # measured in eval mode


def test_scripted_and_exported_models_give_the_same_profiles() -> None:
    model = DigitsCNN().eval()
    eager = discover_layers(model, (1, 8, 8))
    scripted = discover_layers(torch.jit.script(model), (1, 8, 8))
    exported = discover_layers(
        torch.export.export(model, (torch.zeros(1, 1, 8, 8),)).module(), (1, 8, 8)
    )
    assert scripted == eager
    assert exported == eager


def test_scripted_sequential_names_match_named_modules() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    scripted = discover_layers(torch.jit.script(model.eval()), (3, 6, 6))
    assert [(layer.name, layer.kind) for layer in scripted] == [("0", "conv2d"), ("3", "linear")]
    assert [layer.macs for layer in scripted] == [4 * 16 * 27, 64 * 2]


def test_model_without_conv_or_linear_is_refused() -> None:
    model = nn.Sequential(nn.Flatten(), nn.ReLU())
    with pytest.raises(InvalidArgument, match=r"no quantizable \(Conv/Linear\) layers"):
        discover_layers(model, (4,))
    with pytest.raises(InvalidArgument, match="no quantizable"):
        discover_layers(torch.jit.script(model), (4,))


def test_wrong_input_shape_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match=r"input shape \(3, 8, 8\) does not fit"):
        discover_layers(DigitsCNN(), (3, 8, 8))
