"""proto -> domain conversions of model and dataset references (ML services).

Defaults live here, at the edge, so every ML service fills them the same way,
and so do the caps on what a reference makes a service allocate (shapes,
classes, a synthetic set: :mod:`bitmesh.limits`), checked on the numbers
before any model or tensor is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bitmesh.errors import InvalidArgument
from bitmesh.limits import InputLimits
from bitmesh.v1 import common_pb2 as pb

if TYPE_CHECKING:
    from bitmesh.data.spec import DatasetSpec
    from bitmesh.models.spec import ModelSpec

DIGITS_ARCH = "digits_cnn"
DEFAULT_IMAGE_SHAPE = (3, 224, 224)
DIGITS_SHAPE = (1, 8, 8)


def model_spec_from_pb(ref: pb.ModelRef, limits: InputLimits | None = None) -> ModelSpec:
    from bitmesh.models.spec import ModelSpec

    limits = limits or InputLimits.current()
    which = ref.WhichOneof("source")
    if which is None:
        raise InvalidArgument("model is missing: set architecture, exported_program or torchscript")
    name = getattr(ref, which)
    shape = tuple(int(d) for d in ref.input_shape)
    if not shape:
        shape = DIGITS_SHAPE if name == DIGITS_ARCH else DEFAULT_IMAGE_SHAPE
    shape = limits.sample_shape("the model's input_shape", shape)
    num_classes = ref.num_classes
    if num_classes < 0:
        raise InvalidArgument(f"num_classes must be >= 0 (0 = default), got {num_classes}")
    if num_classes == 0:
        num_classes = 10 if (name == DIGITS_ARCH or which != "architecture") else 1000
    limits.num_classes("the model's num_classes", num_classes)
    return ModelSpec(
        source=which,
        name_or_path=name,
        input_shape=shape,
        weights_path=ref.weights or None,
        num_classes=num_classes,
    )


_DATASET_KINDS = {
    pb.DATASET_KIND_DIGITS: "digits",
    pb.DATASET_KIND_SYNTHETIC: "synthetic",
    pb.DATASET_KIND_IMAGE_FOLDER: "image_folder",
}
_SPLITS = {pb.SPLIT_UNSPECIFIED: "train", pb.SPLIT_TRAIN: "train", pb.SPLIT_TEST: "test"}


def dataset_spec_from_pb(
    ref: pb.DatasetRef, split: str | None = None, limits: InputLimits | None = None
) -> DatasetSpec:
    from bitmesh.data.spec import DatasetSpec

    limits = limits or InputLimits.current()
    kind = _DATASET_KINDS.get(ref.kind)
    if kind is None:
        raise InvalidArgument("dataset kind is missing: DIGITS, SYNTHETIC or IMAGE_FOLDER")
    if ref.subset_size < 0 or ref.eval_subset_size < 0:
        raise InvalidArgument(
            f"subset sizes must be >= 0, got {ref.subset_size} and {ref.eval_subset_size}"
        )
    shape = tuple(int(d) for d in ref.shape) or None
    if shape is not None:
        shape = limits.sample_shape("the dataset's shape", shape)
    num_classes = limits.num_classes("the dataset's num_classes", ref.num_classes or 10)
    if ref.batch_size < 0:
        raise InvalidArgument(f"batch_size must be >= 0 (0 = default), got {ref.batch_size}")
    if ref.batch_size:
        limits.batch_size("the dataset's batch_size", ref.batch_size)
    spec = DatasetSpec(
        kind=kind,  # type: ignore[arg-type]
        path=ref.path or None,
        shape=shape,
        num_classes=num_classes,
        split=split or _SPLITS[ref.split],  # type: ignore[arg-type]
        subset_size=ref.subset_size,
        seed=ref.seed,
        mean=tuple(ref.mean),
        std=tuple(ref.std),
        eval_subset_size=ref.eval_subset_size,
    )
    if spec.kind == "synthetic" and spec.shape is not None:
        # load_dataset builds it whole: a mean per class and every sample.
        limits.data_in_memory(
            "the synthetic dataset (a mean per class and every sample)",
            spec.num_classes + spec.synthetic_size,
            spec.shape,
        )
    return spec
