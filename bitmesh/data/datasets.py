"""The data a job calibrates, measures sensitivity or trains on.

Three kinds (the proto's ``DatasetRef``), all usable with nothing downloaded:

- ``digits``: scikit-learn's digits, real 8x8 handwritten digits that ship
  with the package. Pixels scaled to [0, 1], then normalised with the training
  split's mean and std; a fixed stratified 80/20 train/test split (seed 0) that
  never depends on ``spec.seed``, so every service sees the same test set.
- ``synthetic``: seeded Gaussian tensors of any shape whose class means differ,
  so a model can learn them (useful for shapes like 3x224x224).
- ``image_folder``: a torchvision ImageFolder tree, resized and center-cropped
  to ``shape``, then normalised with ``mean``/``std`` when given. If the
  folder has ``train/`` and ``test/`` subfolders they are the splits;
  otherwise a fixed stratified 80/20 split of the one tree. Its contents are
  checked before use (:func:`check_dataset`): a class with no images or a
  file that is not an image is the user's to fix, not a worker's crash.

``subset_size`` takes a seeded random subset (``spec.seed``), e.g. the small
calibration batch of a low-fidelity proxy trial; ``eval_subset_size`` does the
same for the test split every evaluation reads (:meth:`DatasetSpec.eval_split`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import struct
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from bitmesh.data.array_cache import cached_arrays
from bitmesh.data.spec import (
    DIGITS_NUM_CLASSES,
    DIGITS_SHAPE,
    SPLITS,
    DatasetKind,
    DatasetSpec,
    Split,
)
from bitmesh.errors import InvalidArgument, NotFound
from bitmesh.settings import load_settings

__all__ = [
    "DIGITS_NUM_CLASSES",
    "DIGITS_SHAPE",
    "DatasetKind",
    "DatasetSpec",
    "Split",
    "check_dataset",
    "dataset_hash",
    "load_dataset",
    "make_loader",
    "num_classes_of",
]

logger = logging.getLogger(__name__)

#: Fraction held out as the test split (digits, and image folders without splits).
_TEST_FRACTION = 0.2
#: Seed of the fixed train/test split; deliberately not ``spec.seed``.
_SPLIT_SEED = 0
#: Bumped whenever the preprocessing changes, so old cached results stop matching.
_SCHEME_VERSION = 1


# ---------------------------------------------------------------- digits


@functools.lru_cache(maxsize=1)
def _digits_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The fixed, normalised digits splits (cached: every call returns copies).

    Computed with scikit-learn once per machine (``array_cache``), so a
    process that only needs the arrays does not import scikit-learn.
    """
    import importlib.metadata

    version = importlib.metadata.version("scikit-learn")
    key = f"digits-v1-sklearn{version}-test{_TEST_FRACTION}-seed{_SPLIT_SEED}"
    arrays = cached_arrays(key, _compute_digits_splits)
    return {split: (arrays[f"{split}_x"], arrays[f"{split}_y"]) for split in SPLITS}


def _compute_digits_splits() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    images = images.astype(np.float32) / 16.0
    x_train, x_test, y_train, y_test = train_test_split(
        images,
        labels,
        test_size=_TEST_FRACTION,
        stratify=labels,
        random_state=_SPLIT_SEED,
    )
    mean, std = float(x_train.mean()), float(x_train.std())
    return {
        "train_x": ((x_train - mean) / std).reshape(-1, *DIGITS_SHAPE),
        "train_y": y_train,
        "test_x": ((x_test - mean) / std).reshape(-1, *DIGITS_SHAPE),
        "test_y": y_test,
    }


def _digits(split: str) -> TensorDataset:
    images, labels = _digits_splits()[split]
    return TensorDataset(
        torch.tensor(images, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64)
    )


# ------------------------------------------------------------- synthetic


