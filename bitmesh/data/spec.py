"""What a dataset is: :class:`DatasetSpec`, validated, with no torch.

Why a module of its own: services that only carry a spec from a request to a
queue (the proxy NAS service, the trainer's edge) import it without paying
for torch (seconds of CPU at every process start); loading the data lives in
:mod:`bitmesh.data.datasets`, which re-exports everything here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from bitmesh.data.normalization import check_normalization
from bitmesh.errors import InvalidArgument

__all__ = [
    "DIGITS_NUM_CLASSES",
    "DIGITS_SHAPE",
    "SPLITS",
    "DatasetKind",
    "DatasetSpec",
    "Split",
]

DatasetKind = Literal["digits", "synthetic", "image_folder"]
Split = Literal["train", "test"]
_KINDS: tuple[str, ...] = ("digits", "synthetic", "image_folder")
SPLITS: tuple[str, ...] = ("train", "test")

DIGITS_SHAPE: tuple[int, ...] = (1, 8, 8)
DIGITS_NUM_CLASSES = 10


def _is_shape(value: object) -> bool:
    return (
        isinstance(value, tuple)
        and 1 <= len(value) <= 4
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in value)
    )


@dataclass(frozen=True)
class DatasetSpec:
    """Which data, which split, and how much of it."""

    kind: DatasetKind
    path: str | None = None
    shape: tuple[int, ...] | None = None
    num_classes: int = 10
    split: Split = "train"
    subset_size: int = 0
    seed: int = 0
    synthetic_size: int = 512
    #: Image folders: per-channel (x - mean) / std after scaling to [0, 1].
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    #: Samples of the test split evaluations use (0 = all of it).
    eval_subset_size: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InvalidArgument(
                f"dataset kind must be one of {', '.join(_KINDS)}, got {self.kind!r}"
            )
        if self.split not in SPLITS:
            raise InvalidArgument(f"split must be 'train' or 'test', got {self.split!r}")
        if self.path == "":
            object.__setattr__(self, "path", None)
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        for name in ("subset_size", "seed", "eval_subset_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgument(f"{name} must be an integer >= 0, got {value!r}")
        if self.synthetic_size < 1:
            raise InvalidArgument(f"synthetic_size must be >= 1, got {self.synthetic_size}")
        if self.num_classes < 1:
            raise InvalidArgument(f"num_classes must be >= 1, got {self.num_classes}")
        if (self.mean or self.std) and self.kind != "image_folder":
            raise InvalidArgument(
                f"normalisation applies to image folders; {self.kind} is normalised already"
            )
        getattr(self, f"_check_{self.kind}")()

    def eval_split(self) -> DatasetSpec:
        """The test split every evaluation reads (``eval_subset_size`` samples of it)."""
        return replace(self, split="test", subset_size=self.eval_subset_size)

    def _check_digits(self) -> None:
        if self.shape not in (None, DIGITS_SHAPE):
            raise InvalidArgument(f"digits samples are {DIGITS_SHAPE}, not {self.shape}")
        if self.num_classes != DIGITS_NUM_CLASSES:
            raise InvalidArgument(
                f"digits has {DIGITS_NUM_CLASSES} classes, got num_classes={self.num_classes}"
            )

    def _check_synthetic(self) -> None:
        if not _is_shape(self.shape):
            raise InvalidArgument(
                f"synthetic data needs a sample shape of 1 to 4 positive integers, "
                f"e.g. (3, 32, 32); got {self.shape!r}"
            )

    def _check_image_folder(self) -> None:
        if self.path is None:
            raise InvalidArgument("an image_folder dataset needs a path")
        shape = self.shape
        if shape is None or not _is_shape(shape) or len(shape) != 3 or shape[0] not in (1, 3):
            raise InvalidArgument(
                f"an image_folder dataset needs shape (C, H, W) with C 1 (grey) or 3 (RGB), "
                f"got {shape!r}"
            )
        if (len(self.mean) == 0) != (len(self.std) == 0):
            raise InvalidArgument("normalisation needs both mean and std, or neither")
        check_normalization(self.mean, self.std, shape[0])
