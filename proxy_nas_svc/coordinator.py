"""The search loop: Optuna proposes, runs are dispatched, successive halving decides.

One coordinator drives one search (METHODS.md section 7):

1. rung 0: ask Optuna for configurations (ask/tell) while run slots are free,
   until ``trials`` distinct configurations have run; a configuration Optuna
   proposes twice is told FAIL (ignored by TPE) and not run again;
2. each later rung: the top 1/eta of the rung before run at its fidelity
   (:mod:`proxy_nas_svc.halving`); the rest are told PRUNED with their last
   score as intermediate value; the last rung's runs are told COMPLETE;
3. optionally, ``full_checks`` of the rung-0 configurations run at full
   fidelity, and Kendall's tau compares the two rankings.

Runs go through a :class:`RunBackend`: Celery tasks on many workers in the
service, or this process in benchmarks. The coordinator never waits on one
run: it polls every run in flight, so a lost run costs at most its timeout
(then it is sent again once, then marked failed) and the search goes on.
Runs are keyed by (search, configuration, fidelity), so a run delivered
twice, or asked twice, trains once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bitmesh.artifacts import cache_key
from bitmesh.errors import Cancelled
from proxy_nas_svc.halving import planned_runs, promotions
from proxy_nas_svc.quality import Quality, full_search_steps, kendall_tau, order_positions
from proxy_nas_svc.space import KNOBS, Categorical, ParamValue, parse_value, space_size
from proxy_nas_svc.spec import Rung, SearchRequest
from proxy_nas_svc.study import distributions
from proxy_nas_svc.trial import RunResult, trial_request

if TYPE_CHECKING:
    import optuna

    from trainer_svc.public import TrainingRequest

log = logging.getLogger(__name__)

#: progress (0..1), stage, message, event payload
Sink = Callable[[float, str, str, dict[str, Any]], None]


class RunBackend(Protocol):
    """Where runs execute. ``submit`` must be idempotent per key. ``lost``
    says a sent run has no result, no live runner and no message waiting:
    its message died with a worker (docs/architecture.md, the lost-message
    window), so it may be sent again at once."""

    def submit(self, key: str, request: TrainingRequest) -> None: ...
    def result(self, key: str) -> RunResult | None: ...
    def lost(self, key: str) -> bool: ...


class InlineBackend:
    """Runs each trial in this process when it is submitted (benchmarks, tests)."""

    def __init__(self, run: Callable[[TrainingRequest], RunResult] | None = None) -> None:
        from proxy_nas_svc.trial import run_trial

        self._run = run or run_trial
        self._results: dict[str, RunResult] = {}

    def submit(self, key: str, request: TrainingRequest) -> None:
        if key not in self._results:
            self._results[key] = self._run(request)

    def result(self, key: str) -> RunResult | None:
        return self._results.get(key)

    def lost(self, key: str) -> bool:
        return False  # runs here finish inside submit


@dataclass(frozen=True)
class CoordinatorOptions:
    poll_s: float = 0.2
    #: A run with no result this long after it was sent is sent again, once;
    #: then it is marked failed. Workers redeliver lost runs by themselves
    #: (Redis visibility timeout), so this is the last line of defence.
    run_timeout_s: float = 3600.0
    resubmits: int = 1
    #: A run sent this long ago that its backend reports ``lost`` (no result,
    #: no runner, no message) is sent again, without counting as a resubmit
    #: (BITMESH_REQUEUE_AFTER_SECONDS).
    requeue_after_s: float = 300.0
    #: ... at most this many times; then it is marked failed. A run whose
    #: training kills its worker (out of memory) is lost every time, and was
    #: sent again for ever (each re-send restarts its timeout).
    lost_resends: int = 3


@dataclass
class TrialState:
    """One configuration's life in the search."""

    number: int
    params: dict[str, ParamValue]
    labels: dict[str, str]
    rung: int = 0
    scores: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    state: str = "running"  # running, promoted, pruned, complete, failed
    reason: str = ""
    steps: int = 0
    full_score: float | None = None
    full_loss: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "params": dict(self.labels),
            "rung": self.rung,
            "score": self.scores[-1] if self.scores else 0.0,
            "state": self.state,
            "reason": self.reason,
            "training_steps": self.steps,
            "rung_scores": list(self.scores),
            "rung_losses": list(self.losses),
            "full_score": self.full_score,
        }

    def value(self, rung: int) -> tuple[float, float]:
        """The rung's score, ties broken by the lower held-out loss."""
        return (self.scores[rung], -self.losses[rung])

    @property
    def rank_key(self) -> tuple[int, tuple[float, float], int]:
        """Higher is better: the highest rung reached, its value, then the earlier trial."""
        value = self.value(len(self.scores) - 1) if self.scores else (0.0, 0.0)
        return (len(self.scores), value, -self.number)


