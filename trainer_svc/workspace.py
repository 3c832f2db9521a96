"""Everything a job needs before its first step, and the checks that need it.

:func:`validate` runs at submission (the service refuses a bad request before
anything is enqueued) and again in the worker, which then builds on the same
:class:`Workspace`. Checks here need the model or the data; pure range checks
are in :mod:`trainer_svc.specs`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.data import Dataset

from bitmesh.data.datasets import (
    DIGITS_SHAPE,
    DatasetSpec,
    check_dataset,
    load_dataset,
    num_classes_of,
)
from bitmesh.devices import parse_device
from bitmesh.errors import FailedPrecondition, InvalidArgument
from bitmesh.formats import Granularity, QuantOption
from bitmesh.models.layer_cache import layers_of
from bitmesh.models.layers import LayerProfile
from bitmesh.models.model_cache import load_model_copy, load_model_for_reading
from bitmesh.settings import load_settings
from trainer_svc.costing import (
    axis_value,
    check_target_reachable,
    config_costs,
    search_bounds,
    uniform_config,
    weight_bytes_table,
)
from trainer_svc.specs import CalibrationSpec, QatSpec, SearchSpec, TrainingRequest

log = logging.getLogger(__name__)

#: Below this many MACs per sample a model trains fastest on one CPU thread
#: (threads spend their time waiting for each other on tiny kernels).
SMALL_MODEL_MACS = 20_000_000


@dataclass
class Workspace:
    """The loaded full-precision model, its quantizable layers and the device."""

    request: TrainingRequest
    model: nn.Module
    layers: list[LayerProfile]
    device: torch.device

    @property
    def layer_names(self) -> list[str]:
        return [p.name for p in self.layers]


def _sample_shape(spec: DatasetSpec) -> tuple[int, ...] | None:
    return DIGITS_SHAPE if spec.kind == "digits" else spec.shape


def check_data_fits(request: TrainingRequest) -> None:
    """The data must be readable, and its samples and classes the model's
    input and outputs."""
    check_dataset(request.dataset)
    shape = _sample_shape(request.dataset)
    if shape is not None and tuple(shape) != tuple(request.model.input_shape):
        raise InvalidArgument(
            f"the {request.dataset.kind} dataset has samples of shape {tuple(shape)} but the "
            f"model takes {tuple(request.model.input_shape)}: give the model the dataset's "
            "input shape (or another dataset)"
        )
    classes = num_classes_of(request.dataset)
    if classes != request.model.num_classes:
        raise InvalidArgument(
            f"the {request.dataset.kind} dataset has {classes} classes but the model has "
            f"{request.model.num_classes} outputs: set the model's num_classes to {classes}"
        )


def resolve_config(
    names: list[str],
    config: Mapping[str, QuantOption],
    default: QuantOption | None,
    granularity: Granularity | None,
) -> dict[str, QuantOption]:
    """The per-layer options a QAT or calibration job runs, checked against the model."""
    unknown = [layer for layer in config if layer not in names]
    if unknown:
        raise InvalidArgument(
            f"the configuration names layers the model lacks: {', '.join(unknown[:5])}; "
            f"its quantizable layers are {', '.join(names[:30])}"
            f"{' ...' if len(names) > 30 else ''}"
        )
    resolved = {
        name: config.get(name, default) for name in names if name in config or default is not None
    }
    options = {name: option for name, option in resolved.items() if option is not None}
    if granularity is not None:
        options = {name: replace(o, granularity=granularity) for name, o in options.items()}
    return options


def job_config(ws: Workspace) -> dict[str, QuantOption]:
    spec = ws.request.spec
    assert isinstance(spec, QatSpec | CalibrationSpec)
    return resolve_config(ws.layer_names, spec.config, spec.default_option, spec.weight_granularity)


def search_target(layers: list[LayerProfile], spec: SearchSpec) -> float:
    """The cost target in the axis' unit (``target_option`` when no number is given)."""
    if spec.cost_target > 0:
        return spec.cost_target
    assert spec.target_option is not None
    costs = config_costs(layers, uniform_config(layers, spec.target_option))
    return axis_value(costs, spec.axis, spec.size_accounting)


def search_weight_bytes(layers: list[LayerProfile], spec: SearchSpec) -> dict[str, list[float]]:
    """Per layer and search format, the weight's bytes the size axis counts."""
    return weight_bytes_table(layers, spec.formats, spec.weight_granularity, spec.size_accounting)


