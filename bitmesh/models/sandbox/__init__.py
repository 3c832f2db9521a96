"""Model files run only here: a capped child process, never the service's own.

``describe(spec)`` answers a model's layer table. An architecture name (with
or without a state_dict, read ``weights_only``) runs only torchvision's or
bitmesh's own code, so it is answered in the calling process; a program file
(``.pt2``) is code from the user and is loaded, checked
(:mod:`~bitmesh.models.sandbox.ops`), probed and described in the sandbox
(:mod:`~bitmesh.models.sandbox.worker`). One sandbox per process, started on
the first program file it is asked about.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bitmesh.errors import InvalidArgument, NotFound
from bitmesh.models.sandbox.table import ModelTable
from bitmesh.models.sandbox.worker import Sandbox, SandboxLimits
from bitmesh.models.spec import ModelSpec

if TYPE_CHECKING:
    from bitmesh.formats import QuantOption

__all__ = [
    "ModelTable",
    "Sandbox",
    "SandboxLimits",
    "close_default_sandbox",
    "close_on_stop",
    "default_sandbox",
    "needs_sandbox",
    "vet_model",
    "vet_weight_errors",
]

_default: Sandbox | None = None
_lock = threading.Lock()


def needs_sandbox(spec: ModelSpec) -> bool:
    """Whether loading ``spec`` runs code from the user (a program file)."""
    return spec.source != "architecture"


def default_sandbox() -> Sandbox:
    """This process's sandbox (created on first use; its child starts lazily)."""
    global _default
    with _lock:
        if _default is None:
            _default = Sandbox()
        return _default


def close_default_sandbox() -> None:
    """Stop this process's sandbox child, if any (service shutdown, tests)."""
    global _default
    with _lock:
        sandbox, _default = _default, None
    if sandbox is not None:
        sandbox.close()


def vet_model(spec: ModelSpec) -> ModelTable | None:
    """Describe a program file in the sandbox (raising what it raises), before
    the calling process goes near it; None for an architecture (nothing to vet).

    A path that is no file is refused here, as the loader words it, without
    starting a child for it."""
    if not needs_sandbox(spec):
        return None
    _refuse_missing_files(spec)
    return default_sandbox().describe(spec)


def vet_weight_errors(
    spec: ModelSpec, options: Sequence[QuantOption]
) -> tuple[ModelTable, list[list[float]]] | None:
    """A program file's table and its weight errors per layer and option
    (:meth:`Sandbox.weight_errors`), computed in the sandbox so the calling
    process never loads the program; None for an architecture, whose weights
    the caller reads itself (:func:`~bitmesh.models.sandbox.table.weight_errors`)."""
    if not needs_sandbox(spec):
        return None
    _refuse_missing_files(spec)
    return default_sandbox().weight_errors(spec, options)


def _refuse_missing_files(spec: ModelSpec) -> None:
    for path, what in (
        (spec.name_or_path, "exported program"),
        (spec.weights_path, "weights file"),
    ):
        if path is not None and not os.path.isfile(path):
            if not os.path.exists(path):
                raise NotFound(f"{what} {path!r} does not exist")
            raise InvalidArgument(f"{what} {path!r} is not a regular file")


def close_on_stop(grace: float) -> None:
    """A service's stop hook: end the sandbox child with the service."""
    close_default_sandbox()
