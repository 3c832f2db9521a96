"""Refuse TorchScript model files at the door, by their content, without torch.

bitmesh takes whole programs only as ``torch.export`` files (.pt2).
TorchScript is refused: torch marks ``torch.jit`` deprecated (torch 2.14),
and a ScriptModule does not run forward hooks, which the sensitivity
service's memory estimate, QAT and search rely on, so a TorchScript model
could pass validation and then fail inside a job. Refusing it where a model
reference is first read (``ModelSpec`` construction in every service, the
CLI before it sends anything) means nothing is queued for it.

The check reads only the zip's table of contents: a TorchScript archive
(``torch.jit.save``, usually .pt/.ts) is a zip whose one top folder holds
``constants.pkl`` and a ``code/`` tree of TorchScript sources. A state_dict
(``torch.save``) has neither; a ``.pt2`` keeps its constants under
``data/constants/``. Nothing is unpickled and torch is not imported, so the
CLI can run this check without torch.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from bitmesh.errors import InvalidArgument

__all__ = ["EXPORT_COMMAND", "is_torchscript_archive", "refuse_torchscript", "torchscript_refusal"]

#: The one-line export a user runs instead (C, H, W: the model's input shape).
EXPORT_COMMAND = (
    "torch.export.save(torch.export.export(model.eval(), (torch.randn(2, C, H, W),), "
    'dynamic_shapes=({0: torch.export.Dim("batch")},)), "model.pt2")'
)


def is_torchscript_archive(path: str | Path) -> bool:
    """Whether ``path`` is a ``torch.jit.save`` archive (False for anything
    unreadable: the loaders report missing and corrupt files themselves)."""
    try:
        if not Path(path).is_file() or not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    for name in names:
        _, _, inner = name.partition("/")
        if inner == "constants.pkl" or inner.startswith("code/"):
            return True
    return False


def torchscript_refusal(what: str) -> InvalidArgument:
    """The INVALID_ARGUMENT every refusal of TorchScript carries."""
    return InvalidArgument(
        f"{what} is TorchScript, which bitmesh does not accept (torch.jit is deprecated "
        "in torch 2.14 and forward hooks do not run on ScriptModules): export the model "
        f"with torch.export and a dynamic batch dimension, {EXPORT_COMMAND}, and give the "
        ".pt2 file as the model"
    )


def refuse_torchscript(source: str, model: str, weights: str | None = None) -> None:
    """Raise InvalidArgument if the model reference is TorchScript, by its
    source (``torchscript``) or by the content of the files it names."""
    if source == "torchscript":
        raise torchscript_refusal(f"model {model!r}")
    if source == "exported_program" and is_torchscript_archive(model):
        raise torchscript_refusal(f"model file {model!r}")
    if weights and is_torchscript_archive(weights):
        raise torchscript_refusal(f"weights file {weights!r} (a whole program, not a state_dict)")
