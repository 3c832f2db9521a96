"""The edges: CLI parsing (bitmesh tune) and proto conversion of results."""

from __future__ import annotations

import argparse

import pytest

from bitmesh.cli.main import build_parser
from bitmesh.cli.tune_cmd import parse_knob, parse_rung, search_request
from bitmesh.errors import InvalidArgument
from bitmesh.jobs.records import JobRecord, JobState
from bitmesh.v1 import proxy_nas_pb2 as p
from proxy_nas_svc.convert import result_to_pb, search_from_pb

pytestmark = pytest.mark.unit


def test_knob_and_rung_syntax() -> None:
    assert list(parse_knob("learning_rate=0.002, 0.02").categorical.choices) == ["0.002", "0.02"]
    ranged = parse_knob("weight_decay=1e-5:1e-2:log").float_range
    assert (ranged.low, ranged.high, ranged.log) == (1e-5, 1e-2, True)
    assert parse_knob("n=1..4").int_range.high == 4
    assert parse_rung("0.25:8") == p.Rung(data_fraction=0.25, steps=8)
    for bad in ("learning_rate", "lr=1:2:3", "x=a..b"):
        with pytest.raises(InvalidArgument):
            parse_knob(bad)
    with pytest.raises(InvalidArgument, match="data_fraction:steps"):
        parse_rung("quarter")


def test_bitmesh_tune_builds_the_request() -> None:
    args: argparse.Namespace = build_parser().parse_args(
        [
            "tune",
            "--model",
            "digits_cnn",
            "--uniform",
            "int4",
            "--knob",
            "learning_rate=0.02,0.2",
            "--rung",
            "0.25:8",
            "--rung",
            "0.5:16",
            "--full",
            "1:120",
            "--trials",
            "6",
            "--eta",
            "4",
        ]
    )
    request = search_request(args)
    assert request.trials == 6 and request.reduction_factor == 4
    assert [r.steps for r in request.fidelity] == [8, 16]
    assert request.full_fidelity.steps == 120
    assert request.default_option.weight.name == "int4"
    domain = search_from_pb(request, {})
    assert domain.space["learning_rate"].domain.choices == ("0.02", "0.2")  # type: ignore[union-attr]


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
