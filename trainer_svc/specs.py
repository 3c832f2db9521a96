"""What a training job asks for: frozen value objects, checked when built.

The job record stores a request as JSON (``to_dict``), and the worker rebuilds
it (``from_dict``), so the request a worker runs is exactly the one the
service accepted. Range checks live here (``__post_init__``), so a bad number
is refused at submission with a message saying what to fix; checks that need
the model or the data live in :mod:`trainer_svc.validate`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from bitmesh.costs import SizeAccounting, check_size_accounting
from bitmesh.data.spec import DatasetSpec
from bitmesh.errors import InvalidArgument
from bitmesh.formats import Granularity, NumericFormat, QuantOption, get_format, parse_option
from bitmesh.models.spec import ModelSpec
from bitmesh.quant.range_spec import RangeEstimator

JobKind = Literal["qat", "search", "calibration"]
Schedule = Literal["constant", "cosine", "step"]
CostAxisName = Literal["bops", "size"]

JOB_KINDS: tuple[str, ...] = get_args(JobKind)
MAX_STEPS = 1_000_000
MAX_BATCH_SIZE = 4096
MAX_LEARNING_RATE = 10.0
MAX_CALIBRATION_BATCHES = 100_000


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidArgument(message)


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@dataclass(frozen=True)
class TrainingSettings:
    """The optimiser loop: SGD (Nesterov momentum 0.9) over ``steps`` batches."""

    steps: int = 300
    batch_size: int = 64
    learning_rate: float = 0.02
    weight_decay: float = 1e-4
    schedule: Schedule = "cosine"
    checkpoint_every: int = 0  # 0: every tenth of the steps, at most every 30 s (loop.py)
    seed: int = 0
    data_fraction: float = 1.0
    eval_every: int = 0  # 0: evaluate on the held-out split only at the end

    def __post_init__(self) -> None:
        _require(
            isinstance(self.steps, int) and 1 <= self.steps <= MAX_STEPS,
            f"steps must be an integer in 1..{MAX_STEPS}, got {self.steps}",
        )
        _require(
            isinstance(self.batch_size, int) and 1 <= self.batch_size <= MAX_BATCH_SIZE,
            f"batch_size must be in 1..{MAX_BATCH_SIZE}, got {self.batch_size}",
        )
        _require(
            _finite(self.learning_rate) and 0 < self.learning_rate <= MAX_LEARNING_RATE,
            f"learning_rate must be in (0, {MAX_LEARNING_RATE}], got {self.learning_rate}",
        )
        _require(
            _finite(self.weight_decay) and 0 <= self.weight_decay < 1,
            f"weight_decay must be in [0, 1), got {self.weight_decay}",
        )
        _require(
            self.schedule in get_args(Schedule),
            f"schedule must be one of {', '.join(get_args(Schedule))}, got {self.schedule!r}",
        )
        _require(
            self.checkpoint_every >= 0,
            f"checkpoint_every must be >= 0, got {self.checkpoint_every}",
        )
        _require(self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}")
        _require(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _require(
            _finite(self.data_fraction) and 0 < self.data_fraction <= 1,
            f"data_fraction must be in (0, 1] (0 in a request means all), got {self.data_fraction}",
        )

    @property
    def checkpoint_interval(self) -> int:
        return self.checkpoint_every or max(1, self.steps // 10)

    @property
    def log_interval(self) -> int:
        """Steps between progress events: about a hundred per job."""
        return max(1, self.steps // 100)


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation from the full-precision model (HAWQ-V3 defaults)."""

    enabled: bool = False
    alpha: float = 0.95
    temperature: float = 6.0

    def __post_init__(self) -> None:
        _require(
            _finite(self.alpha) and 0 <= self.alpha <= 1,
            f"distillation alpha must be in [0, 1], got {self.alpha}",
        )
        _require(
            _finite(self.temperature) and 0 < self.temperature <= 100,
            f"distillation temperature must be in (0, 100], got {self.temperature}",
        )


