"""proto <-> domain conversion for the sensitivity service (the edge only)."""

from __future__ import annotations

from bitmesh.errors import InvalidArgument
from bitmesh.formats import parse_option
from bitmesh.limits import InputLimits
from bitmesh.rpc.convert import costs_to_pb, option_to_pb
from bitmesh.v1 import common_pb2, sensitivity_pb2
from sensitivity_svc.analysis import SensitivitySettings
from sensitivity_svc.report import LayerSensitivity, SensitivityReport

DEFAULT_TARGET_RSE = 0.05
DEFAULT_MAX_SAMPLES = 200
DEFAULT_BATCHES = 1
#: The fewest samples a layer's estimate takes before it may stop (the
#: analysis's own ``min_samples``): a smaller ``max_samples`` used to be
#: accepted here and then fail the job when the estimator refused it.
MIN_SAMPLES = SensitivitySettings.min_samples
MAX_SAMPLES = 100_000


def settings_from_pb(
    msg: sensitivity_pb2.EstimatorSettings, limits: InputLimits | None = None
) -> dict[str, float | int]:
    """Estimator settings with defaults filled, checked at the edge (the
    batches an analysis keeps: BITMESH_MAX_BATCHES)."""
    limits = limits or InputLimits.current()
    target = msg.target_relative_se or DEFAULT_TARGET_RSE
    max_samples = msg.max_samples or DEFAULT_MAX_SAMPLES
    batches = msg.num_batches or DEFAULT_BATCHES
    if not 0 < target < 10:
        raise InvalidArgument(f"target_relative_se must be in (0, 10), got {target}")
    if not MIN_SAMPLES <= max_samples <= MAX_SAMPLES:
        raise InvalidArgument(
            f"max_samples must be in [{MIN_SAMPLES}, {MAX_SAMPLES}] (every layer takes at "
            f"least {MIN_SAMPLES} samples before its estimate may stop), got {max_samples}"
        )
    if batches < 0:
        raise InvalidArgument(f"num_batches must be >= 0 (0 = {DEFAULT_BATCHES}), got {batches}")
    limits.batches("num_batches", batches)
    if batches > max_samples:
        raise InvalidArgument(
            f"num_batches ({batches}) must be at most max_samples ({max_samples}): every batch "
            "needs a sample; use fewer, larger batches or raise max_samples"
        )
    return {
        "target_relative_se": target,
        "max_samples": max_samples,
        "seed": msg.seed,
        "num_batches": batches,
    }


def layer_to_pb(layer: LayerSensitivity) -> sensitivity_pb2.LayerSensitivity:
    out = sensitivity_pb2.LayerSensitivity(
        layer=common_pb2.LayerInfo(
            name=layer.name,
            kind=layer.kind,
            parameters=layer.parameters,
            macs=layer.macs,
            weight_shape=list(layer.weight_shape),
            output_channels=layer.output_channels,
        ),
        trace=layer.trace,
        normalized_trace=layer.normalized_trace,
        standard_error=layer.standard_error,
        samples=layer.samples,
        perturbations=[
            sensitivity_pb2.OptionPerturbation(
                option=option_to_pb(parse_option(p.option_key)),
                option_key=p.option_key,
                weight_error_sq=p.weight_error_sq,
                omega=p.omega,
                costs=costs_to_pb(p.costs),
            )
            for p in layer.perturbations
        ],
    )
    if layer.activation_trace is not None:
        out.activation_trace = layer.activation_trace
    return out


def report_to_pb(
    report: SensitivityReport,
    settings: dict[str, float | int],
    cached: bool,
    artifact: dict[str, object],
) -> sensitivity_pb2.SensitivityReport:
    return sensitivity_pb2.SensitivityReport(
        layers=[layer_to_pb(layer) for layer in report.layers],
        model_hash=report.model_hash,
        dataset_hash=report.dataset_hash,
        settings=sensitivity_pb2.EstimatorSettings(
            target_relative_se=float(settings["target_relative_se"]),
            max_samples=int(settings["max_samples"]),
            seed=int(settings["seed"]),
            num_batches=int(settings["num_batches"]),
        ),
        seconds=report.seconds,
        cached=cached,
        artifact=common_pb2.ArtifactRef(
            uri=str(artifact.get("uri", "")),
            sha256=str(artifact.get("sha256", "")),
            media_type="application/json",
            size_bytes=int(str(artifact.get("size_bytes", 0))),
        ),
    )