@dataclass
class _Pending:
    request: TrainingRequest
    callbacks: list[Callable[[RunResult], None]]
    sent: float
    resubmits: int = 0
    lost_resends: int = 0


Item = tuple[str, "TrainingRequest", Callable[[RunResult], None]]


def _label(value: ParamValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class Coordinator:
    """Drives one search to its result dict (see :meth:`run`)."""

    def __init__(
        self,
        request: SearchRequest,
        study: optuna.Study,
        backend: RunBackend,
        *,
        key_prefix: str,
        sink: Sink | None = None,
        is_cancelled: Callable[[], bool] = lambda: False,
        options: CoordinatorOptions | None = None,
    ) -> None:
        self.request = request
        self.study = study
        self.backend = backend
        self.key_prefix = key_prefix
        self.sink = sink or (lambda *_: None)
        self.is_cancelled = is_cancelled
        self.options = options or CoordinatorOptions()
        self.trials: dict[int, TrialState] = {}
        self._optuna_trials: dict[int, optuna.Trial] = {}
        self._completed: dict[str, RunResult] = {}
        self._search_steps = 0
        self._check_steps = 0
        self._phase = "search"
        size = space_size(request.space)
        self._target = min(request.trials, size) if size is not None else request.trials
        counts = planned_runs(self._target, len(request.fidelity), request.reduction_factor)
        self._planned = sum(counts) + request.full_checks
        self._finished_runs = 0

    # -- keys and events -------------------------------------------------------
    def run_key(self, trial: TrialState, rung: Rung) -> str:
        digest = cache_key(sorted(trial.labels.items()), rung.data_fraction, rung.steps)
        return f"{self.key_prefix}-{digest[:24]}"

    def best(self) -> TrialState | None:
        alive = [t for t in self.trials.values() if t.scores and t.state != "failed"]
        return max(alive, key=lambda t: t.rank_key) if alive else None

    def _emit(self, trial: TrialState, message: str) -> None:
        best = self.best()
        progress = self._finished_runs / max(1, self._planned)
        self.sink(
            min(0.99, progress),
            self._phase,
            message,
            {"trial": trial.to_dict(), "best": best.to_dict() if best else None},
        )

    # -- running ---------------------------------------------------------------
    def _resend_or_give_up(self, key: str, entry: _Pending) -> RunResult | None:
        """For a run with no result yet: send it again if it was lost or timed
        out and has sends left (None: keep waiting), else its failed result."""
        opts = self.options
        waited = time.monotonic() - entry.sent
        if waited >= opts.requeue_after_s and self.backend.lost(key):
            if entry.lost_resends >= opts.lost_resends:
                return RunResult(
                    ok=False,
                    reason=f"its worker was lost {entry.lost_resends + 1} times while it ran "
                    "(killed, or out of memory?); not sending it again",
                )
            log.warning("run %s: its message was lost; sending it again", key)
            self.backend.submit(key, entry.request)
            entry.sent, entry.lost_resends = time.monotonic(), entry.lost_resends + 1
            return None
        if waited < opts.run_timeout_s:
            return None
        if entry.resubmits < opts.resubmits:
            log.warning("run %s: no result after %.0f s, sending it again", key, waited)
            self.backend.submit(key, entry.request)
            entry.sent, entry.resubmits = time.monotonic(), entry.resubmits + 1
            return None
        return RunResult(
            ok=False,
            reason=f"no result within {opts.run_timeout_s:.0f} s, sent "
            f"{entry.resubmits + 1} times (its workers were lost?)",
        )

    def _drive(self, items: Iterator[Item]) -> None:
        """Run ``items`` with at most ``parallel`` in flight; calls each callback once."""
        pending: dict[str, _Pending] = {}
        exhausted = False
        opts = self.options
        while True:
            if self.is_cancelled():
                raise Cancelled("the search was cancelled")
            while not exhausted and len(pending) < self.request.parallel:
                item = next(items, None)
                if item is None:
                    exhausted = True
                    break
                key, request, callback = item
                if key in self._completed:
                    callback(self._completed[key])
                elif key in pending:
                    pending[key].callbacks.append(callback)
                else:
                    self.backend.submit(key, request)
                    pending[key] = _Pending(request, [callback], time.monotonic())
            if exhausted and not pending:
                return
            finished = False
            for key, entry in list(pending.items()):
                result = self.backend.result(key)
                if result is None:
                    result = self._resend_or_give_up(key, entry)
                    if result is None:
                        continue
                del pending[key]
                finished = True
                self._completed[key] = result
                self._finished_runs += 1
                if self._phase == "search":
                    self._search_steps += result.steps
                else:
                    self._check_steps += result.steps
                for callback in entry.callbacks:
                    callback(result)
            if not finished:
                time.sleep(opts.poll_s)

    def _record(self, trial: TrialState, rung: int) -> Callable[[RunResult], None]:
        def done(result: RunResult) -> None:
            trial.rung = rung
            if not result.ok:
                trial.state, trial.reason = "failed", result.reason
                self._tell_fail(trial)
                self._emit(trial, f"trial {trial.number} failed at rung {rung}: {result.reason}")
                return
            trial.scores.append(result.score)
            trial.losses.append(result.loss)
            trial.steps += result.steps
            self._optuna_trials[trial.number].report(result.score, step=rung)
            self._emit(trial, f"rung {rung}: trial {trial.number} scored {result.score:.4f}")

        return done

    def _tell_fail(self, trial: TrialState) -> None:
        import optuna

        if trial.number in self._optuna_trials:
            self.study.tell(
                self._optuna_trials.pop(trial.number), state=optuna.trial.TrialState.FAIL
            )

    def _first_rung(self) -> Iterator[Item]:
        """Distinct configurations from Optuna, asked only when a slot is free."""
        import optuna

        dists = distributions(self.request.space)
        seen: set[tuple[tuple[str, str], ...]] = set()
        attempts, limit = 0, 20 * self._target + 100
        rung = self.request.fidelity[0]
        while len(self.trials) < self._target and attempts < limit:
            attempts += 1
            asked = self.study.ask(dists)
            labels: dict[str, str] = {}
            params: dict[str, ParamValue] = {}
            for name, value in asked.params.items():
                hp = self.request.space[name]
                if isinstance(hp.domain, Categorical):
                    params[name] = parse_value(KNOBS[name], str(value))
                else:
                    params[name] = value
                labels[name] = str(value) if isinstance(hp.domain, Categorical) else _label(value)
            signature = tuple(sorted(labels.items()))
            if signature in seen:
                self.study.tell(asked, state=optuna.trial.TrialState.FAIL)
                continue
            seen.add(signature)
            trial = TrialState(number=asked.number, params=params, labels=labels)
            self.trials[trial.number] = trial
            self._optuna_trials[trial.number] = asked
            self._emit(trial, f"trial {trial.number} started at rung 0")
            yield (
                self.run_key(trial, rung),
                trial_request(self.request, params, rung),
                self._record(trial, 0),
            )

    def _halve(self, rung: int) -> list[TrialState]:
        """After ``rung``: promote the top 1/eta, prune the rest; or complete (last rung)."""
        import optuna

        ran = [t for t in self.trials.values() if t.rung == rung and t.state != "failed"]
        last = rung == len(self.request.fidelity) - 1
        if last:
            for trial in ran:
                trial.state = "complete"
                self.study.tell(self._optuna_trials.pop(trial.number), trial.scores[-1])
                self._emit(trial, f"trial {trial.number} complete: {trial.scores[-1]:.4f}")
            return []
        keep = set(
            promotions({t.number: t.value(rung) for t in ran}, self.request.reduction_factor)
        )
        promoted = []
        for trial in sorted(ran, key=lambda t: t.number):
            if trial.number in keep:
                trial.state = "promoted"
                promoted.append(trial)
                self._emit(trial, f"trial {trial.number} promoted to rung {rung + 1}")
            else:
                trial.state = "pruned"
                self.study.tell(
                    self._optuna_trials.pop(trial.number), state=optuna.trial.TrialState.PRUNED
                )
                self._emit(trial, f"trial {trial.number} pruned at rung {rung}")
        return promoted

    def _check_items(self, checks: list[TrialState]) -> Iterator[Item]:
        full = self.request.full
        for trial in checks:

            def done(result: RunResult, trial: TrialState = trial) -> None:
                if result.ok:
                    trial.full_score = result.score
                    trial.full_loss = result.loss
                    self._emit(trial, f"check: trial {trial.number} scored {result.score:.4f}")
                else:
                    self._emit(trial, f"check of trial {trial.number} failed: {result.reason}")

            yield (self.run_key(trial, full), trial_request(self.request, trial.params, full), done)

    def run(self) -> dict[str, Any]:
        """Search, halve, check; the result as JSON-able data."""
        self._drive(self._first_rung())
        survivors = self._halve(0)
        for rung_index in range(1, len(self.request.fidelity)):
            rung = self.request.fidelity[rung_index]
            self._drive(
                iter(
                    [
                        (
                            self.run_key(t, rung),
                            trial_request(self.request, t.params, rung),
                            self._record(t, rung_index),
                        )
                        for t in survivors
                    ]
                )
            )
            survivors = self._halve(rung_index)
        self._phase = "checks"
        first = sorted((t for t in self.trials.values() if t.scores), key=lambda t: t.number)[
            : self.request.full_checks
        ]
        self._drive(self._check_items(first))
        return self._result(first)

    def _result(self, checks: list[TrialState]) -> dict[str, Any]:
        measured = [t for t in checks if t.full_score is not None]
        tau = kendall_tau(
            order_positions([t.value(0) for t in measured]),
            order_positions([(t.full_score or 0.0, -t.full_loss) for t in measured]),
        )
        quality = Quality(
            kendall_tau=tau,
            full_fidelity_trials=len(measured),
            search_steps=self._search_steps,
            full_search_steps=full_search_steps(
                space_size(self.request.space), self.request.trials, self.request.full.steps
            ),
            check_steps=self._check_steps,
        )
        best = self.best()
        return {
            "best_trial": best.number if best else -1,
            "best_params": dict(best.labels) if best else {},
            "best_score": best.scores[-1] if best else 0.0,
            "trials": [t.to_dict() for t in sorted(self.trials.values(), key=lambda t: t.number)],
            "quality": quality.to_dict(),
        }


def params_of(labels: Mapping[str, str], request: SearchRequest) -> dict[str, ParamValue]:
    """Typed knob values from their labels (the best parameters of a result)."""
    out: dict[str, ParamValue] = {}
    for name, text in labels.items():
        hp = request.space[name]
        out[name] = (
            parse_value(KNOBS[name], text) if isinstance(hp.domain, Categorical) else float(text)
        )
    return out
