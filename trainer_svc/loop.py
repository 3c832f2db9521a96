"""The training loop every job kind shares: steps, checkpoints, progress, cancel.

QAT runs it as is (optionally distilling from a teacher); the one-shot search
adds a :class:`StepHook` that switches formats before each step and learns
its policy after it. Everything the loop needs to continue after a crash is
in its checkpoint: model, optimiser, hook (policy) state, RNG states, the
next step and the metrics so far. Batches are a function of the step, so a
resumed job sees the same data it would have seen.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitmesh.errors import FailedPrecondition
from trainer_svc.batches import StepBatches
from trainer_svc.losses import distillation_loss
from trainer_svc.schedules import learning_rate
from trainer_svc.specs import Distillation, TrainingSettings

log = logging.getLogger(__name__)

#: Fraction of a job's progress bar the training steps fill; evaluation and
#: publishing the artifacts take the rest.
TRAIN_PROGRESS = 0.95

#: With no ``checkpoint_every`` in the request, a checkpoint falls due every
#: tenth of the steps but is written at most once per this many seconds of
#: training. A checkpoint of a resnet18 under QAT (weights, quantizers and
#: optimiser state, 90 MB) takes 0.5 s to store on the 2-core machine, and a
#: 10-step job used to store one after every step: more time storing than a
#: worker loss could cost it. An explicit ``checkpoint_every`` is kept exactly.
DEFAULT_CHECKPOINT_MIN_S = 30.0


class StepHook(Protocol):
    """What the search plugs into the loop."""

    def before_step(self, step: int) -> None: ...
    def after_step(self, step: int, loss: float) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class LoopIO(Protocol):
    """Where the loop reports to and checkpoints into (a job, or nothing)."""

    def report(self, progress: float, point: dict[str, float], stage: str) -> None: ...
    def check_cancelled(self) -> None: ...
    def load_checkpoint(self) -> dict[str, Any] | None: ...
    def save_checkpoint(self, state: dict[str, Any], step: int) -> None: ...


class NullIO:
    """No job around the loop (benchmarks, direct calls): no reports, no checkpoints."""

    def report(self, progress: float, point: dict[str, float], stage: str) -> None:
        pass

    def check_cancelled(self) -> None:
        pass

    def load_checkpoint(self) -> dict[str, Any] | None:
        return None

    def save_checkpoint(self, state: dict[str, Any], step: int) -> None:
        pass


@dataclass
class LoopResult:
    steps_done: int
    history: list[dict[str, float]]
    resumed_from: list[int] = field(default_factory=list)
    seconds: float = 0.0
    #: Of ``seconds``, the time spent storing checkpoints (artifact writes, not training).
    checkpoint_seconds: float = 0.0


def build_optimizer(model: nn.Module, settings: TrainingSettings) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum; weight decay on weight matrices/kernels only
    (not on biases, BN parameters or clips)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() > 1 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": settings.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=settings.learning_rate, momentum=0.9, nesterov=True)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Window:
    """Means of the metrics since the last progress event."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def flush(self) -> dict[str, float]:
        means = {k: v / max(1, self.count) for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return means


def train(
    model: nn.Module,
    batches: StepBatches,
    settings: TrainingSettings,
    io: LoopIO,
    *,
    teacher: nn.Module | None = None,
    distillation: Distillation | None = None,
    hook: StepHook | None = None,
    evaluate: Callable[[], tuple[float, float]] | None = None,
) -> LoopResult:
    """Run ``settings.steps`` optimiser steps (resuming from ``io``'s checkpoint)."""
    started = time.perf_counter()
    optimizer = build_optimizer(model, settings)
    total = settings.steps
    start, history, resumed = 0, [], []
    checkpoint = io.load_checkpoint()
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if hook is not None:
            hook.load_state_dict(checkpoint["hook"])
        _set_rng_state(checkpoint["rng"])
        start = int(checkpoint["step"])
        history = list(checkpoint["history"])
        resumed = [*checkpoint["resumed_from"], start]
        log.info("resuming at step %d of %d", start, total)
    distilling = teacher is not None and distillation is not None and distillation.enabled
    if teacher is not None:
        teacher.eval()
    model.train()
    window = _Window()
    last_checkpoint, storing = time.perf_counter(), 0.0
    for step in range(start, total):
        io.check_cancelled()
        lr = learning_rate(settings.schedule, settings.learning_rate, step, total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if hook is not None:
            hook.before_step(step)
        x, y = batches.get(step)
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        loss: Tensor = ce
        if distilling:
            assert teacher is not None and distillation is not None
            with torch.no_grad():
                soft_targets = teacher(x)
            loss = distillation_loss(
                logits, soft_targets, y, distillation.alpha, distillation.temperature
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FailedPrecondition(
                f"training diverged at step {step} (loss {loss_value}): lower the learning rate"
            )
        metrics = {
            "loss": loss_value,
            "accuracy": float((logits.detach().argmax(dim=1) == y).float().mean()),
        }
        if hook is not None:
            metrics.update(hook.after_step(step, float(ce.detach())))
        window.add(metrics)
        done = step + 1
        eval_due = bool(
            evaluate is not None
            and settings.eval_every
            and (done % settings.eval_every == 0 or done == total)
        )
        if eval_due or done % settings.log_interval == 0 or done == total:
            point: dict[str, float] = {"step": done, "learning_rate": lr, **window.flush()}
            if eval_due:
                assert evaluate is not None
                point["eval_accuracy"], point["eval_loss"] = evaluate()
                model.train()
            history.append(point)
            io.report(TRAIN_PROGRESS * done / total, point, "training")
        due = done % settings.checkpoint_interval == 0 and done < total
        if due and not settings.checkpoint_every:
            due = time.perf_counter() - last_checkpoint >= DEFAULT_CHECKPOINT_MIN_S
        if due:
            saving = time.perf_counter()
            io.save_checkpoint(
                {
                    "step": done,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "hook": hook.state_dict() if hook is not None else {},
                    "rng": _rng_state(),
                    "history": history,
                    "resumed_from": resumed,
                },
                done,
            )
            last_checkpoint = time.perf_counter()
            storing += last_checkpoint - saving
    return LoopResult(
        steps_done=total,
        history=history,
        resumed_from=resumed,
        seconds=time.perf_counter() - started,
        checkpoint_seconds=storing,
    )
