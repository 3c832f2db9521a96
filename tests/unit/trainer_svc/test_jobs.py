"""run_job against a real (SQLite) job store: results, resume, cancel, failures."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from bitmesh.artifacts import ArtifactStore
from bitmesh.data.datasets import DatasetSpec
from bitmesh.errors import Unavailable
from bitmesh.formats import get_format, parse_option
from bitmesh.jobs.ending import final_event
from bitmesh.jobs.records import JobRecord, JobState
from bitmesh.jobs.retry import RetryingStore, RetryPolicy, StoreOutage
from bitmesh.jobs.store import SqliteJobStore, request_cancel, transition
from bitmesh.models.digits_cnn import DigitsCNN
from bitmesh.models.loading import ModelSpec, load_state_dict_file
from tests.waiting import wait_for
from trainer_svc import checkpoints
from trainer_svc.config import TrainerSettings
from trainer_svc.convert import result_to_pb
from trainer_svc.jobs import ATTEMPTS_NAMESPACE, run_job
from trainer_svc.lease import LocalLease
from trainer_svc.specs import (
    CalibrationSpec,
    QatSpec,
    SearchSpec,
    TrainingRequest,
    TrainingSettings,
)

pytestmark = pytest.mark.unit

MODEL = ModelSpec(source="architecture", name_or_path="digits_cnn", input_shape=(1, 8, 8))
DATA = DatasetSpec(kind="digits")


@pytest.fixture
def stores(tmp_path: Path) -> tuple[SqliteJobStore, ArtifactStore]:
    return SqliteJobStore(tmp_path / "jobs.sqlite3"), ArtifactStore(str(tmp_path / "artifacts"))


def _submit(store: SqliteJobStore, job_id: str, request: TrainingRequest) -> None:
    store.create(JobRecord(job_id=job_id, kind=request.kind, request=request.to_dict()))


def _search(steps: int = 60, checkpoint_every: int = 20) -> TrainingRequest:
    spec = SearchSpec(
        formats=tuple(get_format(n) for n in ("int2", "int4", "int8")),
        target_option=parse_option("int4"),
    )
    settings = TrainingSettings(
        steps=steps, learning_rate=0.05, checkpoint_every=checkpoint_every, seed=1
    )
    return TrainingRequest("search", MODEL, DATA, spec, settings)


def test_an_evaluation_stores_no_weights(stores, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A calibration that quantizes no layer of a model given as a file
    changes no weight: nothing is stored for them, and the result says so
    by having none (the input's file is the weights), while one that
    quantizes, or a random init with no file, stores its weights."""
    store, artifacts = stores
    given = tmp_path / "given.pt"
    torch.save(DigitsCNN().state_dict(), given)
    with_file = ModelSpec(
        source="architecture",
        name_or_path="digits_cnn",
        input_shape=(1, 8, 8),
        weights_path=str(given),
    )
    as_given = TrainingRequest(
        "calibration", with_file, DATA, CalibrationSpec(calibration_batches=1), TrainingSettings()
    )
    _submit(store, "eval-1", as_given)
    assert run_job("eval-1", store, artifacts) is JobState.SUCCEEDED
    result = store.get("eval-1").result
    assert result is not None and result["config"] == {}
    assert "weights" not in result["artifacts"] and "metrics" in result["artifacts"]
    assert not result_to_pb(store.get("eval-1")).HasField("weights")
    assert not any(blob.size_bytes > 10_000 for blob in artifacts.blobs())

    # A randomly initialised architecture has no file: its weights are stored.
    random_init = TrainingRequest(
        "calibration", MODEL, DATA, CalibrationSpec(calibration_batches=1), TrainingSettings()
    )
    _submit(store, "eval-random", random_init)
    assert run_job("eval-random", store, artifacts) is JobState.SUCCEEDED
    assert "weights" in store.get("eval-random").result["artifacts"]  # type: ignore[index]

    quantized = TrainingRequest(
        "calibration",
        MODEL,
        DATA,
        CalibrationSpec(default_option=parse_option("int8"), calibration_batches=1),
        TrainingSettings(),
    )
    _submit(store, "calib-1", quantized)
    assert run_job("calib-1", store, artifacts) is JobState.SUCCEEDED
    stored = store.get("calib-1").result["artifacts"]["weights"]  # type: ignore[index]
    DigitsCNN().load_state_dict(load_state_dict_file(artifacts.local_path(stored["sha256"])))


