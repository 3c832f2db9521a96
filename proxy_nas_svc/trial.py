"""One trial run: a configuration of knobs at one fidelity, trained by the trainer.

The run *is* a trainer QAT request (:func:`trainer_svc.public.execute`), so a
trial trains exactly as a real QAT job would: the knobs become fields of the
request and the rung sets the steps and the data fraction. The score is the
held-out accuracy of the trained, fake-quantized model; its held-out loss
breaks ties (at low fidelity many configurations sit at chance accuracy, but
their losses still differ).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from bitmesh.formats import Granularity
from proxy_nas_svc.space import ParamValue
from proxy_nas_svc.spec import Rung, SearchRequest

if TYPE_CHECKING:
    from trainer_svc.public import LoopIO, TrainingRequest


@dataclass(frozen=True)
class RunResult:
    """What a run produced: its score, or why it failed."""

    ok: bool
    score: float = 0.0
    loss: float = 0.0  # held-out cross-entropy: breaks ties of the score
    steps: int = 0
    seconds: float = 0.0
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "score": self.score,
            "loss": self.loss,
            "steps": self.steps,
            "seconds": self.seconds,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunResult:
        return cls(
            ok=bool(data["ok"]),
            score=float(data["score"]),
            loss=float(data.get("loss", 0.0)),
            steps=int(data["steps"]),
            seconds=float(data["seconds"]),
            reason=str(data["reason"]),
        )


def trial_request(
    search: SearchRequest, params: Mapping[str, ParamValue], rung: Rung
) -> TrainingRequest:
    """The trainer QAT request of ``params`` at ``rung``.

    Knobs not in ``params`` keep the trainer's defaults (distillation off,
    min/max ranges, the request's configuration's granularity)."""
    from bitmesh.quant.range_estimators import RangeEstimator
    from trainer_svc.public import Distillation, QatSpec, TrainingRequest, TrainingSettings

    base_training = TrainingSettings()
    base_range = RangeEstimator()
    base_distillation = Distillation()
    granularity = params.get("granularity")
    estimator = replace(
        base_range,
        name=str(params.get("activation_range", base_range.name)),
        momentum=float(params.get("range_momentum", base_range.momentum)),
        percentile=float(params.get("range_percentile", base_range.percentile)),
    )
    qat = QatSpec(
        config=dict(search.config),
        default_option=search.default_option,
        distillation=Distillation(
            enabled=bool(params.get("distillation", base_distillation.enabled)),
            alpha=float(params.get("alpha", base_distillation.alpha)),
            temperature=float(params.get("temperature", base_distillation.temperature)),
        ),
        fold_bn=bool(params.get("fold_bn", False)),
        weight_granularity=Granularity(str(granularity)) if granularity else None,
        activation_range=estimator,
    )
    training = TrainingSettings(
        steps=rung.steps,
        data_fraction=rung.data_fraction,
        batch_size=search.batch_size,
        learning_rate=float(params.get("learning_rate", base_training.learning_rate)),
        weight_decay=float(params.get("weight_decay", base_training.weight_decay)),
        schedule=str(params.get("schedule", base_training.schedule)),  # type: ignore[arg-type]
        seed=search.seed,
        checkpoint_every=rung.steps,  # a trial is short: it restarts rather than resumes
    )
    return TrainingRequest("qat", search.model, search.dataset, qat, training)


def run_trial(request: TrainingRequest, io: LoopIO | None = None) -> RunResult:
    """Train ``request`` and score it; a trial that raises ends failed with its reason.

    Cancellation (:class:`bitmesh.errors.Cancelled`) is not a failure of the
    configuration, so it propagates."""
    import time

    from bitmesh.errors import BitmeshError, Cancelled
    from trainer_svc.public import execute

    started = time.perf_counter()
    try:
        outcome = execute(request, io)
    except Cancelled:
        raise
    except BitmeshError as exc:
        return RunResult(ok=False, reason=exc.message, seconds=time.perf_counter() - started)
    except Exception as exc:  # a trial must not take the search down with it
        return RunResult(
            ok=False,
            reason=f"{type(exc).__name__}: {exc}",
            seconds=time.perf_counter() - started,
        )
    return RunResult(
        ok=True,
        score=float(outcome.evaluation.accuracy),
        loss=float(outcome.evaluation.loss),
        steps=int(outcome.steps_done),
        seconds=time.perf_counter() - started,
    )
