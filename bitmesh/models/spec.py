"""Where a model comes from: :class:`ModelSpec`, validated, with no torch.

Why a module of its own: services that only carry a spec from a request to a
queue (the proxy NAS service, the trainer's edge) import it without paying
for torch (seconds of CPU at every process start); building and loading the
model lives in :mod:`bitmesh.models.loading`, which re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bitmesh.errors import InvalidArgument
from bitmesh.models.model_files import refuse_torchscript

__all__ = ["MODEL_SOURCES", "ModelSource", "ModelSpec"]

ModelSource = Literal["architecture", "exported_program", "torchscript"]
MODEL_SOURCES: tuple[str, ...] = ("architecture", "exported_program", "torchscript")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Where a model comes from and the shape of one input sample.

    ``input_shape`` has no batch dimension, e.g. ``(3, 224, 224)``.
    ``weights_path`` is an optional state_dict file (any source).
    Building one refuses TorchScript (by source or by file content), so
    every service rejects it before anything is queued.
    """

    source: ModelSource
    name_or_path: str
    input_shape: tuple[int, ...]
    weights_path: str | None = None
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.source not in MODEL_SOURCES:
            raise InvalidArgument(
                f"model source must be one of {', '.join(MODEL_SOURCES)}, got {self.source!r}"
            )
        if not self.name_or_path:
            raise InvalidArgument(
                "model name_or_path is empty: give an architecture name or a file path"
            )
        shape = tuple(self.input_shape)
        if not 1 <= len(shape) <= 4 or any(
            isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape
        ):
            raise InvalidArgument(
                f"input shape must be 1 to 4 positive integers without the batch "
                f"dimension, e.g. (3, 224, 224); got {self.input_shape!r}"
            )
        object.__setattr__(self, "input_shape", shape)
        if (
            isinstance(self.num_classes, bool)
            or not isinstance(self.num_classes, int)
            or self.num_classes < 1
        ):
            raise InvalidArgument(f"num_classes must be >= 1, got {self.num_classes!r}")
        if self.weights_path == "":
            object.__setattr__(self, "weights_path", None)
        refuse_torchscript(self.source, self.name_or_path, self.weights_path)