def test_a_job_succeeds_once_and_publishes_loadable_weights(stores) -> None:  # type: ignore[no-untyped-def]
    store, artifacts = stores
    request = TrainingRequest(
        "qat", MODEL, DATA, QatSpec(default_option=parse_option("int8")), TrainingSettings(steps=30)
    )
    _submit(store, "qat-1", request)
    assert run_job("qat-1", store, artifacts) is JobState.SUCCEEDED
    record = store.get("qat-1")
    result = record.result
    assert result is not None and result["steps_done"] == 30
    assert set(result["config"]) == {"conv1", "conv2", "conv3", "fc1", "fc2"}
    assert 0.0 <= result["evaluation"]["accuracy"] <= 1.0
    weights = artifacts.local_path(result["artifacts"]["weights"]["sha256"])
    DigitsCNN().load_state_dict(load_state_dict_file(weights))  # the architecture's keys
    metrics = artifacts.get_json(result["artifacts"]["metrics"]["sha256"])
    assert metrics["history"] == result["history"]
    events = store.events_since("qat-1", 0)
    assert [e["state"] for e in events].count("succeeded") == 1
    # A finished job is not run again (a redelivered message is a no-op).
    assert run_job("qat-1", store, artifacts) is JobState.SUCCEEDED
    assert store.events_since("qat-1", 0) == events


class _Crash(BaseException):
    """A worker dying: not an Exception, so nothing records a failure."""