def _config_to_dict(config: dict[str, QuantOption]) -> dict[str, str]:
    return {layer: option.key for layer, option in config.items()}


def _config_from_dict(data: dict[str, str]) -> dict[str, QuantOption]:
    return {layer: parse_option(key) for layer, key in data.items()}


def _option_key(option: QuantOption | None) -> str | None:
    return option.key if option is not None else None


def _option_of(key: str | None) -> QuantOption | None:
    return parse_option(key) if key else None


def _estimator_from(data: dict[str, Any]) -> RangeEstimator:
    return RangeEstimator(**data)


@dataclass(frozen=True)
class QatSpec:
    """QAT at a fixed configuration. ``default_option`` covers the layers
    ``config`` does not name (None: they stay FP32). ``weight_granularity``
    overrides every option's granularity when set."""

    config: dict[str, QuantOption] = field(default_factory=dict)
    default_option: QuantOption | None = None
    distillation: Distillation = field(default_factory=Distillation)
    fold_bn: bool = False
    weight_granularity: Granularity | None = None
    activation_range: RangeEstimator = field(default_factory=RangeEstimator)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": _config_to_dict(self.config),
            "default_option": _option_key(self.default_option),
            "distillation": asdict(self.distillation),
            "fold_bn": self.fold_bn,
            "weight_granularity": self.weight_granularity.value
            if self.weight_granularity
            else None,
            "activation_range": asdict(self.activation_range),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QatSpec:
        granularity = data.get("weight_granularity")
        return cls(
            config=_config_from_dict(data["config"]),
            default_option=_option_of(data.get("default_option")),
            distillation=Distillation(**data["distillation"]),
            fold_bn=bool(data["fold_bn"]),
            weight_granularity=Granularity(granularity) if granularity else None,
            activation_range=_estimator_from(data["activation_range"]),
        )


