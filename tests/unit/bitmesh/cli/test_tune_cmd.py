"""``bitmesh tune``: knob and rung syntax, and the request it builds."""

from __future__ import annotations

import argparse

import pytest

from bitmesh.cli.main import build_parser
from bitmesh.cli.tune_cmd import parse_knob, parse_rung, search_request
from bitmesh.errors import InvalidArgument
from bitmesh.v1 import proxy_nas_pb2 as p
from proxy_nas_svc.convert import search_from_pb

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
