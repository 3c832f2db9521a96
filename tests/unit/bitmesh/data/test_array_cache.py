"""The per-machine array cache: same arrays as computing them, atomic, safe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bitmesh.data import datasets
from bitmesh.data.array_cache import cache_dir, cached_arrays

pytestmark = pytest.mark.unit


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return cache_dir()


def test_computes_once_then_reads_back_the_same_arrays(cache_home: Path) -> None:
    calls: list[int] = []

    def compute() -> dict[str, np.ndarray]:
        calls.append(1)
        return {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "y": np.array([3, 1])}

    first = cached_arrays("k1", compute)
    second = cached_arrays("k1", compute)
    assert len(calls) == 1
    assert set(second) == {"x", "y"}
    for name in first:
        assert second[name].dtype == first[name].dtype
        np.testing.assert_array_equal(second[name], first[name])
    assert [p.name for p in cache_home.iterdir()] == ["k1.npz"]  # no temporary left


def test_a_corrupt_entry_is_recomputed_and_replaced(cache_home: Path) -> None:
    cache_home.mkdir(parents=True)
    (cache_home / "k2.npz").write_bytes(b"not an npz file")
    arrays = cached_arrays("k2", lambda: {"a": np.ones(3)})
    np.testing.assert_array_equal(arrays["a"], np.ones(3))
    np.testing.assert_array_equal(cached_arrays("k2", lambda: {"a": np.zeros(3)})["a"], 1)


def test_an_entry_holding_objects_is_not_unpickled(cache_home: Path) -> None:
    cache_home.mkdir(parents=True)
    np.savez(cache_home / "k3.npz", a=np.array([{"evil": 1}], dtype=object))
    arrays = cached_arrays("k3", lambda: {"a": np.arange(2)})
    np.testing.assert_array_equal(arrays["a"], np.arange(2))  # recomputed, not loaded


def test_an_unwritable_cache_still_returns_the_arrays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    np.testing.assert_array_equal(cached_arrays("k4", lambda: {"a": np.arange(3)})["a"], [0, 1, 2])


def test_cached_digits_splits_equal_scikit_learns_split(cache_home: Path) -> None:
    datasets._digits_splits.cache_clear()
    try:
        from_cache_miss = datasets._digits_splits()
        datasets._digits_splits.cache_clear()
        from_cache_hit = datasets._digits_splits()
    finally:
        datasets._digits_splits.cache_clear()
    fresh = datasets._compute_digits_splits()
    assert len(list(cache_home.iterdir())) == 1
    for split in ("train", "test"):
        for got in (from_cache_miss[split], from_cache_hit[split]):
            np.testing.assert_array_equal(got[0], fresh[f"{split}_x"])
            np.testing.assert_array_equal(got[1], fresh[f"{split}_y"])
    assert from_cache_hit["train"][0].shape == (1437, 1, 8, 8)
