"""What a search asks for: frozen value objects, checked when built.

The job record stores the request as JSON (``to_dict``) and the coordinator
rebuilds it (``from_dict``). Range checks live here, so a bad number is
refused at submission with a message saying what to fix.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from bitmesh.data.spec import DatasetSpec
from bitmesh.errors import InvalidArgument
from bitmesh.formats import QuantOption, parse_option
from bitmesh.models.spec import ModelSpec
from proxy_nas_svc.space import Hyperparameter, space_from_dict, space_to_dict, validate_space

SamplerName = Literal["tpe", "random"]
SAMPLERS: tuple[str, ...] = ("tpe", "random")
MAX_TRIALS = 10_000
MAX_RUNG_STEPS = 1_000_000
MAX_PARALLEL = 256


@dataclass(frozen=True)
class Rung:
    """One fidelity level: train on ``data_fraction`` of the data for ``steps``."""

    data_fraction: float
    steps: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.data_fraction) and 0 < self.data_fraction <= 1):
            raise InvalidArgument(
                f"a rung's data_fraction must be in (0, 1], got {self.data_fraction}"
            )
        if not (isinstance(self.steps, int) and 1 <= self.steps <= MAX_RUNG_STEPS):
            raise InvalidArgument(
                f"a rung's steps must be in 1..{MAX_RUNG_STEPS}, got {self.steps}"
            )

    def at_least(self, other: Rung) -> bool:
        return self.data_fraction >= other.data_fraction and self.steps >= other.steps


def validate_fidelity(rungs: tuple[Rung, ...]) -> None:
    """Rungs must increase: no less data and no fewer steps, and not equal."""
    if not rungs:
        raise InvalidArgument(
            "the fidelity schedule is empty: give at least one rung (data_fraction, steps)"
        )
    for i in range(1, len(rungs)):
        before, after = rungs[i - 1], rungs[i]
        if not after.at_least(before) or after == before:
            raise InvalidArgument(
                f"the fidelity schedule does not increase at rung {i}: "
                f"({before.data_fraction:g}, {before.steps} steps) -> "
                f"({after.data_fraction:g}, {after.steps} steps); each rung needs at least "
                "the data and the steps of the one before, and more of one"
            )


@dataclass(frozen=True)
class SearchRequest:
    """One proxy search: the model at a fixed configuration, the knobs to tune.

    ``config`` (layer -> option) is what every trial trains, with
    ``default_option`` for the layers it does not name (both empty: the
    model stays FP32, which only the submission check refuses). ``full_fidelity``
    defaults to all the data at the last rung's steps.
    """

    model: ModelSpec
    dataset: DatasetSpec
    config: dict[str, QuantOption]
    space: dict[str, Hyperparameter]
    trials: int
    fidelity: tuple[Rung, ...]
    full_fidelity: Rung | None = None
    full_checks: int = 0
    reduction_factor: int = 3
    sampler: SamplerName = "tpe"
    parallel: int = 4
    seed: int = 0
    batch_size: int = 64
    default_option: QuantOption | None = None
    budgets: dict[str, Any] = field(default_factory=dict)  # kept for the record only

    def __post_init__(self) -> None:
        validate_space(list(self.space.values()))
        if not (isinstance(self.trials, int) and 1 <= self.trials <= MAX_TRIALS):
            raise InvalidArgument(f"the trial budget must be in 1..{MAX_TRIALS}, got {self.trials}")
        validate_fidelity(self.fidelity)
        if not self.full.at_least(self.fidelity[-1]):
            raise InvalidArgument(
                "full fidelity must be at least the last rung "
                f"({self.fidelity[-1].data_fraction:g}, {self.fidelity[-1].steps} steps)"
            )
        if not 0 <= self.full_checks <= self.trials:
            raise InvalidArgument(
                f"full_fidelity_checks must be in 0..trials ({self.trials}), got {self.full_checks}"
            )
        if not 2 <= self.reduction_factor <= 100:
            raise InvalidArgument(
                f"reduction_factor must be in 2..100, got {self.reduction_factor}"
            )
        if self.sampler not in SAMPLERS:
            raise InvalidArgument(
                f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}"
            )
        if not 1 <= self.parallel <= MAX_PARALLEL:
            raise InvalidArgument(f"parallel_trials must be in 1..{MAX_PARALLEL}")
        if not 1 <= self.batch_size <= 4096:
            raise InvalidArgument(f"batch_size must be in 1..4096, got {self.batch_size}")
        if self.seed < 0:
            raise InvalidArgument(f"seed must be >= 0, got {self.seed}")

    @property
    def full(self) -> Rung:
        return self.full_fidelity or Rung(1.0, self.fidelity[-1].steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": asdict(self.model),
            "dataset": asdict(self.dataset),
            "config": {k: v.key for k, v in self.config.items()},
            "default_option": self.default_option.key if self.default_option else None,
            "space": space_to_dict(self.space),
            "trials": self.trials,
            "fidelity": [asdict(r) for r in self.fidelity],
            "full_fidelity": asdict(self.full),
            "full_checks": self.full_checks,
            "reduction_factor": self.reduction_factor,
            "sampler": self.sampler,
            "parallel": self.parallel,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "budgets": dict(self.budgets),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchRequest:
        shape = data["dataset"].get("shape")
        default = data.get("default_option")
        return cls(
            model=ModelSpec(
                **{**data["model"], "input_shape": tuple(data["model"]["input_shape"])}
            ),
            dataset=DatasetSpec(
                **{**data["dataset"], "shape": tuple(shape) if shape is not None else None}
            ),
            config={k: parse_option(v) for k, v in data["config"].items()},
            default_option=parse_option(default) if default else None,
            space=space_from_dict(data["space"]),
            trials=int(data["trials"]),
            fidelity=tuple(
                Rung(float(r["data_fraction"]), int(r["steps"])) for r in data["fidelity"]
            ),
            full_fidelity=Rung(
                float(data["full_fidelity"]["data_fraction"]), int(data["full_fidelity"]["steps"])
            ),
            full_checks=int(data["full_checks"]),
            reduction_factor=int(data["reduction_factor"]),
            sampler=data["sampler"],
            parallel=int(data["parallel"]),
            seed=int(data["seed"]),
            batch_size=int(data["batch_size"]),
            budgets=dict(data.get("budgets") or {}),
        )
