"""The search loop over a fake trainer: rungs, halving, failures, checks, cancel."""

from __future__ import annotations

import itertools

import pytest

from bitmesh.data.datasets import DatasetSpec
from bitmesh.errors import Cancelled, InvalidArgument
from bitmesh.formats import parse_option
from bitmesh.models.loading import ModelSpec
from proxy_nas_svc.coordinator import Coordinator, InlineBackend
from proxy_nas_svc.space import Categorical, Hyperparameter
from proxy_nas_svc.spec import Rung, SearchRequest
from proxy_nas_svc.study import create_study
from proxy_nas_svc.trial import RunResult
from trainer_svc.specs import TrainingRequest

pytestmark = pytest.mark.unit

LRS = ("0.001", "0.01", "0.1", "0.3")
MODEL = ModelSpec(source="architecture", name_or_path="digits_cnn", input_shape=(1, 8, 8))


def search(**changes: object) -> SearchRequest:
    fields: dict[str, object] = {
        "model": MODEL,
        "dataset": DatasetSpec(kind="digits"),
        "config": {},
        "default_option": parse_option("int4"),
        "space": {
            "learning_rate": Hyperparameter("learning_rate", Categorical(LRS)),
            "fold_bn": Hyperparameter("fold_bn", Categorical(("true", "false"))),
        },
        "trials": 8,
        "fidelity": (Rung(0.25, 10), Rung(0.5, 30)),
        "full_fidelity": Rung(1.0, 100),
        "full_checks": 4,
        "reduction_factor": 3,
    }
    fields.update(changes)
    return SearchRequest(**fields)  # type: ignore[arg-type]


def fake_train(request: TrainingRequest) -> RunResult:
    """Accuracy grows with the learning rate and the steps; fold_bn adds a little;
    the largest rate diverges."""
    lr = request.training.learning_rate
    if lr > 0.2:
        return RunResult(ok=False, reason="training diverged: lower the learning rate")
    fold = request.spec.fold_bn  # type: ignore[union-attr]
    steps = request.training.steps
    return RunResult(ok=True, score=lr * 5 + 0.01 * fold + steps / 1000, steps=steps)


def run(request: SearchRequest, **kwargs: object) -> tuple[dict, list]:  # type: ignore[type-arg]
    events: list[dict] = []  # type: ignore[type-arg]
    coordinator = Coordinator(
        request,
        create_study("unit", request.sampler, request.seed, request.trials),
        InlineBackend(fake_train),
        key_prefix="unit",
        sink=lambda p, s, m, e: events.append({"progress": p, "message": m, **e}),
        **kwargs,  # type: ignore[arg-type]
    )
    return coordinator.run(), events


def test_halving_promotes_the_best_third_and_failed_trials_do_not_stop_the_search() -> None:
    result, events = run(search())
    trials = result["trials"]
    assert len(trials) == 8  # every distinct configuration of the space
    assert len({tuple(sorted(t["params"].items())) for t in trials}) == 8
    failed = [t for t in trials if t["state"] == "failed"]
    assert {t["params"]["learning_rate"] for t in failed} == {"0.3"}
    assert all("diverged" in t["reason"] for t in failed)
    complete = [t for t in trials if t["state"] == "complete"]
    assert len(complete) == 2  # floor(6 ok / 3)
    assert {t["params"]["learning_rate"] for t in complete} == {"0.1"}
    assert result["best_params"] == {"learning_rate": "0.1", "fold_bn": "true"}
    assert result["best_score"] == pytest.approx(0.5 + 0.01 + 0.03)
    quality = result["quality"]
    assert quality["search_steps"] == 6 * 10 + 2 * 30
    assert quality["full_search_steps"] == 8 * 100
    assert quality["compute_ratio"] == pytest.approx(120 / 800)
    # Checks: the first four trials with a rung-0 score, at full fidelity.
    assert quality["full_fidelity_trials"] == 4
    assert quality["check_steps"] == 4 * 100
    assert quality["kendall_tau"] == pytest.approx(1.0)  # the fake proxy ranks perfectly
    assert events and events[-1]["best"]["number"] == result["best_trial"]
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)


def test_the_optuna_study_records_pruned_complete_and_failed_trials() -> None:
    import optuna

    request = search(full_checks=0)
    study = create_study("unit-states", "tpe", 0, request.trials)
    Coordinator(request, study, InlineBackend(fake_train), key_prefix="u").run()
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
    assert states.count(optuna.trial.TrialState.PRUNED) == 4
    assert optuna.trial.TrialState.RUNNING not in states
    assert study.best_trial.params == {"learning_rate": "0.1", "fold_bn": "true"}


def test_a_cancelled_search_stops_before_sending_more_runs() -> None:
    sent: list[str] = []

    def counting(request: TrainingRequest) -> RunResult:
        sent.append(str(request.training.learning_rate))
        return fake_train(request)

    ticks = itertools.count()
    with pytest.raises(Cancelled):
        Coordinator(
            search(parallel=2),
            create_study("unit-cancel", "random", 0, 8),
            InlineBackend(counting),
            key_prefix="c",
            is_cancelled=lambda: next(ticks) >= 2,
        ).run()
    assert len(sent) == 4  # two rounds of two runs, then the cancel


class _KillsItsWorker(InlineBackend):
    """Runs inline, except those at learning rate 0.01: their training kills
    the worker every time (out of memory), so they never get a result and the
    backend reports them lost (no result, no runner, no message waiting)."""

    def __init__(self) -> None:
        super().__init__(fake_train)
        self.sends: dict[str, int] = {}
        self.doomed: set[str] = set()

    def submit(self, key: str, request: TrainingRequest) -> None:
        self.sends[key] = self.sends.get(key, 0) + 1
        if self.sends[key] > 10:  # the old loop: sent again for ever
            raise AssertionError(f"run {key} was sent again and again, never given up")
        if request.training.learning_rate == 0.01:
            self.doomed.add(key)
        else:
            super().submit(key, request)

    def lost(self, key: str) -> bool:
        return key in self.doomed


def test_a_run_lost_every_time_is_failed_after_its_resends() -> None:
    from proxy_nas_svc.coordinator import CoordinatorOptions

    backend = _KillsItsWorker()
    result = Coordinator(
        search(full_checks=0),
        create_study("unit-lost", "random", 0, 8),
        backend,
        key_prefix="l",
        options=CoordinatorOptions(poll_s=0.001, requeue_after_s=0.0, lost_resends=2),
    ).run()
    assert backend.doomed, "no run trained at the killing learning rate"
    # Each doomed run: its first send and two re-sends, then failed with why.
    assert {backend.sends[key] for key in backend.doomed} == {3}
    lost = [t for t in result["trials"] if t["params"]["learning_rate"] == "0.01"]
    assert lost and all(t["state"] == "failed" for t in lost)
    assert all("its worker was lost 3 times" in t["reason"] for t in lost)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"trials": 0}, "trial budget"),
        ({"fidelity": ()}, "empty"),
        ({"fidelity": (Rung(0.5, 10), Rung(0.5, 10))}, "does not increase"),
        ({"fidelity": (Rung(0.5, 20), Rung(0.25, 40))}, "does not increase"),
        ({"full_fidelity": Rung(1.0, 10)}, "at least the last rung"),
        ({"full_checks": 9}, "full_fidelity_checks"),
        ({"reduction_factor": 1}, "reduction_factor"),
        ({"sampler": "grid"}, "sampler"),
    ],
)
def test_bad_requests(changes: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        search(**changes)


def test_request_round_trips_through_json() -> None:
    request = search()
    assert SearchRequest.from_dict(request.to_dict()) == request
