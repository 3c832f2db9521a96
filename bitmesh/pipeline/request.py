"""What a pipeline run is asked to do (a value object, JSON round-trippable)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from bitmesh.costs import check_size_accounting
from bitmesh.errors import InvalidArgument

Method = Literal["lcpaq", "fliqs", "both"]
METHODS: tuple[str, ...] = ("lcpaq", "fliqs", "both")


@dataclass(frozen=True)
class PipelineRequest:
    """Model, data, budgets and method, plus the step counts of each training.

    ``model`` is an architecture name or a ``.pt2`` file; ``weights`` a
    state_dict file for it. A given model (weights, or a program file, which
    carries its own) is evaluated, not trained, and is the distillation
    teacher; without one the FP32 model is trained from scratch
    (``fp32_steps``). Empty shapes and a zero ``num_classes`` follow the model
    and the data (:mod:`bitmesh.pipeline.inputs`). ``normalize`` is
    ``--normalize``'s text ("" = ImageNet's statistics for image folders).
    The three subset sizes bound the training samples every quantized job
    calibrates and fine-tunes on, the samples the Hessian traces see and the
    test samples every evaluation reads (0 = all).

    ``budgets`` maps ``max_size_bytes`` / ``max_bops`` / ``max_latency_ms`` /
    ``max_avg_weight_bits`` to limits (``latency_profile`` names the profile of
    a latency budget). Step counts are small by default: they are what the
    digits model needs, and a larger model asks for more explicitly.
    ``size_accounting`` says what the size and bits budgets count: the weights
    with every scale (the default) or the element codes only.
    """

    model: str
    dataset: str = "digits"
    weights: str = ""
    num_classes: int = 0
    data_shape: tuple[int, ...] = ()
    data_classes: int = 0
    normalize: str = ""
    calibration_subset: int = 0
    sensitivity_subset: int = 0
    eval_subset: int = 0
    budgets: dict[str, float] = field(default_factory=dict)
    latency_profile: str = ""
    method: Method = "lcpaq"
    options: tuple[str, ...] = ("int4", "int8", "e4m3")
    input_shape: tuple[int, ...] = ()
    fp32_steps: int = 300
    qat_steps: int = 150
    search_steps: int = 300
    learning_rate: float = 0.05
    qat_learning_rate: float = 0.01
    sensitivity_samples: int = 50
    frontier_points: int = 12
    #: LCPAQ's proxy search of the QAT learning rate: trials (0 = skip it),
    #: the rates it picks from, and the steps of a cheap (quarter-data) trial.
    proxy_trials: int = 3
    proxy_learning_rates: tuple[float, ...] = (0.002, 0.01, 0.05)
    proxy_steps: int = 30
    seed: int = 0
    size_accounting: str = "weights_and_scales"

    def __post_init__(self) -> None:
        check_size_accounting(self.size_accounting)
        if self.method not in METHODS:
            raise InvalidArgument(f"method {self.method!r}: use one of {', '.join(METHODS)}")
        known = {"max_size_bytes", "max_bops", "max_latency_ms", "max_avg_weight_bits"}
        unknown = sorted(set(self.budgets) - known)
        if unknown:
            raise InvalidArgument(f"unknown budgets {unknown}; use {sorted(known)}")
        if not self.budgets:
            raise InvalidArgument("give at least one budget (size, BOPs, latency or bits)")
        if any(v <= 0 for v in self.budgets.values()):
            raise InvalidArgument("budgets must be positive")
        if "max_latency_ms" in self.budgets and not self.latency_profile:
            raise InvalidArgument("a latency budget needs a latency profile (--latency-profile)")
        if self.proxy_trials < 0 or (self.proxy_trials and not self.proxy_learning_rates):
            raise InvalidArgument("a proxy search needs trials >= 0 and learning rates to try")
        sizes = (self.calibration_subset, self.sensitivity_subset, self.eval_subset)
        if min(*sizes, self.num_classes, self.data_classes) < 0:
            raise InvalidArgument("subset sizes and class counts must be >= 0 (0 = all / auto)")
        if min(self.fp32_steps, self.qat_steps, self.search_steps, self.proxy_steps) < 1:
            raise InvalidArgument("step counts must be at least 1")
        if (
            self.method != "lcpaq"
            and "max_bops" not in self.budgets
            and ("max_size_bytes" not in self.budgets)
        ):
            raise InvalidArgument("FLIQS searches at a BOPs or size budget: give one of them")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def methods(self) -> tuple[str, ...]:
        return ("lcpaq", "fliqs") if self.method == "both" else (self.method,)
