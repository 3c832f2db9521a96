"""One sensitivity analysis: check the request against the model and data,
estimate every layer's Hessian trace, and price every option (Omega, costs).

The checks run before any Hessian work so that a bad request fails in
seconds with a message that says what to fix:

- options whose format does not exist, or repeated options: InvalidArgument;
- no quantizable layers, or a named layer without a weight: InvalidArgument;
- labels that do not fit the model's outputs: InvalidArgument;
- a loss that is NaN or infinite on the data: FailedPrecondition;
- a batch too big for memory: ResourceExhausted, with the numbers. The need
  is estimated from a one-sample probe forward (activation bytes per
  sample) and the parameter counts; on torchvision resnet18 the peak of the
  gradient graph plus Hessian-vector products was 2.1-2.6x the batch's
  forward activations plus 2x the weights, so the estimate uses 3x and 6x
  (6x: a parameter-heavy MLP peaked at 5.3x its weights with two workers),
  plus the control-variate sketches. With two concurrent HVPs the estimate
  stayed 15-60 % above the measured peak (3x32x32 batch 32, 3x224x224
  batches 8 and 16). The room is the device's free memory: the GPU's
  (``torch.cuda.mem_get_info``) when the model is on CUDA, else the
  machine's available memory.

The analysis runs where the model and batches are (``jobs.prepare`` moves
them to the ``BITMESH_DEVICE`` device); every tensor it makes follows them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitmesh.devices import free_memory_bytes
from bitmesh.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from bitmesh.formats import QuantOption, parse_option
from bitmesh.models.layers import LayerProfile, discover_layers
from sensitivity_svc.hutchinson import (
    Batch,
    CancelFlag,
    HutchinsonSettings,
    HvpChoice,
    LayerTrace,
    LossFn,
    ProgressFn,
    estimate_activation_traces,
    estimate_weight_traces,
    eval_mode,
    sketch_rank,
)
from sensitivity_svc.report import (
    EstimatorInfo,
    LayerSensitivity,
    SensitivityReport,
    layer_sensitivity,
)

__all__ = [
    "ACTIVATION_FACTOR",
    "METHOD",
    "PARAMETER_FACTOR",
    "AnalysisProgress",
    "MemoryEstimate",
    "SensitivitySettings",
    "analyse",
    "check_batches",
    "estimate_memory",
    "resolve_options",
    "validate_data",
]

logger = logging.getLogger(__name__)

#: What the report says about how its traces were made.
METHOD = (
    "hutchinson-rademacher; per-layer probes; double backward on one gradient graph "
    "per batch; running Nystrom control variate, position-weighted samples; "
    "SE = max(sample spread, Frobenius bound)"
)
#: Peak memory of the gradient graph and HVPs per byte of forward activations.
ACTIVATION_FACTOR = 3.0
#: How the Hessian-vector products may be computed (``BITMESH_HVP_STRATEGY``).
HVP_STRATEGIES = ("auto", "single", "batched", "measure")
#: Weights, their gradients (with graph), and per worker thread one HVP and
#: one probe. Measured on a 3-layer MLP of 4096 features (weights 128 MiB,
#: activations negligible): the peak was 4.5x the weights with one worker and
#: 5.3x with two (the default), so 4x let a parameter-heavy analysis past
#: the memory check; 6x bounds both (tests/unit/sensitivity_svc/
#: test_memory_estimate.py checks the bound against the measured peak).
PARAMETER_FACTOR = 6.0

#: ``progress(stage, estimate)``: stage is "weights" or "activations".
AnalysisProgress = Callable[[str, LayerTrace], None]


@dataclass(frozen=True)
class SensitivitySettings:
    """The request's knobs (defaults: 5 % relative standard error, at most
    200 samples per layer)."""

    target_relative_se: float = 0.05
    max_samples: int = 200
    min_samples: int = 10
    sketch_size: int = 16
    sketch_budget: int = 16_000_000
    seed: int = 0
    workers: int = 2
    activation_sensitivity: bool = False
    #: None: what the operating system reports as available.
    memory_limit_bytes: int | None = None
    #: auto | single | batched | measure (see :func:`hvp_plan`).
    hvp_strategy: str = "auto"
    hvp_probes_per_call: int = 8

    def estimator(self, probes_per_call: int = 1, measure: bool = False) -> HutchinsonSettings:
        return HutchinsonSettings(
            target_relative_se=self.target_relative_se,
            max_samples=self.max_samples,
            min_samples=self.min_samples,
            sketch_size=self.sketch_size,
            sketch_budget=self.sketch_budget,
            seed=self.seed,
            workers=self.workers,
            probes_per_call=probes_per_call,
            measure_probes=measure,
        )


def hvp_plan(settings: SensitivitySettings, device: torch.device) -> tuple[int, bool]:
    """(probes per autograd call, whether to measure) for ``device``.

    ``auto`` measures on CUDA: batched probes (vmap) may pay off on a GPU,
    whose kernels one probe leaves mostly idle, while on this 2-core CPU
    they were up to 10x slower per probe than a loop on most of resnet18's
    layers; so on a CPU ``auto`` takes one probe per call (and the results
    stay reproducible from the seed alone: with several batches, the
    measured choice changes which probe goes to which batch).
    """
    strategy = settings.hvp_strategy
    if strategy not in HVP_STRATEGIES:
        raise InvalidArgument(
            f"hvp strategy must be one of {', '.join(HVP_STRATEGIES)}, got {strategy!r}"
        )
    if strategy == "auto":
        strategy = "measure" if device.type == "cuda" else "single"
    if strategy == "single":
        return 1, False
    return settings.hvp_probes_per_call, strategy == "measure"


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes an analysis is expected to need at its peak, by part."""

    activation_bytes_per_sample: int
    largest_batch: int
    activations: int
    parameters: int
    sketch: int

    @property
    def total(self) -> int:
        return self.activations + self.parameters + self.sketch