def _derived_seed(*parts: object) -> int:
    text = ":".join(str(part) for part in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") & (2**63 - 1)


def _synthetic(spec: DatasetSpec) -> TensorDataset:
    """Class c's samples are N(mean_c, 1) with mean_c ~ N(0, 1) per element.

    The means depend on the seed only, so train and test share them; the
    samples depend on seed and split, so the splits differ.
    """
    assert spec.shape is not None
    means = torch.randn(
        (spec.num_classes, *spec.shape),
        generator=torch.Generator().manual_seed(_derived_seed("means", spec.seed)),
    )
    generator = torch.Generator().manual_seed(_derived_seed("samples", spec.seed, spec.split))
    count = spec.synthetic_size
    labels = (torch.arange(count) % spec.num_classes)[torch.randperm(count, generator=generator)]
    noise = torch.randn((count, *spec.shape), generator=generator)
    return TensorDataset(means[labels] + noise, labels)


# ---------------------------------------------------------- image folder


def _image_folder_root(spec: DatasetSpec) -> tuple[Path, bool]:
    """(folder to read, whether it still has to be split 80/20)."""
    assert spec.path is not None
    root = Path(spec.path)
    if not root.exists():
        raise NotFound(f"image folder {spec.path!r} does not exist")
    if not root.is_dir():
        raise InvalidArgument(f"image folder {spec.path!r} is not a directory")
    if (root / "train").is_dir() or (root / "test").is_dir():
        split_root = root / spec.split
        if not split_root.is_dir():
            raise NotFound(
                f"image folder {spec.path!r} has train/ or test/ but no {spec.split}/ folder"
            )
        return split_root, False
    return root, True


def _stratified_indices(targets: list[int], split: str) -> list[int]:
    """A fixed 80/20 split per class (seed ``_SPLIT_SEED``); classes of one image train only."""
    rng = np.random.default_rng(_SPLIT_SEED)
    chosen: list[int] = []
    for cls in sorted(set(targets)):
        members = [i for i, target in enumerate(targets) if target == cls]
        members = [members[i] for i in rng.permutation(len(members))]
        n_test = math.ceil(len(members) * _TEST_FRACTION) if len(members) >= 2 else 0
        chosen.extend(members[:n_test] if split == "test" else members[n_test:])
    return sorted(chosen)


#: Files an image folder may hold besides images (hidden files, e.g. .DS_Store).
def _ignored(path: Path) -> bool:
    return path.name.startswith(".")


#: Folders whose contents passed the check, by their files' identity
#: (see :func:`_check_folder_contents`); bounded, cleared when full.
_checked_folders: set[tuple[object, ...]] = set()
_CHECKED_FOLDERS_MAX = 64


def _contents_identity(folder: Path) -> tuple[object, ...]:
    """Every file under ``folder`` with its size and modification time (a
    stat each, ~1 us, against ~1 ms to open an image): adding, removing,
    renaming or rewriting a file changes the key."""
    found: list[object] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            status = os.stat(os.path.join(root, name))
            found.append((root, name, status.st_size, status.st_mtime_ns))
    return tuple(found)


def _check_folder_contents(folder: Path) -> None:
    """Every class subfolder holds images only, and at least one.

    torchvision's ImageFolder would skip files without an image suffix
    silently and fail on a broken image only when a worker reads it; a class
    with no images would end the job later. Each image's header is opened
    here (no pixels decoded), so a renamed text file is caught too.

    A folder that passed is remembered by its files' names, sizes and
    modification times, so the same folder is not opened again image by
    image for every request and job (about 1 ms per image: seconds for a
    real data set, and a pipeline checks its folder about ten times). A file
    rewritten within the clock's granularity keeping its size escapes the
    key; decoding it in the job still refuses it with the same message
    (``_load_rgb``).
    """
    cap = max_image_pixels()  # once: reading the settings costs ~10 ms
    try:
        key = (_contents_identity(folder), cap)
    except OSError:
        key = None
    if key is not None and key in _checked_folders:
        return
    _check_folder_files(folder, cap)
    if key is not None:
        if len(_checked_folders) >= _CHECKED_FOLDERS_MAX:
            _checked_folders.clear()
        _checked_folders.add(key)


def _check_folder_files(folder: Path, cap: int) -> None:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

    try:
        classes, _ = find_classes(str(folder))
    except FileNotFoundError as exc:
        raise InvalidArgument(
            f"image folder {str(folder)!r} has no class subfolders "
            "(expected <class>/<image>.png|jpg...)"
        ) from exc
    for cls in classes:
        files = sorted(p for p in (folder / cls).rglob("*") if p.is_file() and not _ignored(p))
        images = [p for p in files if p.suffix.lower() in IMG_EXTENSIONS]
        others = [p for p in files if p.suffix.lower() not in IMG_EXTENSIONS]
        if others:
            shown = ", ".join(p.relative_to(folder).as_posix() for p in others[:3])
            raise InvalidArgument(
                f"image folder {str(folder)!r} holds {len(others)} file(s) that are not images "
                f"({shown}{' ...' if len(others) > 3 else ''}): remove them (images: "
                f"{', '.join(IMG_EXTENSIONS)})"
            )
        if not images:
            raise InvalidArgument(
                f"class {cls!r} of image folder {str(folder)!r} has no images: add some or "
                "remove the empty class folder"
            )
        for path in images:
            check_image(path, folder, cap)


def max_image_pixels() -> int:
    """The pixels one image may have (``BITMESH_MAX_IMAGE_PIXELS``), read when
    a folder is opened so the services and the Celery workers agree."""
    return load_settings().max_image_pixels


def _image_name(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return str(path)


#: What PIL raises for a file it cannot read or decode (truncated data,
#: corrupt headers, unknown modes). UnidentifiedImageError is an OSError.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
)


def _refuse_image(name: str, folder: Path, exc: BaseException) -> InvalidArgument:
    return InvalidArgument(
        f"{name} in image folder {str(folder)!r} is not a readable image "
        f"({type(exc).__name__}): replace or remove it"
    )


def _refuse_bomb(name: str, folder: Path, pixels: int | None, cap: int) -> InvalidArgument:
    size = f"{pixels:,} pixels" if pixels is not None else "more pixels than twice the cap"
    return InvalidArgument(
        f"{name} in image folder {str(folder)!r} has {size}, over the cap of {cap:,} "
        "(BITMESH_MAX_IMAGE_PIXELS): a decompression bomb or an image too large to decode; "
        "shrink it, remove it, or ask the operator to raise the cap"
    )


def check_image(path: Path, folder: Path, cap: int) -> tuple[int, int]:
    """The image's (width, height) from its header, no pixels decoded; refuses
    a file PIL cannot identify and one with more than ``cap`` pixels, naming
    the file (INVALID_ARGUMENT): a small PNG can declare a 100,000 x 100,000
    canvas that would take 30 GB to decode."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = cap  # PIL's own check, in every decode after this
    name = _image_name(path, folder)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        raise _refuse_bomb(name, folder, None, cap) from None
    except _DECODE_ERRORS as exc:
        raise _refuse_image(name, folder, exc) from None
    if width * height > cap:
        raise _refuse_bomb(name, folder, width * height, cap)
    return width, height


def _load_rgb(folder: Path, cap: int, path: str) -> Any:
    """ImageFolder's loader, with the checks of :func:`check_image` and decode
    errors (a truncated file passes the header check) as INVALID_ARGUMENT
    naming the file, instead of an internal error in the job."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = cap
    name = _image_name(Path(path), folder)
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > cap:
                raise _refuse_bomb(name, folder, width * height, cap)
            return image.convert("RGB")
    except Image.DecompressionBombError:
        raise _refuse_bomb(name, folder, None, cap) from None
    except _DECODE_ERRORS as exc:
        raise _refuse_image(name, folder, exc) from None


def check_dataset(spec: DatasetSpec) -> None:
    """Refuse data no job could read, before anything is queued: for an image
    folder, both splits' class folders and files (see ``_check_folder_contents``)."""
    if spec.kind != "image_folder":
        return
    folders = {_image_folder_root(replace(spec, split=split))[0] for split in SPLITS}  # type: ignore[arg-type]
    for folder in sorted(folders):
        _check_folder_contents(folder)


def _image_folder(spec: DatasetSpec) -> Dataset[Any]:
    from torchvision import datasets, transforms

    assert spec.shape is not None
    folder, needs_split = _image_folder_root(spec)
    _check_folder_contents(folder)
    channels, height, width = spec.shape
    steps: list[Any] = [transforms.Grayscale(1)] if channels == 1 else []
    steps += [
        transforms.Resize(min(height, width)),
        transforms.CenterCrop((height, width)),
        transforms.ToTensor(),
    ]
    if spec.mean:
        steps.append(
            transforms.Normalize(
                spec.mean * (channels if len(spec.mean) == 1 else 1),
                spec.std * (channels if len(spec.std) == 1 else 1),
            )
        )
    try:
        dataset = datasets.ImageFolder(
            str(folder),
            transform=transforms.Compose(steps),
            loader=functools.partial(_load_rgb, folder, max_image_pixels()),
        )
    except FileNotFoundError as exc:
        raise InvalidArgument(
            f"image folder {str(folder)!r} has no images in class subfolders "
            f"(expected <class>/<image>.png|jpg...): {exc}"
        ) from exc
    if needs_split:
        indices = _stratified_indices(list(dataset.targets), spec.split)
        if not indices:
            raise InvalidArgument(
                f"the {spec.split} split of image folder {spec.path!r} is empty: add images "
                "or give train/ and test/ subfolders"
            )
        return Subset(dataset, indices)
    return dataset


def _image_folder_classes(spec: DatasetSpec) -> list[str]:
    from torchvision.datasets.folder import find_classes

    folder, _ = _image_folder_root(spec)
    try:
        classes, _ = find_classes(str(folder))
    except FileNotFoundError as exc:
        raise InvalidArgument(f"image folder {str(folder)!r} has no class subfolders") from exc
    return classes


# ------------------------------------------------------------------- API


def _subset(dataset: Dataset[Any], size: int, seed: int) -> Dataset[Any]:
    total = len(dataset)  # type: ignore[arg-type]
    if size == 0 or size >= total:
        if size > total:
            logger.info("subset_size %d >= dataset size %d: using all of it", size, total)
        return dataset
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, sorted(order[:size].tolist()))


