"""Build or load the model a job works on, safely, and check it fits its input.

Three sources (the proto's ``ModelRef``):

- ``architecture``: ``"digits_cnn"`` or any torchvision classification model,
  randomly initialised, optionally with a state_dict file. Weights are read
  only with ``torch.load(..., weights_only=True)``: a checkpoint is untrusted
  input and full unpickling would run arbitrary code.
- ``exported_program``: a ``torch.export.save`` file (.pt2), the format torch
  recommends for whole programs.
- ``torchscript``: refused with INVALID_ARGUMENT when the spec is built,
  as is a .pt2 or weights file whose content is a TorchScript archive
  (``bitmesh.models.model_files``: torch.jit is deprecated and forward hooks
  do not run on ScriptModules). A ``.pt2`` must have a dynamic batch
  dimension (``bitmesh.models.exported.require_dynamic_batch``) and call no
  op that does file or process I/O (``bitmesh.models.sandbox.ops``). The API
  services load program files only inside the sandbox
  (``bitmesh.models.sandbox``).

Every loaded model is put in eval mode (where the module allows it) and run
once on a zero batch of the requested input shape, so a wrong shape is
reported here, as the user's mistake, and not later as an internal error.
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
import logging
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bitmesh.data.array_cache import cached_arrays
from bitmesh.errors import FailedPrecondition, InvalidArgument, NotFound
from bitmesh.models.digits_cnn import ARCHITECTURE_NAME as DIGITS_CNN
from bitmesh.models.digits_cnn import build_digits_cnn
from bitmesh.models.model_files import (
    is_torchscript_archive,
    torchscript_refusal,
)
from bitmesh.models.spec import ModelSource, ModelSpec

__all__ = [
    "ModelSource",
    "ModelSpec",
    "apply_state_dict",
    "available_architectures",
    "build_architecture",
    "load_model",
    "load_state_dict_file",
    "probe_forward",
]

logger = logging.getLogger(__name__)

#: bitmesh's own architectures: name -> builder(num_classes, input_shape).
_BUILTIN_ARCHITECTURES: dict[str, Callable[[int, tuple[int, ...]], nn.Module]] = {
    DIGITS_CNN: build_digits_cnn,
}

#: Errors that torch's file readers raise on a file that is not what it claims.
_CORRUPT_FILE_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError,
    ValueError,
    KeyError,
    EOFError,
    OSError,
    AssertionError,
    zipfile.BadZipFile,
    pickle.UnpicklingError,
)

#: How many offending keys an error message names.
_KEYS_SHOWN = 4


def _torchvision_architectures() -> list[str]:
    """torchvision's classification model names, from the per-machine cache.

    Why cached: importing ``torchvision.models`` costs 5-8 s of CPU here
    (``torchvision.ops`` imports ``torch._dynamo``, sympy included), which a
    service paid on the first request naming an unknown architecture just to
    refuse it. The names are a function of the torchvision release, so they
    are listed once per machine and release (:mod:`bitmesh.data.array_cache`).
    """
    version = importlib.metadata.version("torchvision")
    arrays = cached_arrays(f"torchvision-models-{version}", _list_torchvision_models)
    return [str(name) for name in arrays["names"]]


def _list_torchvision_models() -> dict[str, np.ndarray]:
    import torchvision

    return {"names": np.array(torchvision.models.list_models(module=torchvision.models))}


def available_architectures() -> list[str]:
    """Every name ``source="architecture"`` accepts, sorted."""
    return sorted({*_BUILTIN_ARCHITECTURES, *_torchvision_architectures()})


def build_architecture(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """A randomly initialised model of a known architecture (never downloads weights)."""
    builder = _BUILTIN_ARCHITECTURES.get(name)
    if builder is not None:
        return builder(num_classes, input_shape)
    torchvision_names = _torchvision_architectures()
    if name not in torchvision_names:
        close = difflib.get_close_matches(
            name, [*_BUILTIN_ARCHITECTURES, *torchvision_names], n=5, cutoff=0.5
        )
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise InvalidArgument(
            f"unknown architecture {name!r}: use {DIGITS_CNN!r} or a torchvision "
            f"classification model name{hint}"
        )
    import torchvision

    from bitmesh.models.attention import adapt_attention

    options: dict[str, object] = {"weights": None, "num_classes": num_classes}
    if name.startswith("vit_") and len(input_shape) == 3:
        # ViT's position embeddings are sized for one image size (224 by
        # default): build it for the input it will see.
        if input_shape[1] != input_shape[2]:
            raise InvalidArgument(
                f"{name} takes square images; got input shape {tuple(input_shape)}"
            )
        options["image_size"] = input_shape[1]
    try:
        model = torchvision.models.get_model(name, **options)
    except (AssertionError, ValueError) as exc:
        raise InvalidArgument(
            f"cannot build {name} for input shape {tuple(input_shape)}: {_short_reason(exc)}"
        ) from exc
    # Attention projections as Linear modules, so they are quantizable layers.
    return adapt_attention(model)


def _require_file(path_text: str, what: str) -> Path:
    path = Path(path_text)
    if not path.exists():
        raise NotFound(f"{what} {path_text!r} does not exist")
    if not path.is_file():
        raise InvalidArgument(f"{what} {path_text!r} is not a regular file")
    return path


def _unwrap_checkpoint(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Accept a plain state_dict or one wrapped as {"state_dict": ...} / {"model": ...}."""
    if isinstance(obj, Mapping):
        for wrapper_key in ("state_dict", "model"):
            inner = obj.get(wrapper_key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise InvalidArgument(
            f"weights file {str(path)!r} holds a {type(obj).__name__}, not a state_dict: "
            "save it with torch.save(model.state_dict(), path)"
        )
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InvalidArgument(
                f"weights file {str(path)!r} is not a plain state_dict: entry {key!r} is a "
                f"{type(value).__name__}, not a tensor"
            )
        state[key] = value
    # Checkpoints saved from nn.DataParallel prefix every key with "module.".
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def load_state_dict_file(path_text: str) -> dict[str, torch.Tensor]:
    """Read a state_dict file with ``weights_only=True``; never unpickle objects."""
    path = _require_file(path_text, "weights file")
    if is_torchscript_archive(path):
        raise torchscript_refusal(f"weights file {path_text!r} (a whole program, not a state_dict)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if zipfile.is_zipfile(path):
            # A real torch.save archive whose pickle names classes outside the
            # weights-only allowlist: loading it would mean running its code.
            raise FailedPrecondition(
                f"weights file {path_text!r} needs unpickling of arbitrary Python objects, "
                "which bitmesh refuses: it must be a plain state_dict saved with "
                "torch.save(model.state_dict(), path)"
            ) from exc
        raise InvalidArgument(
            f"weights file {path_text!r} is not a readable torch.save file "
            f"(corrupt or another format): {_load_failure(exc)}"
        ) from exc
    except Exception as exc:
        # The weights-only unpickler runs no code, but on a corrupt or foreign
        # file it fails with whatever its parser hit first (IndexError,
        # KeyError, UnicodeDecodeError, ...): all mean "not a checkpoint".
        raise InvalidArgument(
            f"weights file {path_text!r} is not a readable torch.save file "
            f"(corrupt or another format): {_load_failure(exc)}"
        ) from exc
    return _unwrap_checkpoint(obj, path)


def _load_failure(exc: BaseException) -> str:
    """torch.load's reason, minus its advice to retry with weights_only=False."""
    return _short_reason(exc).split(". ")[0]


def _shown(keys: list[str]) -> str:
    more = f" and {len(keys) - _KEYS_SHOWN} more" if len(keys) > _KEYS_SHOWN else ""
    return ", ".join(keys[:_KEYS_SHOWN]) + more


def apply_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, what: str = "weights"
) -> None:
    """Load ``state`` into ``model`` strictly, naming the first offending keys if it does not fit."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key} (file {tuple(state[key].shape)}, model {tuple(expected[key].shape)})"
        for key in expected
        if key in state and tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_shown(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_shown(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_shown(mismatched)}")
    if problems:
        raise InvalidArgument(
            f"{what} do not match the model ({'; '.join(problems)}): check the architecture, "
            "num_classes and input channels the weights were trained with"
        )
    model.load_state_dict(dict(state), strict=True)


def _short_reason(exc: BaseException) -> str:
    """The last meaningful line of a (possibly TorchScript-traceback) error message."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else type(exc).__name__
    reason = reason.removeprefix("RuntimeError: ")
    return reason if len(reason) <= 300 else reason[:297] + "..."


def probe_forward(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Run ``model`` once on a zero batch of one sample; a shape error is the user's.

    The batch is made where the model's parameters are (CPU or a GPU)."""
    first = next(model.parameters(), None)
    batch = torch.zeros((1, *input_shape), device=first.device if first is not None else None)
    try:
        with torch.no_grad():
            output = model(batch)
    except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
        raise InvalidArgument(
            f"input shape {tuple(input_shape)} does not fit the model: {_short_reason(exc)}"
        ) from exc
    if not isinstance(output, torch.Tensor):
        raise InvalidArgument(
            f"the model returns a {type(output).__name__}, not a tensor of class logits: "
            "export or script a model whose forward returns the logits"
        )
    return output


def _set_eval(model: nn.Module) -> None:
    """Eval mode where the module supports it.

    ``torch.export`` modules refuse ``eval()``: their train/eval behaviour was
    fixed when they were exported, so there is nothing to switch.
    """
    try:
        model.eval()
    except NotImplementedError:
        logger.debug("module %s has a fixed mode (exported program)", type(model).__name__)


def _load_exported_program(path_text: str) -> nn.Module:
    path = _require_file(path_text, "exported program")
    if is_torchscript_archive(path):  # never hand a TorchScript zip to torch's readers
        raise torchscript_refusal(f"model file {path_text!r}")
    try:
        program = torch.export.load(path)
    except _CORRUPT_FILE_ERRORS as exc:
        raise InvalidArgument(
            f"{path_text!r} is not a readable torch.export program (.pt2 from "
            f"torch.export.save): {_short_reason(exc)}"
        ) from exc
    from bitmesh.models.exported import allow_mode_switch, lift_layers, require_dynamic_batch
    from bitmesh.models.sandbox.ops import refuse_io_ops

    require_dynamic_batch(program, path_text)
    refuse_io_ops(program, path_text)  # before any of its graph runs
    module = program.module()
    lift_layers(module)
    allow_mode_switch(module)
    return module


def _architecture_with(spec: ModelSpec, state: Mapping[str, torch.Tensor], what: str) -> nn.Module:
    """The architecture with ``state`` loaded, built without the random
    initialisation that the weights overwrite anyway.

    That initialisation was 0.18 s of a resnet18's 0.3 s load on the shared
    2-core machine (seconds for a ViT-B), and a pipeline loads the model
    cold in three processes. So the model is built on the meta device (no
    storage, no init), given uninitialised storage and loaded strictly,
    which sets every parameter and persistent buffer. Where that is not
    sound it is built the ordinary way: a module with non-persistent
    buffers (the state does not hold them), shared parameters (``to_empty``
    would untie them), or an architecture whose building needs real values
    (it fails on meta).
    """
    build = functools.partial(
        build_architecture, spec.name_or_path, spec.num_classes, spec.input_shape
    )
    try:
        with torch.device("meta"):
            model = build()
    except Exception:  # the ordinary build below raises the real error, if any
        model = None
    if model is None or not _loads_whole(model):
        model = build()
    else:
        model.to_empty(device="cpu")
    apply_state_dict(model, state, what=what)
    return model


def _loads_whole(model: nn.Module) -> bool:
    """Whether a strict state-dict load sets every tensor of ``model``, each
    its own: no non-persistent buffers, no parameter shared by two modules."""
    if any(module._non_persistent_buffers_set for module in model.modules()):
        return False
    every = [p for _, p in model.named_parameters(remove_duplicate=False)]
    return len({id(p) for p in every}) == len(every)


def load_model(spec: ModelSpec) -> nn.Module:
    """The model ``spec`` describes, on CPU, in eval mode, checked against its input shape.

    Raises NotFound (missing file), InvalidArgument (unknown architecture,
    corrupt file, weights or input shape that do not fit, output that is not
    ``num_classes`` logits) or FailedPrecondition (a weights file that would
    need unpickling of arbitrary objects).
    """
    what = f"weights in {spec.weights_path!r}"
    if spec.source == "architecture" and spec.weights_path is not None:
        model = _architecture_with(spec, load_state_dict_file(spec.weights_path), what)
    elif spec.source == "architecture":
        model = build_architecture(spec.name_or_path, spec.num_classes, spec.input_shape)
    elif spec.source == "exported_program":
        model = _load_exported_program(spec.name_or_path)
        if spec.weights_path is not None:
            apply_state_dict(model, load_state_dict_file(spec.weights_path), what=what)
    else:  # ModelSpec refuses TorchScript; kept for a spec built around its checks
        raise torchscript_refusal(f"model {spec.name_or_path!r}")
    _set_eval(model)
    output = probe_forward(model, spec.input_shape)
    if output.ndim != 2 or output.shape[-1] != spec.num_classes:
        raise InvalidArgument(
            f"the model outputs shape {tuple(output.shape)} for one sample but the spec "
            f"says num_classes={spec.num_classes}: expected (1, {spec.num_classes})"
        )
    return model
