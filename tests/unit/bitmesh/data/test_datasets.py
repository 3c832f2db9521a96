"""Datasets: digits split, synthetic data, image folders, subsets, hashes, loaders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bitmesh.data.datasets import (
    DatasetSpec,
    dataset_hash,
    load_dataset,
    make_loader,
    num_classes_of,
)
from bitmesh.errors import InvalidArgument, NotFound

pytestmark = pytest.mark.unit


def _tensors(dataset: torch.utils.data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    samples = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    images = torch.stack([s[0] for s in samples])
    labels = torch.tensor([int(s[1]) for s in samples])
    return images, labels


def _rows(images: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in images}


# ------------------------------------------------------------------ digits


def test_digits_fixed_stratified_split() -> None:
    train_x, train_y = _tensors(load_dataset(DatasetSpec("digits", split="train")))
    test_x, test_y = _tensors(load_dataset(DatasetSpec("digits", split="test")))
    assert (len(train_y), len(test_y)) == (1437, 360)  # 1797 images, 20 % held out
    assert train_x.shape[1:] == (1, 8, 8) and train_x.dtype == torch.float32
    assert train_y.dtype == torch.int64
    assert not _rows(train_x) & _rows(test_x)  # the 1797 images are all distinct
    train_share = np.bincount(train_y.numpy(), minlength=10) / len(train_y)
    test_share = np.bincount(test_y.numpy(), minlength=10) / len(test_y)
    assert np.abs(train_share - test_share).max() < 0.01  # stratified
    assert abs(float(train_x.mean())) < 1e-4 and abs(float(train_x.std()) - 1) < 1e-3
    assert len(torch.unique(train_x)) == 17  # the 0..16 grey levels of the real data


def test_digits_split_ignores_the_seed() -> None:
    first = _tensors(load_dataset(DatasetSpec("digits", split="test", seed=0)))
    other = _tensors(load_dataset(DatasetSpec("digits", split="test", seed=7)))
    assert torch.equal(first[0], other[0]) and torch.equal(first[1], other[1])


def test_digits_returns_copies() -> None:
    dataset = load_dataset(DatasetSpec("digits", split="test"))
    dataset[0][0].fill_(123.0)
    assert float(load_dataset(DatasetSpec("digits", split="test"))[0][0].max()) < 100


def test_seeded_subsets() -> None:
    full = _rows(_tensors(load_dataset(DatasetSpec("digits")))[0])
    a = _tensors(load_dataset(DatasetSpec("digits", subset_size=50, seed=1)))[0]
    again = _tensors(load_dataset(DatasetSpec("digits", subset_size=50, seed=1)))[0]
    b = _tensors(load_dataset(DatasetSpec("digits", subset_size=50, seed=2)))[0]
    assert len(a) == 50 and torch.equal(a, again) and not torch.equal(a, b)
    assert _rows(a) <= full
    assert len(load_dataset(DatasetSpec("digits", split="test", subset_size=10_000))) == 360


# --------------------------------------------------------------- synthetic


def test_synthetic_shape_labels_and_determinism() -> None:
    spec = DatasetSpec("synthetic", shape=(3, 4, 4), num_classes=4, synthetic_size=100, seed=3)
    x, y = _tensors(load_dataset(spec))
    assert x.shape == (100, 3, 4, 4) and x.dtype == torch.float32
    assert sorted(torch.bincount(y).tolist()) == [25, 25, 25, 25]
    again, _ = _tensors(load_dataset(spec))
    other, _ = _tensors(load_dataset(DatasetSpec("synthetic", shape=(3, 4, 4), seed=4)))
    assert torch.equal(x, again) and not torch.equal(x[:10], other[:10])


def test_synthetic_is_learnable_across_splits() -> None:
    """Class means learnt on train classify test well: the splits share them."""
    common = {"kind": "synthetic", "shape": (2, 4, 4), "num_classes": 5, "seed": 11}
    train_x, train_y = _tensors(load_dataset(DatasetSpec(**common, split="train")))
    test_x, test_y = _tensors(load_dataset(DatasetSpec(**common, split="test")))
    assert not torch.equal(train_x, test_x)
    means = torch.stack([train_x[train_y == c].mean(0) for c in range(5)]).flatten(1)
    predicted = torch.cdist(test_x.flatten(1), means).argmin(1)
    assert float((predicted == test_y).float().mean()) > 0.9


# ------------------------------------------------------------ image folder


def _write_images(root: Path, per_class: dict[str, int], size: tuple[int, int] = (12, 10)) -> None:
    rng = np.random.default_rng(0)
    for cls, count in per_class.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")


def test_image_folder_without_splits_is_split_80_20(tmp_path: Path) -> None:
    _write_images(tmp_path, {"cat": 5, "dog": 10})
    train = load_dataset(DatasetSpec("image_folder", path=str(tmp_path), shape=(3, 8, 8)))
    test = load_dataset(
        DatasetSpec("image_folder", path=str(tmp_path), shape=(3, 8, 8), split="test")
    )
    train_x, _ = _tensors(train)
    test_x, test_y = _tensors(test)
    assert train_x.shape == (12, 3, 8, 8) and test_x.shape == (3, 3, 8, 8)
    assert torch.bincount(test_y).tolist() == [1, 2]
    assert float(train_x.min()) >= 0.0 and float(train_x.max()) <= 1.0
    assert not _rows(train_x) & _rows(test_x)
    spec = DatasetSpec("image_folder", path=str(tmp_path), shape=(3, 8, 8))
    assert num_classes_of(spec) == 2


def test_image_folder_with_split_folders_and_grey(tmp_path: Path) -> None:
    _write_images(tmp_path / "train", {"a": 2, "b": 2, "c": 1})
    _write_images(tmp_path / "test", {"a": 1, "b": 1, "c": 1})
    spec = DatasetSpec("image_folder", path=str(tmp_path), shape=(1, 6, 4), split="test")
    x, y = _tensors(load_dataset(spec))
    assert x.shape == (3, 1, 6, 4) and y.tolist() == [0, 1, 2]
    assert len(load_dataset(DatasetSpec("image_folder", path=str(tmp_path), shape=(1, 6, 4)))) == 5
    assert num_classes_of(spec) == 3


def test_image_folder_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        load_dataset(DatasetSpec("image_folder", path=str(tmp_path / "no"), shape=(3, 8, 8)))
    file_path = tmp_path / "file.txt"
    file_path.write_text("x")
    with pytest.raises(InvalidArgument, match="not a directory"):
        load_dataset(DatasetSpec("image_folder", path=str(file_path), shape=(3, 8, 8)))
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    with pytest.raises(InvalidArgument, match="no images"):
        load_dataset(DatasetSpec("image_folder", path=str(empty), shape=(3, 8, 8)))
    with pytest.raises(InvalidArgument, match="no class subfolders"):
        num_classes_of(
            DatasetSpec("image_folder", path=str(tmp_path / "empty" / "cls"), shape=(3, 8, 8))
        )
    only_train = tmp_path / "only_train"
    _write_images(only_train / "train", {"a": 1})
    with pytest.raises(NotFound, match="no test/ folder"):
        load_dataset(
            DatasetSpec("image_folder", path=str(only_train), shape=(3, 8, 8), split="test")
        )


def test_image_folder_with_an_empty_split(tmp_path: Path) -> None:
    _write_images(tmp_path, {"a": 1, "b": 1})  # one image per class: all train
    spec = DatasetSpec("image_folder", path=str(tmp_path), shape=(3, 8, 8), split="test")
    with pytest.raises(InvalidArgument, match=r"test split .* is empty"):
        load_dataset(spec)


def test_image_folder_hash_follows_the_files_not_the_path(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    for root in (first, second):
        _write_images(root, {"a": 2, "b": 2})
        for path in root.rglob("*.png"):
            os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    spec_one = DatasetSpec("image_folder", path=str(first), shape=(3, 8, 8))
    spec_two = DatasetSpec("image_folder", path=str(second), shape=(3, 8, 8))
    assert dataset_hash(spec_one) == dataset_hash(spec_two)
    before = dataset_hash(spec_one)
    os.utime(first / "a" / "0.png", ns=(2_000_000_000, 2_000_000_000))
    assert dataset_hash(spec_one) != before  # a touched file counts as changed
    before = dataset_hash(spec_two)
    _write_images(second, {"c": 1})
    assert dataset_hash(spec_two) != before  # a new file
    before = dataset_hash(spec_two)
    (second / "a" / "1.png").write_bytes(b"changed")
    assert dataset_hash(spec_two) != before  # a rewritten file


# -------------------------------------------------------------- hashes


def test_builtin_hashes() -> None:
    digits = dataset_hash(DatasetSpec("digits"))
    assert digits == dataset_hash(DatasetSpec("digits", seed=9))  # seed unused without subset
    assert digits != dataset_hash(DatasetSpec("digits", split="test"))
    assert dataset_hash(DatasetSpec("digits", subset_size=5, seed=1)) != dataset_hash(
        DatasetSpec("digits", subset_size=5, seed=2)
    )
    synthetic = DatasetSpec("synthetic", shape=(3, 8, 8))
    assert dataset_hash(synthetic) == dataset_hash(DatasetSpec("synthetic", shape=(3, 8, 8)))
    assert dataset_hash(synthetic) != dataset_hash(DatasetSpec("synthetic", shape=(3, 8, 9)))
    assert dataset_hash(synthetic) != dataset_hash(
        DatasetSpec("synthetic", shape=(3, 8, 8), seed=1)
    )


# -------------------------------------------------------- specs and loaders


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"kind": "mnist"}, "dataset kind"),
        ({"kind": "digits", "split": "val"}, "split"),
        ({"kind": "digits", "subset_size": -1}, "subset_size"),
        ({"kind": "digits", "seed": -1}, "seed"),
        ({"kind": "digits", "shape": (1, 9, 9)}, "digits samples"),
        ({"kind": "digits", "num_classes": 5}, "10 classes"),
        ({"kind": "synthetic"}, "sample shape"),
        ({"kind": "synthetic", "shape": (3, 0)}, "sample shape"),
        ({"kind": "synthetic", "shape": (3, 8), "synthetic_size": 0}, "synthetic_size"),
        ({"kind": "synthetic", "shape": (3, 8), "num_classes": 0}, "num_classes"),
        ({"kind": "image_folder", "shape": (3, 8, 8)}, "needs a path"),
        ({"kind": "image_folder", "path": "/x", "shape": (2, 8, 8)}, "C 1 .grey. or 3"),
        ({"kind": "image_folder", "path": "/x"}, r"shape \(C, H, W\)"),
    ],
)
def test_bad_specs(fields: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        DatasetSpec(**fields)  # type: ignore[arg-type]


def test_num_classes_of_builtins() -> None:
    assert num_classes_of(DatasetSpec("digits")) == 10
    assert num_classes_of(DatasetSpec("synthetic", shape=(4,), num_classes=3)) == 3


def _order(seed: int) -> list[int]:
    dataset = torch.utils.data.TensorDataset(torch.arange(20))
    return [int(v) for (batch,) in make_loader(dataset, 4, shuffle=True, seed=seed) for v in batch]


def test_loader_shuffles_by_seed_only() -> None:
    assert _order(0) == _order(0)
    assert _order(0) != _order(1)
    assert sorted(_order(0)) == list(range(20))
    plain = make_loader(torch.utils.data.TensorDataset(torch.arange(5)), 2, shuffle=False)
    assert [batch.tolist() for (batch,) in plain] == [[0, 1], [2, 3], [4]]
    with pytest.raises(InvalidArgument, match="batch_size"):
        make_loader(torch.utils.data.TensorDataset(torch.arange(5)), 0)


def test_image_folder_normalisation_and_eval_subset(tmp_path: Path) -> None:
    _write_images(tmp_path / "train", {"a": 2, "b": 2})
    _write_images(tmp_path / "test", {"a": 3, "b": 3})
    plain = DatasetSpec("image_folder", path=str(tmp_path), shape=(3, 8, 8), split="test")
    scaled = DatasetSpec(
        "image_folder", path=str(tmp_path), shape=(3, 8, 8), split="test", mean=(0.5,), std=(0.25,)
    )
    x, _ = _tensors(load_dataset(plain))
    y, _ = _tensors(load_dataset(scaled))
    assert torch.allclose(y, (x - 0.5) / 0.25, atol=1e-6)
    assert dataset_hash(plain) != dataset_hash(scaled)
    subset = DatasetSpec("image_folder", path=str(tmp_path), shape=(3, 8, 8), eval_subset_size=4)
    assert len(load_dataset(subset.eval_split())) == 4 and len(load_dataset(subset)) == 4
    with pytest.raises(InvalidArgument, match="image folders"):
        DatasetSpec("digits", mean=(0.5,), std=(0.25,))


def test_image_folder_contents_are_checked(tmp_path: Path) -> None:
    from bitmesh.data.datasets import check_dataset

    spec = DatasetSpec("image_folder", path=str(tmp_path), shape=(3, 8, 8))
    _write_images(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "a" / ".DS_Store").write_bytes(b"ignored")
    check_dataset(spec)
    (tmp_path / "a" / "notes.txt").write_text("x")
    with pytest.raises(InvalidArgument, match=r"not images \(a/notes\.txt\)"):
        check_dataset(spec)
    (tmp_path / "a" / "notes.txt").unlink()
    (tmp_path / "b" / "0.png").write_text("renamed text")
    with pytest.raises(InvalidArgument, match=r"b/0\.png .* not a readable image"):
        load_dataset(spec)
    (tmp_path / "b" / "0.png").unlink()
    (tmp_path / "c").mkdir()
    with pytest.raises(InvalidArgument, match=r"class 'c' .* has no images"):
        check_dataset(spec)


def test_a_checked_folder_is_not_reopened_until_its_files_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bitmesh.data import datasets

    spec = DatasetSpec("image_folder", path=str(tmp_path), shape=(3, 8, 8))
    _write_images(tmp_path, {"a": 2, "b": 2})
    opened: list[str] = []
    real = datasets.check_image

    def counted(path: Path, folder: Path, cap: int) -> tuple[int, int]:
        opened.append(path.name)
        return real(path, folder, cap)

    monkeypatch.setattr(datasets, "check_image", counted)
    datasets.check_dataset(spec)
    assert len(opened) == 4
    datasets.check_dataset(spec)
    load_dataset(spec)
    assert len(opened) == 4  # remembered: no image opened again
    (tmp_path / "b" / "0.png").write_text("rewritten as text")  # same name, new size
    with pytest.raises(InvalidArgument, match=r"b/0\.png .* not a readable image"):
        datasets.check_dataset(spec)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_image_bombs_and_undecodable_images_name_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A header that declares more pixels than the cap, and a file whose
    pixels do not decode, are the caller's to fix: INVALID_ARGUMENT naming
    the file, not a DecompressionBombError or OSError from a job's worker."""
    from tests.hostile_images import write_png_bomb, write_truncated_png

    spec = DatasetSpec("image_folder", path=str(tmp_path), shape=(3, 8, 8))
    _write_images(tmp_path, {"a": 2, "b": 2})
    bomb = write_png_bomb(tmp_path / "b" / "bomb.png")
    with pytest.raises(InvalidArgument, match=r"b/bomb\.png .*BITMESH_MAX_IMAGE_PIXELS"):
        load_dataset(spec)
    bomb.unlink()
    # Over the cap but under twice it (where PIL itself only warns).
    monkeypatch.setenv("BITMESH_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(InvalidArgument, match=r"has 120 pixels, over the cap of 100"):
        load_dataset(spec)
    monkeypatch.delenv("BITMESH_MAX_IMAGE_PIXELS")
    write_truncated_png(tmp_path / "a" / "cut.png")
    # The header reads, so the folder passes its check; the pixels do not.
    train, test = load_dataset(spec), load_dataset(spec.eval_split())
    with pytest.raises(InvalidArgument, match=r"a/cut\.png .* not a readable image \(OSError\)"):
        for dataset in (train, test):
            for i in range(len(dataset)):  # type: ignore[arg-type]
                dataset[i]