def resolve_options(options: Sequence[QuantOption | str]) -> list[QuantOption]:
    """Options as objects; strings are parsed (an unknown format is an
    InvalidArgument naming the known ones) and repeats are refused."""
    resolved = [o if isinstance(o, QuantOption) else parse_option(o) for o in options]
    keys = [o.key for o in resolved]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise InvalidArgument(f"options repeated: {', '.join(repeated)}")
    return resolved


def check_batches(batches: Sequence[Batch]) -> None:
    """Every batch is (inputs, targets) with as many targets as inputs."""
    if not batches:
        raise InvalidArgument("no data: the analysis needs at least one batch")
    for i, batch in enumerate(batches):
        if len(batch) != 2 or not isinstance(batch[0], Tensor) or not isinstance(batch[1], Tensor):
            raise InvalidArgument(f"batch {i} must be a pair (inputs, targets) of tensors")
        inputs, targets = batch
        if inputs.ndim < 1 or inputs.shape[0] == 0:
            raise InvalidArgument(
                f"batch {i} has no samples (inputs of shape {tuple(inputs.shape)})"
            )
        if targets.ndim < 1 or targets.shape[0] != inputs.shape[0]:
            raise InvalidArgument(
                f"batch {i} has {inputs.shape[0]} inputs but targets of shape "
                f"{tuple(targets.shape)}"
            )