def test_a_crashed_job_resumes_from_its_checkpoint_and_matches_an_unbroken_run(
    stores, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    store, artifacts = stores
    _submit(store, "unbroken", _search())
    assert run_job("unbroken", store, artifacts) is JobState.SUCCEEDED

    _submit(store, "crashy", _search())
    original_save = checkpoints.save

    def save_then_die(store_, job_id, state, step):  # type: ignore[no-untyped-def]
        original_save(store_, job_id, state, step)
        if step == 40:
            raise _Crash

    monkeypatch.setattr(checkpoints, "save", save_then_die)
    with pytest.raises(_Crash):
        run_job("crashy", store, artifacts)
    assert store.get("crashy").state is JobState.RUNNING
    monkeypatch.setattr(checkpoints, "save", original_save)
    assert run_job("crashy", store, artifacts) is JobState.SUCCEEDED

    resumed, unbroken = store.get("crashy").result, store.get("unbroken").result
    assert resumed is not None and unbroken is not None
    assert resumed["resumed_from"] == [40] and unbroken["resumed_from"] == []
    assert resumed["config"] == unbroken["config"]
    assert resumed["final_entropy"] == pytest.approx(unbroken["final_entropy"], abs=1e-6)
    assert resumed["evaluation"]["loss"] == pytest.approx(unbroken["evaluation"]["loss"], abs=1e-5)
    assert [p["step"] for p in resumed["history"]] == [p["step"] for p in unbroken["history"]]
    assert artifacts.get_ref(ATTEMPTS_NAMESPACE, "crashy") == {"attempts": 2}


def test_cancel_stops_a_running_job_between_steps(stores) -> None:  # type: ignore[no-untyped-def]
    store, artifacts = stores
    # 5,000 steps: a progress event every 50 (so "training" shows within
    # seconds), a checkpoint every 500, and minutes to run if never cancelled.
    _submit(store, "long", _search(steps=5_000, checkpoint_every=0))
    outcome: list[JobState] = []
    thread = threading.Thread(target=lambda: outcome.append(run_job("long", store, artifacts)))
    thread.start()
    wait_for(lambda: store.get("long").stage == "training", 60, "the job to start training")
    request_cancel(store, "long")
    thread.join(timeout=60)
    assert not thread.is_alive(), "the job kept running after its cancel"
    assert outcome == [JobState.CANCELLED]
    assert store.get("long").result is None
    # It stopped between steps, long before its 5,000 (how soon: bench_timing).
    assert checkpoints.latest(artifacts, "long") is None  # never reached step 500


def test_runtime_failures_end_failed_with_the_reason(stores, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store, artifacts = stores
    weights = tmp_path / "teacher.pt"
    torch.save(DigitsCNN().state_dict(), weights)
    model = ModelSpec(
        source="architecture",
        name_or_path="digits_cnn",
        input_shape=(1, 8, 8),
        weights_path=str(weights),
    )
    _submit(
        store, "gone", TrainingRequest("qat", model, DATA, QatSpec(), TrainingSettings(steps=5))
    )
    weights.unlink()  # accepted, then the file disappeared before the worker ran
    assert run_job("gone", store, artifacts) is JobState.FAILED
    assert "does not exist" in store.get("gone").error
    assert [e["state"] for e in store.events_since("gone", 0)] == ["failed"]


def test_a_job_that_keeps_killing_its_worker_is_failed(stores) -> None:  # type: ignore[no-untyped-def]
    store, artifacts = stores
    _submit(store, "doomed", _search())
    artifacts.set_ref(ATTEMPTS_NAMESPACE, "doomed", {"attempts": 3})
    state = run_job("doomed", store, artifacts, settings=TrainerSettings(max_attempts=3))
    assert state is JobState.FAILED
    assert "stopped 3 times" in store.get("doomed").error


class _WatchedLease(LocalLease):
    """A LocalLease that counts refused acquires: the proof that a runner is
    really waiting on the lease (not merely slow to start)."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0

    def acquire(self, job_id: str, owner: str, ttl: float) -> bool:
        got = super().acquire(job_id, owner, ttl)
        self.refused += not got
        return got


def test_a_second_delivery_waits_for_the_live_runner(stores) -> None:  # type: ignore[no-untyped-def]
    store, artifacts = stores
    _submit(store, "busy", _search())
    lease = _WatchedLease()
    assert lease.acquire("busy", "the-other-worker", ttl=600)
    outcome: list[JobState] = []
    thread = threading.Thread(
        target=lambda: outcome.append(run_job("busy", store, artifacts, lease=lease))
    )
    thread.start()
    wait_for(lambda: lease.refused >= 2, 60, "the second delivery to retry the held lease")
    assert thread.is_alive() and store.get("busy").state is JobState.QUEUED
    store.update("busy", lambda r: transition(r, state=JobState.SUCCEEDED, result={"x": 1}))
    thread.join(timeout=30)
    assert outcome == [JobState.SUCCEEDED]
    assert store.events_since("busy", 0) == []  # it never ran


def test_a_cancelled_queued_job_never_runs(stores) -> None:  # type: ignore[no-untyped-def]
    store, artifacts = stores
    _submit(store, "early", _search())
    assert request_cancel(store, "early").state is JobState.CANCELLED
    assert run_job("early", store, artifacts) is JobState.CANCELLED
    assert checkpoints.latest(artifacts, "early") is None
    assert store.events_since("early", 0) == [final_event(store.get("early"))]


class _EventsDown(SqliteJobStore):
    """A real store whose event writes fail as Redis's do while it is down
    (the job's first progress report meets the outage)."""

    down = True

    def append_event(self, job_id: str, event: dict[str, Any]) -> None:
        if self.down:
            raise Unavailable("Redis is not reachable: connection refused")
        super().append_event(job_id, event)


def test_hand_backs_in_store_outages_count_toward_max_attempts(tmp_path: Path) -> None:
    raw = _EventsDown(tmp_path / "jobs.sqlite3")
    store = RetryingStore(raw, RetryPolicy(window_s=0))  # every outage outlasts the window
    artifacts = ArtifactStore(str(tmp_path / "artifacts"))
    _submit(raw, "flaky", _search())
    settings = TrainerSettings(max_attempts=2)
    for _ in range(2):
        with pytest.raises(StoreOutage):  # the task retries (a new delivery)
            run_job("flaky", store, artifacts, settings=settings)
        assert raw.get("flaky").state is JobState.QUEUED  # handed back, not left RUNNING
    raw.down = False  # the third delivery finds the store up, and the cap spent
    assert run_job("flaky", store, artifacts, settings=settings) is JobState.FAILED
    record = raw.get("flaky")
    assert "ran 2 times without finishing: 2 handed back" in record.error
    assert "BITMESH_STORE_RETRY_SECONDS" in record.error
    assert raw.events_since("flaky", 0) == [final_event(record)]
    assert artifacts.get_ref(ATTEMPTS_NAMESPACE, "flaky") == {"attempts": 3, "outages": 2}
