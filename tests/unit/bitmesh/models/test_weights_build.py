"""A torchvision architecture with a weights file is built without its random
initialisation (on the meta device, then loaded), and is the same model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from bitmesh.models.loading import ModelSpec, _loads_whole, build_architecture, load_model

pytestmark = pytest.mark.unit

SHAPE = (3, 32, 32)


@pytest.mark.parametrize("name", ["resnet18", "swin_t", "vit_b_16"])
def test_the_model_is_the_one_an_ordinary_build_loads(name: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = build_architecture(name, 10, SHAPE).eval()
    path = tmp_path / "weights.pt"
    torch.save(reference.state_dict(), path)
    spec = ModelSpec(
        source="architecture",
        name_or_path=name,
        input_shape=SHAPE,
        num_classes=10,
        weights_path=str(path),
    )
    torch.manual_seed(5)
    model = load_model(spec)
    # No random initialisation ran: the caller's random stream is untouched.
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))
    loaded, expected = model.state_dict(), reference.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_models_a_strict_load_would_not_fill_are_built_the_ordinary_way() -> None:
    class WithScratch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)
            self.register_buffer("table", torch.arange(4.0), persistent=False)

    tied = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    tied[1].weight = tied[0].weight
    assert _loads_whole(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    assert not _loads_whole(WithScratch())
    assert not _loads_whole(tied)
