"""The sensitivity report: per-layer traces, error bars and the Omega table.

Value objects only, plus the one function that prices a layer's options
(``layer_sensitivity``). Field names follow ``sensitivity.proto`` so the
service's converter is a field-by-field copy. ``to_dict``/``from_dict`` give
plain JSON types for the artifact store (never pickle).

Conventions (METHODS.md section 3):

- ``trace`` is Tr(H_ll) of the loss Hessian block of the layer's *weight*
  (bias excluded); ``normalized_trace`` divides it by the weight's element
  count (HAWQ-V3's convention, what its ILP consumes), and so does
  ``normalized_standard_error``.
- ``omega = normalized_trace * ||Q(W) - W||^2`` per option, Q the shared fake
  quantizer with the scale from max |W| (per tensor or per channel as the
  option says). A negative trace keeps its sign.
- ``activation_trace`` (optional) is a different quantity and named as such:
  the mean over samples of the trace of the per-sample loss's Hessian with
  respect to the layer's input activation.

This module does not import torch at import time, so a stored report can be
read where torch is not installed; only ``layer_sensitivity`` needs it (it
quantizes the weight).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from bitmesh.costs import LayerCosts, option_costs
from bitmesh.errors import InvalidArgument
from bitmesh.formats import QuantOption, parse_option

if TYPE_CHECKING:
    from torch import Tensor

    from bitmesh.models.layers import LayerProfile

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "EstimatorInfo",
    "LayerSensitivity",
    "OptionPerturbation",
    "SensitivityReport",
    "layer_sensitivity",
]

#: Bumped whenever a stored report's meaning or layout changes.
REPORT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class OptionPerturbation:
    """One option on one layer: its weight error, Omega and costs."""

    option_key: str
    weight_error_sq: float
    omega: float
    costs: LayerCosts

    @property
    def option(self) -> QuantOption:
        """The option itself (keys round-trip through ``parse_option``)."""
        return parse_option(self.option_key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "option_key": self.option_key,
            "weight_error_sq": self.weight_error_sq,
            "omega": self.omega,
            "costs": asdict(self.costs),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OptionPerturbation:
        return cls(
            option_key=str(data["option_key"]),
            weight_error_sq=float(data["weight_error_sq"]),
            omega=float(data["omega"]),
            costs=LayerCosts(**{k: float(v) for k, v in data["costs"].items()}),
        )


@dataclass(frozen=True)
class LayerSensitivity:
    """A layer's identity and geometry (as ``LayerProfile``), its trace with
    error bar, and its Omega/costs per option."""

    name: str
    kind: str
    parameters: int
    weight_shape: tuple[int, ...]
    output_channels: int
    macs: int
    trace: float
    normalized_trace: float
    standard_error: float
    samples: int
    perturbations: tuple[OptionPerturbation, ...] = ()
    activation_trace: float | None = None
    activation_standard_error: float | None = None

    @property
    def normalized_standard_error(self) -> float:
        """Standard error of ``normalized_trace``."""
        return self.standard_error / self.parameters

    @property
    def relative_se(self) -> float:
        """Standard error over |trace|; inf for a zero trace with an error."""
        if self.standard_error == 0.0:
            return 0.0
        return self.standard_error / abs(self.trace) if self.trace else math.inf

    def interval95(self) -> tuple[float, float]:
        """The 95 % confidence interval of ``trace`` (normal approximation)."""
        half = 1.96 * self.standard_error
        return self.trace - half, self.trace + half

    def perturbation(self, option_key: str) -> OptionPerturbation:
        """The entry for one option key; NotFound-style InvalidArgument if absent."""
        for entry in self.perturbations:
            if entry.option_key == option_key:
                return entry
        known = ", ".join(p.option_key for p in self.perturbations)
        raise InvalidArgument(f"layer {self.name!r} has no option {option_key!r}; has: {known}")

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["weight_shape"] = list(self.weight_shape)
        data["perturbations"] = [p.to_dict() for p in self.perturbations]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerSensitivity:
        activation = data.get("activation_trace")
        activation_se = data.get("activation_standard_error")
        return cls(
            name=str(data["name"]),
            kind=str(data["kind"]),
            parameters=int(data["parameters"]),
            weight_shape=tuple(int(d) for d in data["weight_shape"]),
            output_channels=int(data["output_channels"]),
            macs=int(data["macs"]),
            trace=float(data["trace"]),
            normalized_trace=float(data["normalized_trace"]),
            standard_error=float(data["standard_error"]),
            samples=int(data["samples"]),
            perturbations=tuple(OptionPerturbation.from_dict(p) for p in data["perturbations"]),
            activation_trace=None if activation is None else float(activation),
            activation_standard_error=None if activation_se is None else float(activation_se),
        )


@dataclass(frozen=True)
class EstimatorInfo:
    """How the traces were estimated (stored with them so numbers can be
    compared only with numbers made the same way)."""

    method: str
    target_relative_se: float
    max_samples: int
    min_samples: int
    sketch_size: int
    sketch_budget: int
    seed: int
    num_batches: int
    batch_sizes: tuple[int, ...]
    #: Probes per autograd call, and the seconds per sample measured for
    #: each candidate (keys: probes per call; empty when not measured).
    hvp_probes_per_call: int = 1
    hvp_seconds_per_sample: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["batch_sizes"] = list(self.batch_sizes)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EstimatorInfo:
        return cls(
            method=str(data["method"]),
            target_relative_se=float(data["target_relative_se"]),
            max_samples=int(data["max_samples"]),
            min_samples=int(data["min_samples"]),
            sketch_size=int(data["sketch_size"]),
            sketch_budget=int(data["sketch_budget"]),
            seed=int(data["seed"]),
            num_batches=int(data["num_batches"]),
            batch_sizes=tuple(int(b) for b in data["batch_sizes"]),
            hvp_probes_per_call=int(data.get("hvp_probes_per_call", 1)),
            hvp_seconds_per_sample={
                str(k): float(v) for k, v in data.get("hvp_seconds_per_sample", {}).items()
            },
        )


@dataclass(frozen=True)
class SensitivityReport:
    """Every analysed layer in forward order, the options priced, and how."""

    layers: tuple[LayerSensitivity, ...]
    options: tuple[str, ...]
    estimator: EstimatorInfo
    seconds: float
    model_hash: str = ""
    dataset_hash: str = ""
    schema_version: int = field(default=REPORT_SCHEMA_VERSION)

    def __post_init__(self) -> None:
        names = [entry.name for entry in self.layers]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise InvalidArgument(f"layers repeated in the report: {', '.join(repeated)}")

    def layer(self, name: str) -> LayerSensitivity:
        for entry in self.layers:
            if entry.name == name:
                return entry
        raise InvalidArgument(f"no layer {name!r} in the report")

    def omega_table(self) -> dict[str, dict[str, float]]:
        """layer name -> option key -> Omega (what the solver minimises)."""
        return {
            entry.name: {p.option_key: p.omega for p in entry.perturbations}
            for entry in self.layers
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "layers": [entry.to_dict() for entry in self.layers],
            "options": list(self.options),
            "estimator": self.estimator.to_dict(),
            "seconds": self.seconds,
            "model_hash": self.model_hash,
            "dataset_hash": self.dataset_hash,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SensitivityReport:
        version = int(data.get("schema_version", 0))
        if version != REPORT_SCHEMA_VERSION:
            raise InvalidArgument(
                f"sensitivity report schema version {version} is not "
                f"{REPORT_SCHEMA_VERSION}; run the analysis again"
            )
        return cls(
            layers=tuple(LayerSensitivity.from_dict(e) for e in data["layers"]),
            options=tuple(str(o) for o in data["options"]),
            estimator=EstimatorInfo.from_dict(data["estimator"]),
            seconds=float(data["seconds"]),
            model_hash=str(data.get("model_hash", "")),
            dataset_hash=str(data.get("dataset_hash", "")),
        )


def layer_sensitivity(
    profile: LayerProfile,
    weight: Tensor,
    trace: float,
    standard_error: float,
    samples: int,
    options: Sequence[QuantOption],
    *,
    activation_trace: float | None = None,
    activation_standard_error: float | None = None,
) -> LayerSensitivity:
    """Price every option on one layer: ||Q(W) - W||^2 with the shared fake
    quantizer (scale from max |W|, per tensor or per output channel), Omega =
    normalised trace x that error, and the shared cost model's costs."""
    from bitmesh.quant.fake_quant import weight_error_sq  # torch, only when pricing

    count = weight.numel()
    if count == 0:
        raise InvalidArgument(f"layer {profile.name!r} has an empty weight")
    normalized = trace / count
    perturbations = []
    for option in options:
        error_sq = weight_error_sq(weight.detach(), option.weight, option.granularity)
        perturbations.append(
            OptionPerturbation(
                option_key=option.key,
                weight_error_sq=error_sq,
                omega=normalized * error_sq,
                costs=option_costs(
                    profile.parameters,
                    profile.macs,
                    option,
                    profile.output_channels,
                    weight_shape=tuple(weight.shape),
                ),
            )
        )
    return LayerSensitivity(
        name=profile.name,
        kind=profile.kind,
        parameters=count,
        weight_shape=tuple(weight.shape),
        output_channels=profile.output_channels,
        macs=profile.macs,
        trace=trace,
        normalized_trace=normalized,
        standard_error=standard_error,
        samples=samples,
        perturbations=tuple(perturbations),
        activation_trace=activation_trace,
        activation_standard_error=activation_standard_error,
    )
