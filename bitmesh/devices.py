"""Which torch device the ML work runs on: ``BITMESH_DEVICE=auto|cpu|cuda[:N]``.

One place decides it for every stage that runs torch (sensitivity's Hessian
traces, QAT, search, calibration, evaluation), so a GPU node uses its GPU
without a flag and an operator can still pin the CPU or one GPU:

- ``auto`` (the default): the first CUDA device when torch sees one, else
  the CPU;
- ``cpu``: the CPU even on a GPU node;
- ``cuda`` / ``cuda:N``: that GPU. Asking for one the machine does not have
  is FAILED_PRECONDITION with what torch sees (no silent fall-back to a CPU
  that would run a ResNet-50 Hessian for hours); a value that is none of
  these is INVALID_ARGUMENT.

:func:`parse_device` needs no torch (settings and servicers check the text
early); :func:`resolve_device` imports torch only when called.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bitmesh.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    import torch

__all__ = [
    "DeviceChoice",
    "check_cuda_index",
    "free_memory_bytes",
    "parse_device",
    "resolve_device",
]

_PATTERN = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")


@dataclass(frozen=True)
class DeviceChoice:
    """What the setting asks for: ``kind`` auto/cpu/cuda, ``index`` for cuda:N."""

    kind: str
    index: int | None = None


def parse_device(text: str) -> DeviceChoice:
    """The choice ``text`` names; InvalidArgument for anything else."""
    value = text.strip().lower()
    match = _PATTERN.fullmatch(value)
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise InvalidArgument(
            f"BITMESH_DEVICE must be auto, cpu, cuda or cuda:N (N a GPU index), got {text!r}"
        )
    index = match.group(2)
    return DeviceChoice(match.group(1), None if index is None else int(index))


def check_cuda_index(index: int, count: int) -> None:
    """FailedPrecondition unless ``cuda:index`` is one of ``count`` visible GPUs."""
    if count == 0:
        raise FailedPrecondition(
            f"BITMESH_DEVICE asks for cuda:{index} but torch sees no CUDA device (no GPU, no "
            "driver, CUDA_VISIBLE_DEVICES empty, or a CPU-only torch build): set "
            "BITMESH_DEVICE=auto or cpu, or run on a GPU node"
        )
    if index >= count:
        raise FailedPrecondition(
            f"BITMESH_DEVICE asks for cuda:{index} but this machine has {count} visible CUDA "
            f"device{'s' if count > 1 else ''} (cuda:0..cuda:{count - 1})"
        )


def _setting() -> str:
    from bitmesh.settings import load_settings

    return load_settings().device


def resolve_device(text: str | None = None) -> torch.device:
    """The device ``text`` (default: the ``BITMESH_DEVICE`` setting) names,
    checked against the GPUs torch sees."""
    choice = parse_device(_setting() if text is None else text)
    import torch

    if choice.kind == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if choice.kind == "auto":
        return torch.device("cuda", 0) if available else torch.device("cpu")
    index = choice.index or 0
    check_cuda_index(index, torch.cuda.device_count() if available else 0)
    return torch.device("cuda", index)


def free_memory_bytes(device: torch.device) -> int | None:
    """Free bytes on ``device``: the GPU's free memory on CUDA, MemAvailable
    from /proc/meminfo on the CPU (None where the system does not say)."""
    if device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            text = fh.read()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None
