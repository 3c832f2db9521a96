"""Loaded models are remembered per spec and file identity, handed out as copies."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bitmesh.models import model_cache
from bitmesh.models.digits_cnn import DigitsCNN
from bitmesh.models.loading import ModelSpec
from bitmesh.models.spec import ModelSource

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    model_cache.forget_models()
    yield
    model_cache.forget_models()


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[ModelSpec]:
    """The specs ``load_model`` was really called with."""
    calls: list[ModelSpec] = []
    real = model_cache.load_model

    def counted(spec: ModelSpec) -> torch.nn.Module:
        calls.append(spec)
        return real(spec)

    monkeypatch.setattr(model_cache, "load_model", counted)
    return calls


def _weights(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    torch.save(DigitsCNN().state_dict(), path)
    return path


def _spec(weights: Path | None, source: ModelSource = "architecture") -> ModelSpec:
    return ModelSpec(
        source=source,
        name_or_path="digits_cnn",
        input_shape=(1, 8, 8),
        weights_path=None if weights is None else str(weights),
    )


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_weights_file_is_loaded_once_and_each_caller_gets_its_own_copy(
    tmp_path: Path, loads: list[ModelSpec]
) -> None:
    spec = _spec(_weights(tmp_path / "w.pt", seed=1))
    first = model_cache.load_model_copy(spec)
    with torch.no_grad():
        first.conv1.weight.zero_()  # a caller quantizing its copy in place
    second = model_cache.load_model_copy(spec)
    assert len(loads) == 1
    assert second is not first
    assert not torch.equal(second.conv1.weight, first.conv1.weight)
    assert not second.training  # eval mode, as load_model leaves it


def test_a_file_replaced_under_the_same_path_is_loaded_again(
    tmp_path: Path, loads: list[ModelSpec]
) -> None:
    path = _weights(tmp_path / "w.pt", seed=1)
    before = model_cache.load_model_copy(_spec(path))
    _weights(tmp_path / "new.pt", seed=2)
    os.replace(tmp_path / "new.pt", path)
    after = model_cache.load_model_copy(_spec(path))
    assert len(loads) == 2
    assert not _same(before, after)


def test_random_init_is_never_remembered_and_follows_the_callers_seed(
    loads: list[ModelSpec],
) -> None:
    torch.manual_seed(7)
    a = model_cache.load_model_copy(_spec(None))
    torch.manual_seed(8)
    b = model_cache.load_model_copy(_spec(None))
    torch.manual_seed(7)
    c = model_cache.load_model_copy(_spec(None))
    assert len(loads) == 3
    assert _same(a, c) and not _same(a, b)


def test_the_callers_random_stream_is_the_same_on_a_hit_and_a_miss(tmp_path: Path) -> None:
    spec = _spec(_weights(tmp_path / "w.pt", seed=1))
    draws = []
    for _ in range(2):  # a miss, then a hit
        torch.manual_seed(3)
        model_cache.load_model_copy(spec)
        draws.append(torch.rand(4))
    torch.manual_seed(3)
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], torch.rand(4))


def test_only_the_most_recent_models_are_kept(tmp_path: Path, loads: list[ModelSpec]) -> None:
    specs = [_spec(_weights(tmp_path / f"w{i}.pt", seed=i)) for i in range(3)]
    for spec in specs:
        model_cache.load_model_copy(spec)
    model_cache.load_model_copy(specs[2])  # kept: no load
    model_cache.load_model_copy(specs[0])  # evicted (MAX_ENTRIES = 2): loaded again
    assert loads == [*specs, specs[0]]


def test_a_model_for_reading_shares_the_tensors_but_not_the_module_tree(
    tmp_path: Path, loads: list[ModelSpec]
) -> None:
    spec = _spec(_weights(tmp_path / "w.pt", seed=1))
    reading = model_cache.load_model_for_reading(spec)
    again = model_cache.load_model_for_reading(spec)
    assert len(loads) == 1
    assert reading.conv1.weight is again.conv1.weight  # no copy of the weights
    reading.conv1 = torch.nn.Identity()  # a rewrite, as layer discovery makes
    copied = model_cache.load_model_copy(spec)
    assert isinstance(copied.conv1, torch.nn.Conv2d)  # the remembered tree is untouched
    assert copied.conv1.weight is not again.conv1.weight
    assert torch.equal(copied.conv1.weight, again.conv1.weight)


def test_a_model_hash_is_remembered_per_file_and_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bitmesh.models.hashing import model_hash

    path = _weights(tmp_path / "w.pt", seed=1)
    hashed: list[int] = []
    monkeypatch.setattr(model_cache, "model_hash", lambda m: hashed.append(1) or model_hash(m))
    model = model_cache.load_model_for_reading(_spec(path))
    first = model_cache.model_hash_of(_spec(path), model)
    assert first == model_hash(model)
    assert model_cache.model_hash_of(_spec(path), model) == first
    assert len(hashed) == 1  # the second answer was remembered
    _weights(tmp_path / "new.pt", seed=2)
    os.replace(tmp_path / "new.pt", path)
    replaced = model_cache.load_model_for_reading(_spec(path))
    assert model_cache.model_hash_of(_spec(path), replaced) == model_hash(replaced) != first
    random_init = model_cache.load_model_copy(_spec(None))
    model_cache.model_hash_of(_spec(None), random_init)
    model_cache.model_hash_of(_spec(None), random_init)
    assert len(hashed) == 4  # the replaced file once, random init every time