@dataclass(frozen=True)
class CalibrationSpec:
    """Post-training calibration (no training): measure activation ranges."""

    config: dict[str, QuantOption] = field(default_factory=dict)
    default_option: QuantOption | None = None
    calibration_batches: int = 8
    activation_range: RangeEstimator = field(default_factory=RangeEstimator)
    weight_granularity: Granularity | None = None

    def __post_init__(self) -> None:
        _require(
            isinstance(self.calibration_batches, int)
            and 1 <= self.calibration_batches <= MAX_CALIBRATION_BATCHES,
            f"calibration_batches must be in 1..{MAX_CALIBRATION_BATCHES}, "
            f"got {self.calibration_batches}",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": _config_to_dict(self.config),
            "default_option": _option_key(self.default_option),
            "calibration_batches": self.calibration_batches,
            "activation_range": asdict(self.activation_range),
            "weight_granularity": self.weight_granularity.value
            if self.weight_granularity
            else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationSpec:
        granularity = data.get("weight_granularity")
        return cls(
            config=_config_from_dict(data["config"]),
            default_option=_option_of(data.get("default_option")),
            calibration_batches=int(data["calibration_batches"]),
            activation_range=_estimator_from(data["activation_range"]),
            weight_granularity=Granularity(granularity) if granularity else None,
        )


@dataclass(frozen=True)
class SearchSpec:
    """FLIQS one-shot search (METHODS.md section 5).

    ``cost_target`` is in the axis' unit (BOPs, or bytes of weights); when it
    is 0, ``target_option`` sets it to the cost of every layer at that option.
    ``tie_groups`` are sets of layers that share one decision.
    """

    formats: tuple[NumericFormat, ...]
    separate_activation: bool = False
    axis: CostAxisName = "bops"
    cost_target: float = 0.0
    target_option: QuantOption | None = None
    cost_beta: float = 2.0
    one_sided: bool = False
    entropy_beta_max: float = 2.0
    warmup_fraction: float = 0.25
    baseline_momentum: float = 0.9
    switchable_clipping: bool = True
    tie_groups: tuple[tuple[str, ...], ...] = ()
    policy_learning_rate: float = 0.05
    weight_granularity: Granularity = Granularity.PER_CHANNEL
    #: The published single moving-average baseline, without the
    #: counterfactual cost baseline (see trainer_svc.fliqs.Controller).
    plain_baseline: bool = False
    #: Fraction of the training split held out for the controller's quality
    #: (one extra forward pass per step); 0: the step's own training batch.
    reward_holdout: float = 0.0
    #: Learn each format's activation clip (LSQ gradient) instead of keeping
    #: a running range per format. Measured on digits_cnn (3 seeds from a
    #: trained model): 0.3 % lower accuracy on two seeds and 3-10 % more time
    #: per step, so off by default.
    learned_clips: bool = False
    #: What the size axis counts: the weights with their scales (block
    #: scales, zero points, tensor scales), or the element codes only.
    size_accounting: SizeAccounting = "weights_and_scales"

    def __post_init__(self) -> None:
        _require(
            _finite(self.reward_holdout) and 0 <= self.reward_holdout <= 0.5,
            f"reward_holdout must be in [0, 0.5], got {self.reward_holdout}",
        )
        _require(len(self.formats) >= 1, "the search space is empty: give at least one format")
        check_size_accounting(self.size_accounting)
        names = [f.name for f in self.formats]
        repeated = sorted({n for n in names if names.count(n) > 1})
        _require(not repeated, f"formats repeated in the search space: {', '.join(repeated)}")
        for fmt in self.formats:
            _require(
                not (fmt.kind.value == "int" and not fmt.signed and not fmt.is_blocked),
                f"search formats are weight formats too: use int{fmt.bits}, not {fmt.name} "
                "(activations after a ReLU get the unsigned grid automatically)",
            )
        _require(
            self.axis in get_args(CostAxisName),
            f"cost axis must be bops or size, got {self.axis!r}",
        )
        _require(
            _finite(self.cost_target) and self.cost_target >= 0,
            f"cost_target must be >= 0, got {self.cost_target}",
        )
        _require(
            self.cost_target > 0 or self.target_option is not None,
            "the search needs a cost target: set cost_target (BOPs or bytes) or target_option "
            "(e.g. int4: the cost of every layer at int4)",
        )
        for name, value, low, high in (
            ("cost_beta", self.cost_beta, 0.0, 1e6),
            ("entropy_beta_max", self.entropy_beta_max, 0.0, 1e6),
        ):
            _require(
                _finite(value) and low <= value <= high,
                f"{name} must be in [{low}, {high:g}], got {value}",
            )
        _require(
            _finite(self.warmup_fraction) and 0 <= self.warmup_fraction < 1,
            f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}",
        )
        _require(
            _finite(self.baseline_momentum) and 0 <= self.baseline_momentum < 1,
            f"baseline_momentum must be in [0, 1), got {self.baseline_momentum}",
        )
        _require(
            _finite(self.policy_learning_rate)
            and 0 < self.policy_learning_rate <= MAX_LEARNING_RATE,
            f"policy_learning_rate must be in (0, {MAX_LEARNING_RATE}], got {self.policy_learning_rate}",
        )
        seen: set[str] = set()
        for group in self.tie_groups:
            _require(len(group) >= 2, f"a tie group needs two or more layers, got {list(group)}")
            twice = seen.intersection(group)
            _require(not twice, f"layers {sorted(twice)} appear in more than one tie group")
            seen.update(group)

    def to_dict(self) -> dict[str, Any]:
        return {
            "formats": [f.name for f in self.formats],
            "separate_activation": self.separate_activation,
            "axis": self.axis,
            "cost_target": self.cost_target,
            "target_option": _option_key(self.target_option),
            "cost_beta": self.cost_beta,
            "one_sided": self.one_sided,
            "entropy_beta_max": self.entropy_beta_max,
            "warmup_fraction": self.warmup_fraction,
            "baseline_momentum": self.baseline_momentum,
            "switchable_clipping": self.switchable_clipping,
            "tie_groups": [list(g) for g in self.tie_groups],
            "policy_learning_rate": self.policy_learning_rate,
            "weight_granularity": self.weight_granularity.value,
            "plain_baseline": self.plain_baseline,
            "reward_holdout": self.reward_holdout,
            "learned_clips": self.learned_clips,
            "size_accounting": self.size_accounting,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpec:
        return cls(
            formats=tuple(get_format(n) for n in data["formats"]),
            separate_activation=bool(data["separate_activation"]),
            axis=data["axis"],
            cost_target=float(data["cost_target"]),
            target_option=_option_of(data.get("target_option")),
            cost_beta=float(data["cost_beta"]),
            one_sided=bool(data["one_sided"]),
            entropy_beta_max=float(data["entropy_beta_max"]),
            warmup_fraction=float(data["warmup_fraction"]),
            baseline_momentum=float(data["baseline_momentum"]),
            switchable_clipping=bool(data["switchable_clipping"]),
            tie_groups=tuple(tuple(g) for g in data["tie_groups"]),
            policy_learning_rate=float(data["policy_learning_rate"]),
            weight_granularity=Granularity(data["weight_granularity"]),
            plain_baseline=bool(data.get("plain_baseline", False)),
            reward_holdout=float(data.get("reward_holdout", 0.0)),
            learned_clips=bool(data.get("learned_clips", False)),
            size_accounting=data.get("size_accounting", "weights_and_scales"),
        )


JobSpec = QatSpec | SearchSpec | CalibrationSpec
_SPEC_TYPES: dict[str, type[QatSpec] | type[SearchSpec] | type[CalibrationSpec]] = {
    "qat": QatSpec,
    "search": SearchSpec,
    "calibration": CalibrationSpec,
}


def _model_spec_from(data: dict[str, Any]) -> ModelSpec:
    return ModelSpec(**{**data, "input_shape": tuple(data["input_shape"])})


def _dataset_spec_from(data: dict[str, Any]) -> DatasetSpec:
    shape = data.get("shape")
    return DatasetSpec(**{**data, "shape": tuple(shape) if shape is not None else None})


@dataclass(frozen=True)
class TrainingRequest:
    """One training job: model, data, what to do, and the loop settings.

    ``dataset`` is the training split; evaluation uses the same data's
    held-out (test) split.
    """

    kind: JobKind
    model: ModelSpec
    dataset: DatasetSpec
    spec: JobSpec
    training: TrainingSettings = field(default_factory=TrainingSettings)

    def __post_init__(self) -> None:
        expected = _SPEC_TYPES.get(self.kind)
        _require(
            expected is not None,
            f"job kind must be one of {', '.join(JOB_KINDS)}, got {self.kind!r}",
        )
        _require(isinstance(self.spec, expected), f"a {self.kind} job needs a {expected.__name__}")  # type: ignore[arg-type, union-attr]
        _require(
            self.dataset.split == "train",
            "the trainer trains on the train split and "
            "evaluates on the test split: leave the dataset's split unset (or TRAIN)",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": asdict(self.model),
            "dataset": asdict(self.dataset),
            "spec": self.spec.to_dict(),
            "training": asdict(self.training),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingRequest:
        kind = data["kind"]
        spec_type = _SPEC_TYPES.get(kind)
        if spec_type is None:
            raise InvalidArgument(f"unknown job kind {kind!r}")
        return cls(
            kind=kind,
            model=_model_spec_from(data["model"]),
            dataset=_dataset_spec_from(data["dataset"]),
            spec=spec_type.from_dict(data["spec"]),
            training=TrainingSettings(**data["training"]),
        )
