"""Content hashes of models and files, stable across processes and machines.

Results (sensitivities, configurations, checkpoints) are cached and compared
by these hashes, so they must depend only on content: the state_dict's names
in sorted order, each tensor's dtype, shape and raw bytes; never on object ids,
pickling or insertion order.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from bitmesh.errors import InvalidArgument, NotFound

if TYPE_CHECKING:  # torch is imported on use: file_sha256 must stay torch-free.
    from torch import nn

__all__ = ["file_sha256", "model_hash"]

_CHUNK_BYTES = 1 << 20


def _tensor_bytes(tensor: object) -> memoryview:
    """The tensor's raw bytes, as a view of its memory where it is already a
    contiguous CPU tensor: copying them first (``tobytes``) made hashing a
    resnet18's 45 MB take 0.29 s, mostly page faults on the fresh copy,
    against 0.035 s for sha256 itself on this machine."""
    import torch

    assert isinstance(tensor, torch.Tensor)
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    # View as bytes so every dtype (bfloat16, float8, bool) hashes the same way.
    return flat.view(torch.uint8).numpy().data


def model_hash(model: nn.Module) -> str:
    """sha256 (hex) over the sorted state_dict: names, dtypes, shapes and bytes."""
    import torch

    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        value = state[name]
        digest.update(name.encode())
        digest.update(b"\0")
        if isinstance(value, torch.Tensor):
            digest.update(str(value.dtype).encode())
            digest.update(repr(tuple(value.shape)).encode())
            digest.update(_tensor_bytes(value))
        else:  # extra state some modules keep: hash its stable text form
            digest.update(repr(value).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB chunks."""
    file_path = Path(path)
    if not file_path.exists():
        raise NotFound(f"file {str(path)!r} does not exist")
    if not file_path.is_file():
        raise InvalidArgument(f"{str(path)!r} is not a regular file")
    digest = hashlib.sha256()
    with file_path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