def _check_labels(outputs: Tensor, targets: Tensor, index: int) -> None:
    """Class indices must address the model's outputs; soft or regression
    targets must have the outputs' shape."""
    if outputs.shape[0] != targets.shape[0]:
        raise InvalidArgument(
            f"batch {index}: the model returned {outputs.shape[0]} rows for "
            f"{targets.shape[0]} targets"
        )
    if targets.is_floating_point():
        if targets.shape != outputs.shape:
            raise InvalidArgument(
                f"batch {index}: float targets of shape {tuple(targets.shape)} do not match the "
                f"model's outputs {tuple(outputs.shape)}"
            )
        return
    if outputs.ndim < 2:
        raise InvalidArgument(
            f"batch {index}: integer class labels need outputs of shape (N, classes), "
            f"the model returned {tuple(outputs.shape)}"
        )
    classes = outputs.shape[1]
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= classes:
        raise InvalidArgument(
            f"batch {index}: labels range from {low} to {high} but the model has {classes} "
            f"outputs (labels must be 0..{classes - 1}); use a model built for this "
            "dataset's number of classes"
        )


#: Samples of the first batch that ``validate_data`` forwards.
VALIDATION_SAMPLES = 8


def validate_data(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch]) -> None:
    """Refuse data the analysis cannot use, before it is queued.

    One forward, of the first batch's first ``VALIDATION_SAMPLES`` samples
    (eval mode, no graph): the model returns a tensor, the labels fit it, the
    loss is a finite scalar. Every batch's labels are checked against the
    outputs' width and its inputs for inf/NaN, without a forward. Why not a
    forward per batch, or of a whole one: that was an extra pass over the
    analysis's data, measured at 0.4-1.4 s of a resnet18 StartAnalysis on
    the 2-core machine, and it found nothing the estimator does not report
    itself (every batch's loss is checked where it is computed,
    ``hutchinson.py``); a loss that is not finite only on other samples still
    fails the job with that message, only later."""
    if not batches:
        return
    inputs, targets = batches[0]
    probe_inputs, probe_targets = inputs[:VALIDATION_SAMPLES], targets[:VALIDATION_SAMPLES]
    with eval_mode(model), torch.no_grad():
        outputs = model(probe_inputs)
    if not isinstance(outputs, Tensor):
        raise InvalidArgument(
            f"the model returns a {type(outputs).__name__}, not a tensor of outputs"
        )
    _check_labels(outputs, probe_targets, 0)
    loss = loss_fn(outputs, probe_targets)
    if loss.ndim != 0:
        raise InvalidArgument(
            f"the loss function returned shape {tuple(loss.shape)}, not a scalar mean"
        )
    _check_inputs(inputs, 0)
    if not torch.isfinite(loss):
        bad_outputs = int((~torch.isfinite(outputs)).sum())
        raise FailedPrecondition(
            f"the loss is {loss.item()} on batch 0 ({bad_outputs} non-finite "
            "model outputs); the model's weights or the data contain inf/NaN or "
            "overflow: check the checkpoint and the input normalisation"
        )
    for index, (inputs, targets) in enumerate(batches):
        # The outputs' shape for this batch's rows, without computing them.
        shaped = outputs.new_empty((inputs.shape[0], *outputs.shape[1:]), device="meta")
        _check_labels(shaped, targets, index)
        if index:
            _check_inputs(inputs, index)


def _check_inputs(inputs: Tensor, index: int) -> None:
    if inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
        bad = int((~torch.isfinite(inputs)).sum())
        raise FailedPrecondition(
            f"batch {index} holds {bad} non-finite input values (inf/NaN): check the data "
            "and its normalisation"
        )


