"""The ML services' ceilings on what one request may make them allocate.

Why one module: a model's ``input_shape``, a data set's sample shape and
classes, a batch's size and an analysis's batches all become tensors (a probe
batch, a synthetic set's class means, the batches an analysis keeps), and the
sensitivity, trainer and proxy NAS services build them inside the request,
before any job is admitted. Unchecked, one request of a few bytes (resnet18 on
``[3, 8192, 8192]``, or a synthetic ``[3, 512, 512]`` set of 3,000 classes)
holds a service for minutes or gets it OOM-killed with its running jobs. So
the numbers are checked on the request itself, where it is parsed
(:mod:`bitmesh.rpc.convert_ml` and each service's convert step), before any
model is built or byte of data allocated.

Each cap is a setting (``BITMESH_MAX_*``, :class:`bitmesh.settings.Settings`)
whose name the refusal carries, the pattern of :mod:`solver_svc.limits`: over
a cap is RESOURCE_EXHAUSTED (the request is well formed, the service will not
hold it); a malformed number (zero, negative, a dimension no tensor can have)
is INVALID_ARGUMENT. The caps are read from the environment when a request is
parsed, as :func:`bitmesh.data.datasets.max_image_pixels` is, so the services
and the Celery workers that rebuild the request agree.

No torch here: the solver's side of the mesh may import it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

from bitmesh.errors import InvalidArgument, ResourceExhausted
from bitmesh.settings import Settings, load_settings

__all__ = ["FLOAT_BYTES", "MAX_DIM", "MAX_SAMPLE_RANK", "InputLimits"]

#: Bytes of one float32 element: what a sample costs per element in memory.
FLOAT_BYTES = 4
#: Dimensions of one sample (without the batch dimension), e.g. (3, 224, 224).
MAX_SAMPLE_RANK = 4
#: Longer is no dimension of a tensor torch indexes with 32-bit sizes; past it
#: a number is not a shape but a mistake (INVALID_ARGUMENT, not a cap).
MAX_DIM = 2**31 - 1


@dataclass(frozen=True)
class InputLimits:
    """The ceilings, one field per ``Settings.max_*`` setting of the same name."""

    max_input_elements: int = 3 * 512 * 512
    max_num_classes: int = 32_768
    max_batch_size: int = 4096
    max_batches: int = 64
    max_data_elements: int = 256 * 1024 * 1024
    max_calibration_batches: int = 10_000

    def __post_init__(self) -> None:
        for item in fields(self):
            if getattr(self, item.name) < 1:
                raise ValueError(f"BITMESH_{item.name.upper()} must be >= 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> InputLimits:
        return cls(**{item.name: getattr(settings, item.name) for item in fields(cls)})

    @classmethod
    def current(cls) -> InputLimits:
        """The caps of this process's environment (read per request: ~4 ms)."""
        return cls.from_settings(load_settings())

    # -- one sample ------------------------------------------------------------

    def sample_shape(self, what: str, shape: Sequence[int]) -> tuple[int, ...]:
        """``shape`` checked: 1 to 4 dimensions in 1..2^31-1 (else
        INVALID_ARGUMENT) whose product is within BITMESH_MAX_INPUT_ELEMENTS."""
        dims = tuple(shape)
        if not 1 <= len(dims) <= MAX_SAMPLE_RANK or any(
            isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= MAX_DIM for d in dims
        ):
            raise InvalidArgument(
                f"{what} must be 1 to {MAX_SAMPLE_RANK} integers in 1..{MAX_DIM:,} without the "
                f"batch dimension, e.g. (3, 224, 224); got {_shown(dims)}"
            )
        elements = math.prod(dims)
        if elements > self.max_input_elements:
            raise ResourceExhausted(
                f"{what} {_shown(dims)} has {elements:,} elements per sample "
                f"({_size(elements)} as float32); the cap is {self.max_input_elements:,} "
                "(BITMESH_MAX_INPUT_ELEMENTS): use smaller samples or ask the operator to "
                "raise the cap"
            )
        return dims

    def num_classes(self, what: str, classes: int) -> int:
        """``classes`` checked: >= 1 (else INVALID_ARGUMENT), within
        BITMESH_MAX_NUM_CLASSES."""
        return _counted(
            what, classes, self.max_num_classes, "classes", "BITMESH_MAX_NUM_CLASSES",
            "ask the operator to raise the cap",
        )  # fmt: skip

    # -- batches ---------------------------------------------------------------

    def batch_size(self, what: str, size: int) -> int:
        """``size`` checked: >= 1 (else INVALID_ARGUMENT), within
        BITMESH_MAX_BATCH_SIZE."""
        return _counted(
            what, size, self.max_batch_size, "samples", "BITMESH_MAX_BATCH_SIZE",
            "use smaller batches",
        )  # fmt: skip

    def batches(self, what: str, count: int) -> int:
        """``count`` checked: >= 1 (else INVALID_ARGUMENT), within
        BITMESH_MAX_BATCHES."""
        return _counted(
            what, count, self.max_batches, "batches", "BITMESH_MAX_BATCHES",
            "ask for fewer batches",
        )  # fmt: skip

    def calibration_batches(self, what: str, count: int) -> int:
        """``count`` checked: >= 1 (else INVALID_ARGUMENT), within
        BITMESH_MAX_CALIBRATION_BATCHES. Calibration streams its batches, so
        this bounds how long one job holds a worker, not its memory."""
        return _counted(
            what, count, self.max_calibration_batches, "batches",
            "BITMESH_MAX_CALIBRATION_BATCHES", "calibrate on fewer batches",
        )  # fmt: skip

    def data_in_memory(self, what: str, samples: int, shape: Sequence[int]) -> None:
        """``samples`` samples of ``shape`` held at once fit in
        BITMESH_MAX_DATA_ELEMENTS (RESOURCE_EXHAUSTED with the numbers)."""
        per_sample = math.prod(shape)
        elements = samples * per_sample
        if elements > self.max_data_elements:
            raise ResourceExhausted(
                f"{what} holds {samples:,} samples x {per_sample:,} elements = {elements:,} "
                f"elements ({_size(elements)} as float32) in memory; the cap is "
                f"{self.max_data_elements:,} (BITMESH_MAX_DATA_ELEMENTS): use fewer or "
                "smaller samples, or ask the operator to raise the cap"
            )


def _shown(dims: tuple[object, ...]) -> str:
    """A shape as the message shows it (at most 8 dimensions, each cut short)."""
    parts = [str(d)[:24] for d in dims[:8]]
    return "[" + ", ".join(parts) + (", ...]" if len(dims) > 8 else "]")


def _size(elements: int) -> str:
    count = float(elements * FLOAT_BYTES)
    for unit, scale in (("TiB", 2.0**40), ("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} B"


def _counted(what: str, value: int, cap: int, unit: str, setting: str, advice: str) -> int:
    """A count of at least 1 (else INVALID_ARGUMENT) and at most ``cap``
    (else RESOURCE_EXHAUSTED naming ``setting``): the shape of every count cap."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"{what} must be an integer >= 1, got {value!r}")
    if value > cap:
        raise ResourceExhausted(
            f"{what} is {value:,}; the cap is {cap:,} {unit} ({setting}): {advice}"
        )
    return value