def _check_search(layers: list[LayerProfile], spec: SearchSpec) -> None:
    names = {p.name for p in layers}
    for group in spec.tie_groups:
        missing = [layer for layer in group if layer not in names]
        if missing:
            raise InvalidArgument(
                f"tie group {','.join(group)} names layers the model lacks: {', '.join(missing)}"
            )
    bounds = search_bounds(
        layers, [f.bits for f in spec.formats], spec.axis, search_weight_bytes(layers, spec)
    )
    check_target_reachable(
        search_target(layers, spec),
        bounds,
        spec.axis,
        spec.one_sided,
        [f.name for f in spec.formats],
    )


def check_at_submission(request: TrainingRequest) -> list[LayerProfile]:
    """The submission's checks (a service's StartJob, proxy NAS's first
    trial): what :func:`validate` checks, without a model to hand back.

    A program file (``.pt2``) is code from the user, so this process never
    loads it: its layers (names, kinds, shapes, parameters, MACs: all the
    checks read) come from the sandbox's table
    (:func:`bitmesh.models.sandbox.vet_model`), which loaded, checked and
    probed it in the capped child. An architecture is built here as before
    (trusted code; its weights are read ``weights_only``). The worker, where
    user models are meant to run, loads either with :func:`validate`.

    Raises as :func:`validate`, and what the sandbox raises for a program
    (ResourceExhausted past its caps, InvalidArgument for a refused op).
    """
    from bitmesh.models.sandbox import vet_model

    parse_device(load_settings().device)
    check_data_fits(request)
    table = vet_model(request.model)
    if table is not None:
        layers = list(table.layers)
    else:
        layers = layers_of(load_model_for_reading(request.model), request.model)
    _check_against(request, layers)
    return layers


def validate(request: TrainingRequest, device: torch.device | None = None) -> Workspace:
    """Load the model and check the request against it and the data.

    ``device`` is where the job will run (the worker passes
    ``resolve_device()``). Without it only the ``BITMESH_DEVICE`` text is
    checked and the workspace says CPU, and the workspace's model shares the
    remembered model's tensors (``load_model_for_reading``) instead of
    copying them. A service at submission calls :func:`check_at_submission`
    instead, which never loads a program file in its process.

    Raises InvalidArgument (unknown layers or architecture, data that does
    not fit, a malformed BITMESH_DEVICE), NotFound (missing files) or
    FailedPrecondition (unreachable cost target, a weights file that needs
    unpickling).
    """
    if device is None:
        parse_device(load_settings().device)
    check_data_fits(request)
    model = (load_model_for_reading if device is None else load_model_copy)(request.model)
    layers = layers_of(model, request.model)
    _check_against(request, layers)
    return Workspace(
        request=request, model=model, layers=layers, device=device or torch.device("cpu")
    )


def _check_against(request: TrainingRequest, layers: list[LayerProfile]) -> None:
    """The checks that need the model's layers (and nothing else of it)."""
    if isinstance(request.spec, SearchSpec):
        _check_search(layers, request.spec)
    else:
        spec = request.spec
        resolve_config(
            [p.name for p in layers], spec.config, spec.default_option, spec.weight_granularity
        )
    if isinstance(request.spec, QatSpec):
        if request.spec.distillation.enabled:
            _require_trained(request, "distillation needs a trained full-precision teacher")
        if request.spec.fold_bn:
            _require_trained(
                request, "BN folding freezes the BatchNorm statistics, so it needs trained ones"
            )


def _require_trained(request: TrainingRequest, why: str) -> None:
    """A randomly initialised architecture is no teacher (distilling from it
    trains towards noise) and has no BatchNorm statistics worth freezing."""
    if request.model.source == "architecture" and request.model.weights_path is None:
        raise FailedPrecondition(
            f"{why}, but {request.model.name_or_path!r} has no weights (random init): give the "
            "model's weights file, or turn the option off"
        )


def load_splits(request: TrainingRequest) -> tuple[Dataset[object], Dataset[object]]:
    """(training data, held-out test data) of the request's dataset."""
    train_spec = request.dataset
    fraction = request.training.data_fraction
    if fraction < 1.0:
        full = len(load_dataset(replace(train_spec, subset_size=0)))  # type: ignore[arg-type]
        base = train_spec.subset_size or full
        train_spec = replace(train_spec, subset_size=max(1, round(base * fraction)))
    test_spec = request.dataset.eval_split()
    return load_dataset(train_spec), load_dataset(test_spec)


def configure_threads(layers: list[LayerProfile], device: torch.device) -> None:
    """One CPU thread for small models (measured up to 20x faster on 2 busy cores)."""
    if device.type == "cpu" and sum(p.macs for p in layers) < SMALL_MODEL_MACS:
        torch.set_num_threads(1)
