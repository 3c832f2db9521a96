"""The user's model and data, made concrete once before any stage runs.

``bitmesh run`` takes a model (a torchvision name or a ``.pt2`` file), an
optional state_dict, and a dataset whose shape and class count may be left
out. This module settles every one of them, so each stage sends the services
the same references:

- The files are uploaded to the artifact store (``uploads/<sha>/<name>``):
  every service that builds the model (sensitivity, trainer, proxy NAS)
  then reads the same bytes from inside the root, and the content hash, not
  the path, keys the stage cache. TorchScript (by name or content) and a
  ``.pt2`` with a static batch are refused first, before any upload.
- The sample shape is the model's input shape (``--input-shape``, a program's
  example input, digits' 1x8x8, else 3x224x224) unless ``--data-shape``
  says otherwise; the class count is ``--num-classes`` or the data's.
- A given model (weights, or a program file, which carries its own) is
  ``pretrained``: the FP32 stage evaluates it and it is the teacher.

Nothing here judges whether the weights fit the architecture or the data
the model: the first stage's job is refused at submission for that, by the
trainer's own checks, before anything is queued.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict, ParseDict

from bitmesh.artifacts import ArtifactStore
from bitmesh.errors import InvalidArgument, NotFound
from bitmesh.pipeline.request import PipelineRequest
from bitmesh.rpc.convert_ml import DEFAULT_IMAGE_SHAPE, DIGITS_ARCH, DIGITS_SHAPE
from bitmesh.tenants import DEFAULT_TENANT
from bitmesh.v1 import common_pb2

__all__ = ["ResolvedInputs", "resolve_inputs"]

_DIGITS_CLASSES = 10
_SYNTHETIC_CLASSES = 10


@dataclass(frozen=True)
class ResolvedInputs:
    """What every stage sends: model source and files, shapes, classes, data."""

    source: str  # ModelRef's oneof: architecture | exported_program | torchscript
    model: str  # the architecture name, or the uploaded file's path
    model_sha256: str  # of the uploaded model file ("" for an architecture)
    weights: str  # the uploaded state_dict's path ("" = none)
    weights_sha256: str
    input_shape: tuple[int, ...]
    num_classes: int
    dataset: dict[str, Any]  # the DatasetRef, as JSON (a frozen value; protos are not)
    pretrained: bool

    def model_ref(self, weights: str | None = None) -> common_pb2.ModelRef:
        """The model with ``weights`` (default: the given ones, if any)."""
        ref = common_pb2.ModelRef(
            weights=self.weights if weights is None else weights,
            input_shape=list(self.input_shape),
            num_classes=self.num_classes,
        )
        setattr(ref, self.source, self.model)
        return ref

    def dataset_ref(self, subset: int | None = None) -> common_pb2.DatasetRef:
        """The data; ``subset`` overrides the training subset (e.g. sensitivity's)."""
        ref = ParseDict(self.dataset, common_pb2.DatasetRef())
        if subset is not None:
            ref.subset_size = subset
        return ref

    def identity(self) -> dict[str, Any]:
        """What the given model is, by content: the FP32 stage's cache key."""
        return {
            "source": self.source,
            "model": self.model_sha256 or self.model,
            "weights": self.weights_sha256,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "dataset": self.dataset,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.identity(), "model_path": self.model, "weights_path": self.weights}


def _upload(store: ArtifactStore, path_text: str, what: str) -> tuple[str, str]:
    """(path inside the store, sha256) of a user's file."""
    path = Path(path_text)
    if not path.is_file():
        raise NotFound(f"{what} {path_text!r} does not exist or is not a file")
    return store.put_upload(path.read_bytes(), path.name)


def _program_input_shape(path: str, shown: str) -> tuple[int, ...]:
    """The sample shape of a ``.pt2``'s example input (torch only here)."""
    import torch

    try:
        program = torch.export.load(path)
    except Exception as exc:  # any parser failure means "not a program"
        raise InvalidArgument(
            f"{shown!r} is not a readable torch.export program (.pt2 from torch.export.save): "
            f"{type(exc).__name__}"
        ) from exc
    from bitmesh.models.exported import require_dynamic_batch

    require_dynamic_batch(program, shown)
    args: tuple[Any, ...] = tuple(program.example_inputs[0]) if program.example_inputs else ()
    if len(args) != 1 or not isinstance(args[0], torch.Tensor) or args[0].ndim < 2:
        raise InvalidArgument(
            f"{shown!r} has no single batched example input to take the sample shape from: "
            "give --input-shape C,H,W"
        )
    return tuple(int(d) for d in args[0].shape[1:])


def folder_classes(path: str) -> list[str]:
    """The class folders of an image folder (of ``train/`` when it has one),
    as torchvision's ``find_classes`` lists them, without importing it."""
    root = Path(path)
    if not root.is_dir():
        raise NotFound(f"image folder {path!r} does not exist or is not a directory")
    tree = root / "train" if (root / "train").is_dir() else root
    classes = sorted(entry.name for entry in os.scandir(tree) if entry.is_dir())
    if not classes:
        raise InvalidArgument(
            f"image folder {str(tree)!r} has no class subfolders (expected <class>/<image>.png)"
        )
    return classes


def _input_shape(request: PipelineRequest, source: str, model: str) -> tuple[int, ...]:
    if request.input_shape:
        return request.input_shape
    if source == "exported_program":
        return _program_input_shape(model, request.model)
    if request.data_shape:
        return request.data_shape
    if request.model == DIGITS_ARCH or request.dataset == "digits":
        return DIGITS_SHAPE
    return DEFAULT_IMAGE_SHAPE


def _num_classes(request: PipelineRequest) -> int:
    if request.num_classes:
        return request.num_classes
    if request.dataset.startswith("folder:"):
        return len(folder_classes(request.dataset.removeprefix("folder:")))
    if request.dataset == "synthetic":
        return request.data_classes or _SYNTHETIC_CLASSES
    return _DIGITS_CLASSES


def _dataset(request: PipelineRequest, shape: tuple[int, ...]) -> dict[str, Any]:
    from bitmesh.cli.common import dataset_ref_from

    data_shape = request.data_shape or (shape if request.dataset != "digits" else ())
    args = argparse.Namespace(
        dataset=request.dataset,
        data_shape=",".join(str(d) for d in data_shape),
        data_classes=request.data_classes
        or (_num_classes(request) if request.dataset == "synthetic" else 0),
        subset=request.calibration_subset,
        data_seed=request.seed,
        normalize=request.normalize,
        eval_subset=request.eval_subset,
    )
    ref = dataset_ref_from(args)
    return MessageToDict(ref, preserving_proto_field_name=True)


def resolve_inputs(
    request: PipelineRequest, artifact_root: str, tenant: str = DEFAULT_TENANT
) -> ResolvedInputs:
    """Upload the user's files and settle shapes and classes (see the module doc).

    Uploads go to ``tenant``'s namespace of the root, the only one whose
    files the services read for that tenant's calls (bitmesh/tenants.py)."""
    from bitmesh.cli.common import model_source
    from bitmesh.models.model_files import refuse_torchscript

    store = ArtifactStore(artifact_root).for_tenant(tenant)
    source = model_source(request.model)
    refuse_torchscript(source, request.model, request.weights)
    model, model_sha = request.model, ""
    if source != "architecture":
        model, model_sha = _upload(store, request.model, "model file")
    weights, weights_sha = "", ""
    if request.weights:
        weights, weights_sha = _upload(store, request.weights, "weights file")
    shape = _input_shape(request, source, model)
    return ResolvedInputs(
        source=source,
        model=model,
        model_sha256=model_sha,
        weights=weights,
        weights_sha256=weights_sha,
        input_shape=shape,
        num_classes=_num_classes(request),
        dataset=_dataset(request, shape),
        pretrained=bool(weights) or source != "architecture",
    )
