"""proxy_nas_svc.convert: a search's record and events as its gRPC result."""

from __future__ import annotations

import pytest

from bitmesh.jobs.records import JobRecord, JobState
from bitmesh.v1 import proxy_nas_pb2 as p
from proxy_nas_svc.convert import result_to_pb

pytestmark = pytest.mark.unit


def test_a_running_search_reports_its_trials_from_events() -> None:
    trial = {
        "number": 3,
        "params": {"learning_rate": "0.2"},
        "rung": 0,
        "score": 0.5,
        "state": "promoted",
        "reason": "",
        "training_steps": 8,
        "rung_scores": [0.5],
        "full_score": None,
    }
    record = JobRecord(job_id="tune-x", kind="tune", state=JobState.RUNNING)
    events = [
        {"state": "running", "trial": {**trial, "state": "running", "rung_scores": []}},
        {"state": "running", "trial": trial, "best": trial},
    ]
    reply = result_to_pb(record, events)
    assert [t.number for t in reply.trials] == [3]
    assert reply.trials[0].state == p.TRIAL_STATE_PROMOTED
    assert not reply.trials[0].HasField("full_score")
    assert reply.best_trial == 3 and reply.best_params["learning_rate"] == "0.2"