def load_dataset(spec: DatasetSpec) -> Dataset[Any]:
    """The split ``spec`` names, as (sample tensor, integer label) pairs.

    Raises NotFound for a missing image folder and InvalidArgument for an
    empty or malformed one.
    """
    if spec.kind == "digits":
        dataset: Dataset[Any] = _digits(spec.split)
    elif spec.kind == "synthetic":
        dataset = _synthetic(spec)
    else:
        dataset = _image_folder(spec)
    return _subset(dataset, spec.subset_size, spec.seed)


def num_classes_of(spec: DatasetSpec) -> int:
    """Number of classes: 10 for digits, ``num_classes`` for synthetic data, and
    the number of class subfolders for an image folder (``num_classes`` is
    ignored there: the folder is the truth)."""
    if spec.kind == "digits":
        return DIGITS_NUM_CLASSES
    if spec.kind == "synthetic":
        return spec.num_classes
    return len(_image_folder_classes(spec))


def _image_folder_listing(spec: DatasetSpec) -> list[tuple[str, int, int]]:
    assert spec.path is not None
    root = Path(spec.path)
    if not root.is_dir():
        raise NotFound(f"image folder {spec.path!r} does not exist")
    listing = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            stat = path.stat()
            listing.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return listing


def dataset_hash(spec: DatasetSpec) -> str:
    """sha256 (hex) that changes when the samples ``load_dataset(spec)`` returns would.

    Built-in kinds hash what determines their content (the spec's relevant
    fields and the library version that generates them); an image folder
    hashes its sorted relative file list with sizes and modification times,
    not its absolute path.
    """
    fields = asdict(spec)
    fields["scheme"] = _SCHEME_VERSION
    for name in ("mean", "std", "eval_subset_size"):
        if not fields[name]:
            del fields[name]  # unset: hashes stay those of specs before these fields
    if spec.kind == "digits":
        import sklearn

        fields.update(sklearn=sklearn.__version__, path=None, synthetic_size=None)
        if spec.subset_size == 0:
            fields["seed"] = None  # the digits split never depends on the seed
    elif spec.kind == "synthetic":
        fields.update(torch=torch.__version__.split("+")[0], path=None)
    else:
        fields.update(path=None, synthetic_size=None, files=_image_folder_listing(spec))
        if spec.subset_size == 0:
            fields["seed"] = None
    text = json.dumps(fields, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def make_loader(
    dataset: Dataset[Any],
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    *,
    drop_last: bool = False,
) -> DataLoader[Any]:
    """A single-process loader whose shuffling order depends only on ``seed``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgument(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=0,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
    )