def _activation_bytes_per_sample(model: nn.Module, sample: Tensor) -> int:
    """Bytes of every leaf module's output for one sample (a probe forward)."""
    total = 0

    def hook(module: nn.Module, args: object, output: object) -> None:
        nonlocal total
        if isinstance(output, Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with eval_mode(model), torch.no_grad():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
    return total


def estimate_memory(
    model: nn.Module,
    batches: Sequence[Batch],
    weights: Sequence[Tensor],
    settings: SensitivitySettings,
) -> MemoryEstimate:
    """Peak bytes of the analysis: one batch's gradient graph (only one is
    alive at a time), the weights' gradients and products, and the sketches.

    The activation pass (if asked for) runs after the weights' sketches are
    freed; its sketches are bounded by the budget per layer and by
    sketch_size copies of the batches' activations, whichever is smaller.
    """
    per_sample = _activation_bytes_per_sample(model, batches[0][0][:1])
    largest = max(int(inputs.shape[0]) for inputs, _ in batches)
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    estimator = settings.estimator()
    sketch = len(batches) * sum(
        sketch_rank(w.numel(), estimator, len(batches)) * w.numel() * w.element_size()
        for w in weights
    )
    if settings.activation_sensitivity:
        element = weights[0].element_size() if weights else 4
        activation_sketch = min(
            len(weights) * settings.sketch_budget * element,
            len(batches) * settings.sketch_size * per_sample * largest,
        )
        sketch = max(sketch, activation_sketch)
    return MemoryEstimate(
        activation_bytes_per_sample=per_sample,
        largest_batch=largest,
        activations=int(ACTIVATION_FACTOR * per_sample * largest),
        parameters=int(PARAMETER_FACTOR * parameter_bytes),
        sketch=sketch,
    )


def _fitting_plan(
    settings: SensitivitySettings, device: torch.device, need: MemoryEstimate, limit: int | None
) -> tuple[int, bool]:
    """:func:`hvp_plan`, or one probe per call where k probes per call might
    not fit. A batched call holds k probes and products, and vmap k copies of
    the double backward's temporaries: bounded here, conservatively and not
    measured, by k times the activation and parameter terms."""
    probes, measure = hvp_plan(settings, device)
    if probes > 1 and limit is not None:
        batched = probes * (need.activations + need.parameters) + need.sketch
        if batched > limit:
            logger.info(
                "one probe per Hessian-vector product: %d per call might need %s of %s",
                probes,
                _size(batched),
                _size(limit),
            )
            return 1, False
    return probes, measure


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters are (the CPU for a model without any)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _size(count: float) -> str:
    for unit, scale in (("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count:.0f} B"


def _check_memory(need: MemoryEstimate, limit: int | None, where: torch.device) -> None:
    if limit is None or need.total <= limit:
        return
    room = limit - need.parameters - need.sketch
    fits = int(room // (ACTIVATION_FACTOR * need.activation_bytes_per_sample)) if room > 0 else 0
    advice = (
        f"use batches of at most {fits} samples"
        if fits > 0
        else "the weights and sketch alone do not fit: lower sketch_budget or use a bigger machine"
    )
    raise ResourceExhausted(
        f"the analysis needs about {_size(need.total)} but {_size(limit)} are free on "
        f"{where}: "
        f"activations {_size(need.activations)} (batch of {need.largest_batch} x "
        f"{_size(need.activation_bytes_per_sample)} per sample x {ACTIVATION_FACTOR:g} for the "
        f"double-backward graph), weights and products {_size(need.parameters)}, "
        f"control-variate sketch {_size(need.sketch)}; {advice}"
    )


def _resolve_layers(
    model: nn.Module, batches: Sequence[Batch], layers: Sequence[LayerProfile] | None
) -> list[tuple[LayerProfile, Tensor]]:
    if layers is None:
        layers = discover_layers(model, tuple(batches[0][0].shape[1:]))
    if not layers:
        raise InvalidArgument("the model has no quantizable (Conv/Linear) layers to analyse")
    parameters = dict(model.named_parameters())
    resolved: list[tuple[LayerProfile, Tensor]] = []
    for profile in layers:
        weight = parameters.get(f"{profile.name}.weight")
        if weight is None:
            raise InvalidArgument(f"layer {profile.name!r} has no weight parameter in the model")
        resolved.append((profile, weight))
    return resolved


def _modules_of(model: nn.Module, names: Sequence[str]) -> list[tuple[str, nn.Module]]:
    try:
        return [(name, model.get_submodule(name)) for name in names]
    except AttributeError as exc:
        raise InvalidArgument(
            f"activation sensitivity needs the layers as submodules of an eager model: {exc}"
        ) from exc


def _staged(progress: AnalysisProgress | None, stage: str) -> ProgressFn | None:
    if progress is None:
        return None
    report = progress

    def forward(estimate: LayerTrace) -> None:
        report(stage, estimate)

    return forward


def analyse(
    model: nn.Module,
    batches: Sequence[Batch],
    layers: Sequence[LayerProfile] | None,
    options: Sequence[QuantOption | str],
    settings: SensitivitySettings = SensitivitySettings(),
    progress: AnalysisProgress | None = None,
    cancel: CancelFlag | None = None,
    *,
    loss_fn: LossFn | None = None,
) -> SensitivityReport:
    """The per-layer sensitivity report of ``model`` on ``batches``.

    ``layers`` are the layers to analyse (None: every quantizable layer,
    found with a forward at the batches' input shape); ``options`` are
    priced on each of them. ``loss_fn(outputs, targets)`` returns the batch's
    mean loss (default: cross-entropy). ``progress`` gets every running
    estimate; ``cancel.is_set()`` is checked before every sample.
    """
    started = time.perf_counter()
    loss = loss_fn if loss_fn is not None else F.cross_entropy
    resolved_options = resolve_options(options)
    check_batches(batches)
    if len(batches) > settings.max_samples:
        raise InvalidArgument(
            f"{len(batches)} batches but at most {settings.max_samples} samples per layer: "
            "every batch needs a sample; use fewer, larger batches or raise max_samples"
        )
    resolved = _resolve_layers(model, batches, layers)
    weights = [w for _, w in resolved]
    need = estimate_memory(model, batches, weights, settings)
    device = model_device(model)
    limit = (
        settings.memory_limit_bytes
        if settings.memory_limit_bytes is not None
        else free_memory_bytes(device)
    )
    _check_memory(need, limit, device)
    probes, measure = _fitting_plan(settings, device, need, limit)
    estimator = settings.estimator(probes, measure)
    validate_data(model, loss, batches)
    choices: list[HvpChoice] = []

    names = [p.name for p, _ in resolved]
    traces = estimate_weight_traces(
        model,
        loss,
        list(zip(names, weights, strict=True)),
        batches,
        estimator,
        progress=_staged(progress, "weights"),
        cancel=cancel,
        on_choice=choices.append,
    )
    activations: list[LayerTrace | None] = [None] * len(resolved)
    if settings.activation_sensitivity:
        activations = list(
            estimate_activation_traces(
                model,
                loss,
                _modules_of(model, names),
                batches,
                estimator,
                progress=_staged(progress, "activations"),
                cancel=cancel,
            )
        )
    entries: list[LayerSensitivity] = []
    for (profile, weight), trace, activation in zip(resolved, traces, activations, strict=True):
        entries.append(
            layer_sensitivity(
                profile,
                weight,
                trace.trace,
                trace.standard_error,
                trace.samples,
                resolved_options,
                activation_trace=None if activation is None else activation.trace,
                activation_standard_error=(
                    None if activation is None else activation.standard_error
                ),
            )
        )
    seconds = time.perf_counter() - started
    logger.info("sensitivity of %d layers in %.1f s", len(entries), seconds)
    return SensitivityReport(
        layers=tuple(entries),
        options=tuple(o.key for o in resolved_options),
        estimator=EstimatorInfo(
            method=METHOD,
            target_relative_se=settings.target_relative_se,
            max_samples=settings.max_samples,
            min_samples=settings.min_samples,
            sketch_size=settings.sketch_size,
            sketch_budget=settings.sketch_budget,
            seed=settings.seed,
            num_batches=len(batches),
            batch_sizes=tuple(int(inputs.shape[0]) for inputs, _ in batches),
            hvp_probes_per_call=choices[0].probes_per_call,
            hvp_seconds_per_sample={str(k): v for k, v in choices[0].seconds_per_sample.items()},
        ),
        seconds=seconds,
    )
