"""Quantize a seed's FP32 model at a configuration and evaluate it: PTQ
(calibration only), QAT with distillation, or the FLIQS one-shot search.

Every run goes through the trainer's domain entry point
(``trainer_svc.execute.execute``), the same code a training job runs, and is
evaluated on the same held-out split.
"""

from __future__ import annotations

from typing import Any

from bitmesh.costs import budgeted_bytes
from bitmesh.formats import get_format, parse_option
from fidelity.allocate import Config
from fidelity.prepare import DATA, model_spec
from fidelity.protocol import Budget, OptionSet, Training
from trainer_svc.execute import execute
from trainer_svc.outcome import Outcome
from trainer_svc.specs import (
    CalibrationSpec,
    Distillation,
    QatSpec,
    SearchSpec,
    TrainingRequest,
    TrainingSettings,
)


def _row(outcome: Outcome) -> dict[str, Any]:
    costs = outcome.evaluation.costs
    return {
        "accuracy": outcome.evaluation.accuracy,
        "loss": outcome.evaluation.loss,
        "bops": costs.bops,
        "size": budgeted_bytes(costs),
        "config": {name: option.key for name, option in outcome.config.items()},
        "seconds": outcome.seconds,
    }


def ptq(weights: str, config: Config, training: Training, seed: int) -> dict[str, Any]:
    """Calibration only: weights from their own range, activation ranges from
    training batches."""
    spec = CalibrationSpec(
        config={name: parse_option(key) for name, key in config.items()},
        calibration_batches=training.calibration_batches,
    )
    settings = TrainingSettings(steps=1, seed=seed)
    return _row(execute(TrainingRequest("calibration", model_spec(weights), DATA, spec, settings)))


def qat(
    weights: str, config: Config, training: Training, seed: int, steps: int | None = None
) -> dict[str, Any]:
    """QAT from the FP32 weights, distilled from them (every QAT row alike)."""
    spec = QatSpec(
        config={name: parse_option(key) for name, key in config.items()},
        distillation=Distillation(
            enabled=True, alpha=training.distill_alpha, temperature=training.distill_temperature
        ),
    )
    settings = TrainingSettings(
        steps=steps or training.qat_steps, learning_rate=training.qat_lr, seed=seed
    )
    return _row(execute(TrainingRequest("qat", model_spec(weights), DATA, spec, settings)))


def fliqs(
    weights: str, option_set: OptionSet, budget: Budget, limit: float, training: Training, seed: int
) -> dict[str, Any]:
    """The one-shot search from the FP32 weights, one-sided at the budget,
    served as trained (FLIQS: no retraining). Its activation decisions range
    over the option set's weight formats (the search ties both to one list)."""
    spec = SearchSpec(
        formats=tuple(get_format(name) for name in option_set.weights),
        separate_activation=True,
        axis="bops" if budget.axis == "bops" else "size",
        cost_target=limit,
        one_sided=True,
        warmup_fraction=training.search_warmup,
    )
    settings = TrainingSettings(steps=training.qat_steps, learning_rate=training.qat_lr, seed=seed)
    return _row(execute(TrainingRequest("search", model_spec(weights), DATA, spec, settings)))
