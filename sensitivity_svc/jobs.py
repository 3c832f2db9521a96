"""A sensitivity analysis as a job: prepare (validate) at once, run in a thread, cache.

``prepare`` does everything that can fail because of the request (loading
the model and data, finding layers, checking labels and the loss) before a
job exists, so bad input is a gRPC status, not a failed job. A program
file (``.pt2``) is the exception: it is vetted in the sandbox here but
never loaded in this process, so its label and loss checks run with its
traces in the job's child (:mod:`sensitivity_svc.isolated`) and fail the
job. ``run`` then either answers from the artifact store (same model, data
and estimator settings: the traces are reused and only options not priced
before get their Omega computed) or estimates the traces and stores the
report.

A repeated request skips even the loading: the service remembers which
stored report each request fingerprint (the model's spec with its files'
sizes and modification times, the dataset's content hash, the batching and
the estimator settings) led to, the way ``dataset_hash`` already treats an
image folder. Loading resnet18 and checking its data took 0.5-2 s here, more
than 1 % of an analysis; the remembered answer takes milliseconds. Only a
request whose stored report prices every asked option is answered that way;
anything else is loaded and checked as usual.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from bitmesh.artifacts import ArtifactStore, cache_key
from bitmesh.data.datasets import DIGITS_SHAPE, DatasetSpec, dataset_hash, load_dataset, make_loader
from bitmesh.devices import resolve_device
from bitmesh.errors import InvalidArgument
from bitmesh.formats import QuantOption
from bitmesh.jobs.runner import JobContext
from bitmesh.limits import InputLimits
from bitmesh.models.layer_cache import layers_of
from bitmesh.models.layers import LayerProfile
from bitmesh.models.loading import ModelSpec
from bitmesh.models.model_cache import load_model_copy, model_hash_of
from bitmesh.models.sandbox import vet_model
from bitmesh.settings import load_settings
from sensitivity_svc.analysis import (
    METHOD,
    SensitivitySettings,
    analyse,
    check_batches,
    validate_data,
)
from sensitivity_svc.hutchinson import LayerTrace
from sensitivity_svc.isolated import analyse_in_child
from sensitivity_svc.report import SensitivityReport, layer_sensitivity

NAMESPACE = "sensitivity"
DEFAULT_BATCH_SIZE = 32
EVENT_INTERVAL_S = 0.5


#: Request fingerprints remembered per service process (each maps to a cache key).
REMEMBERED_REQUESTS = 1024


@dataclass
class PreparedAnalysis:
    """What ``run`` needs. ``model`` is None when ``stored`` (the stored
    report, which prices every requested option) answers the request."""

    model: nn.Module | None
    layers: list[LayerProfile]
    batches: list[tuple[Tensor, Tensor]]
    options: list[QuantOption]
    settings: SensitivitySettings
    key: str
    model_hash: str
    dataset_hash: str
    stored: dict[str, Any] | None = None
    #: A program file: never loaded here, its analysis runs in a child
    #: (sensitivity_svc/isolated.py), so ``model`` stays None.
    program: ModelSpec | None = None


class _RequestMemo:
    """Bounded, thread-safe map from request fingerprint to cache key."""

    def __init__(self, capacity: int) -> None:
        self._keys: OrderedDict[str, str] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def get(self, fingerprint: str) -> str | None:
        with self._lock:
            key = self._keys.get(fingerprint)
            if key is not None:
                self._keys.move_to_end(fingerprint)
            return key

    def put(self, fingerprint: str, key: str) -> None:
        with self._lock:
            self._keys[fingerprint] = key
            self._keys.move_to_end(fingerprint)
            while len(self._keys) > self._capacity:
                self._keys.popitem(last=False)


_remembered = _RequestMemo(REMEMBERED_REQUESTS)


def _file_state(path: str | None) -> tuple[int, int] | None:
    if not path:
        return None
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def request_fingerprint(
    model_spec: ModelSpec,
    dataset_digest: str,
    batch_size: int,
    estimator: dict[str, Any],
    activation_sensitivity: bool,
) -> str | None:
    """A key that changes whenever the loaded model or batches could (None
    when a file cannot be read: the normal load then reports why)."""
    try:
        files = [
            _file_state(model_spec.weights_path),
            _file_state(model_spec.name_or_path) if model_spec.source != "architecture" else None,
        ]
    except OSError:
        return None
    return cache_key(
        asdict(model_spec),
        files,
        torch.__version__,
        importlib.metadata.version("torchvision"),  # without importing it (~3 s)
        dataset_digest,
        batch_size,
        estimator,
        activation_sensitivity,
        METHOD,
    )


def _batches(
    spec: DatasetSpec, batch_size: int, count: int, seed: int
) -> list[tuple[Tensor, Tensor]]:
    dataset = load_dataset(spec)
    loader = make_loader(dataset, batch_size, shuffle=True, seed=seed)
    out: list[tuple[Tensor, Tensor]] = []
    for inputs, targets in loader:
        out.append((inputs, targets))
        if len(out) == count:
            break
    if len(out) < count:
        raise InvalidArgument(
            f"the dataset gives {len(out)} batches of {batch_size}, {count} were requested; "
            "ask for fewer batches or a smaller batch size"
        )
    return out


def check_analysis_size(
    model_spec: ModelSpec,
    dataset_spec: DatasetSpec,
    batch_size: int,
    batches: int,
    limits: InputLimits | None = None,
) -> None:
    """Refuse an analysis whose batches would not fit before any is loaded:
    every batch is kept (and copied to the device) for the whole analysis.
    Its samples have the dataset's shape (the model's when that is unknown
    here; a mismatch is refused once the first batch is read)."""
    limits = limits or InputLimits.current()
    limits.batch_size("batch_size", batch_size)
    limits.batches("num_batches", batches)
    shape = DIGITS_SHAPE if dataset_spec.kind == "digits" else dataset_spec.shape
    largest = max((shape or ()), model_spec.input_shape, key=math.prod)
    limits.data_in_memory(
        f"the analysis ({batches} batches of {batch_size})", batches * batch_size, largest
    )


def prepare(
    model_spec: ModelSpec,
    dataset_spec: DatasetSpec,
    options: Sequence[QuantOption],
    estimator: dict[str, Any],
    batch_size: int,
    activation_sensitivity: bool,
    artifacts: ArtifactStore | None = None,
) -> PreparedAnalysis:
    """Load and check everything a request names (errors are the request's
    fault), or, given ``artifacts``, find a remembered stored answer."""
    if not options:
        raise InvalidArgument("no quantization options: give at least one, e.g. int4, int8, e4m3")
    if batch_size < 0:
        raise InvalidArgument(
            f"batch_size must be >= 0 (0 = {DEFAULT_BATCH_SIZE}), got {batch_size}"
        )
    size = batch_size or DEFAULT_BATCH_SIZE
    check_analysis_size(model_spec, dataset_spec, size, int(estimator["num_batches"]))
    d_hash = dataset_hash(dataset_spec)
    operator = load_settings()
    settings = SensitivitySettings(
        target_relative_se=float(estimator["target_relative_se"]),
        max_samples=int(estimator["max_samples"]),
        seed=int(estimator["seed"]),
        activation_sensitivity=activation_sensitivity,
        hvp_strategy=operator.hvp_strategy,
        hvp_probes_per_call=operator.hvp_probes_per_call,
    )
    fingerprint = request_fingerprint(model_spec, d_hash, size, estimator, activation_sensitivity)
    known = _remembered.get(fingerprint) if fingerprint is not None else None
    if known is not None and artifacts is not None:
        stored = artifacts.get_ref(NAMESPACE, known)
        if stored is not None and {o.key for o in options} <= set(stored.get("options", ())):
            return PreparedAnalysis(
                None, [], [], list(options), settings, known, "", d_hash, stored=stored
            )

    # A program file is loaded, checked and probed in the sandbox first: one
    # that loops, allocates without bound or calls I/O ops is refused there,
    # and its layers and hash come from there. It is never loaded in this
    # process: the job's child (sensitivity_svc/isolated.py) loads it, checks
    # the data against it and runs the traces. An architecture name (trusted
    # torchvision or bitmesh code, weights read weights_only) runs here.
    vetted = vet_model(model_spec)
    torch.manual_seed(int(estimator["seed"]))
    model = load_model_copy(model_spec) if vetted is None else None
    if vetted is not None:
        layers, m_hash = list(vetted.layers), vetted.model_hash
    else:
        assert model is not None
        layers = layers_of(model, model_spec)
        m_hash = model_hash_of(model_spec, model)
    batches = _batches(dataset_spec, size, int(estimator["num_batches"]), int(estimator["seed"]))
    sample_shape = tuple(batches[0][0].shape[1:])
    if sample_shape != tuple(model_spec.input_shape):
        raise InvalidArgument(
            f"the dataset's samples have shape {sample_shape} but the model expects "
            f"{tuple(model_spec.input_shape)}; set the model's input_shape or the dataset's shape"
        )
    check_batches(batches)
    # The traces run on BITMESH_DEVICE (a GPU when there is one); a device
    # the machine lacks is refused here, before the job is queued. A program's
    # child runs on the CPU (its memory cap is an address-space rlimit).
    device = resolve_device()
    if model is not None:
        model.to(device)
        batches = [(inputs.to(device), targets.to(device)) for inputs, targets in batches]
        # Labels that do not fit the outputs, or a NaN/inf loss, are the
        # request's fault: refuse them now rather than fail the job later (a
        # program's child makes the same checks first, failing the job).
        validate_data(model, torch.nn.functional.cross_entropy, batches)
    key = cache_key(
        m_hash,
        d_hash,
        size,
        estimator,
        activation_sensitivity,
        [layer.name for layer in layers],
        METHOD,
    )
    if fingerprint is not None:
        _remembered.put(fingerprint, key)
    return PreparedAnalysis(
        model,
        layers,
        batches,
        list(options),
        settings,
        key,
        m_hash,
        d_hash,
        program=model_spec if vetted is not None else None,
    )


def _weights(model: nn.Module) -> dict[str, Tensor]:
    return {
        name: module.weight for name, module in model.named_modules() if hasattr(module, "weight")
    }


def price_options(
    report: SensitivityReport,
    layers: Sequence[LayerProfile],
    model: nn.Module,
    missing: Sequence[QuantOption],
) -> SensitivityReport:
    """Price only the options the stored report lacks, from its stored traces
    (here, or in a program's analysis child)."""
    weights = _weights(model)
    profiles = {p.name: p for p in layers}
    priced = []
    for layer in report.layers:
        extra = layer_sensitivity(
            profiles[layer.name],
            weights[layer.name],
            layer.trace,
            layer.standard_error,
            layer.samples,
            missing,
        )
        priced.append(replace(layer, perturbations=layer.perturbations + extra.perturbations))
    return replace(
        report, layers=tuple(priced), options=report.options + tuple(o.key for o in missing)
    )


def _only(report: SensitivityReport, options: Sequence[QuantOption]) -> SensitivityReport:
    keys = [o.key for o in options]
    layers = tuple(
        replace(layer, perturbations=tuple(layer.perturbation(k) for k in keys))
        for layer in report.layers
    )
    return replace(report, layers=layers, options=tuple(keys))


def run(job: PreparedAnalysis, artifacts: ArtifactStore, ctx: JobContext) -> dict[str, Any]:
    started = time.perf_counter()
    stored = job.stored if job.stored is not None else artifacts.get_ref(NAMESPACE, job.key)
    if stored is not None:
        report = SensitivityReport.from_dict(stored)
        missing = [o for o in job.options if o.key not in report.options]
        if missing:
            ctx.report(
                0.5,
                "pricing new options",
                f"reusing stored traces; pricing {len(missing)} new options",
            )
            if job.program is not None:
                report = analyse_in_child(
                    job.program,
                    job.batches,
                    job.layers,
                    missing,
                    job.settings,
                    job.settings.seed,
                    None,
                    ctx,
                    stored=report,
                )
            else:
                assert job.model is not None, "prepare loads the model when options are missing"
                report = price_options(report, job.layers, job.model, missing)
            artifacts.set_ref(NAMESPACE, job.key, report.to_dict())
        artifact = artifacts.put_json(report.to_dict())
        answer = _only(report, job.options)
        return {
            "report": answer.to_dict(),
            "cached": True,
            "artifact": artifact.__dict__,
            "seconds": time.perf_counter() - started,
        }

    estimates: dict[str, LayerTrace] = {}
    last_event = [0.0]
    total = len(job.layers)

    def progress(stage: str, estimate: LayerTrace) -> None:
        estimates[f"{stage}:{estimate.name}"] = estimate
        now = time.monotonic()
        if now - last_event[0] < EVENT_INTERVAL_S and not estimate.done:
            return
        last_event[0] = now
        done = sum(1 for e in estimates.values() if e.done)
        ctx.report(
            min(0.99, done / max(1, total * (2 if job.settings.activation_sensitivity else 1))),
            f"estimating {stage} traces",
            f"{done} of {total} layers done",
            event={
                "layers": [
                    {
                        "layer": e.name,
                        "trace": e.trace,
                        "standard_error": e.standard_error
                        if math.isfinite(e.standard_error)
                        else 0.0,
                        "samples": e.samples,
                        "done": e.done,
                    }
                    for key, e in estimates.items()
                    if key.startswith(stage)
                ]
            },
        )

    if job.program is not None:
        report = analyse_in_child(
            job.program,
            job.batches,
            job.layers,
            job.options,
            job.settings,
            job.settings.seed,
            progress,
            ctx,
        )
    else:
        assert job.model is not None, "prepare loads the model when nothing is stored"
        report = analyse(
            job.model, job.batches, job.layers, job.options, job.settings, progress, ctx
        )
    report = replace(report, model_hash=job.model_hash, dataset_hash=job.dataset_hash)
    artifact = artifacts.set_ref(NAMESPACE, job.key, report.to_dict())
    return {
        "report": report.to_dict(),
        "cached": False,
        "artifact": artifact.__dict__,
        "seconds": time.perf_counter() - started,
    }
