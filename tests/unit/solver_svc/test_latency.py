from __future__ import annotations

import json
from pathlib import Path

import pytest

from bitmesh.errors import InvalidArgument, NotFound
from solver_svc.latency import (
    LatencyTable,
    RooflineProfile,
    format_bits,
    list_profiles,
    load_profile,
    load_table_csv,
    with_latency,
)
from tests.unit.solver_svc.helpers import quant_problem

pytestmark = pytest.mark.unit


def test_shipped_profiles_cite_their_data_sheets() -> None:
    names = {p.name for p in list_profiles()}
    assert {"nvidia-t4", "nvidia-a100"} <= names
    for info in list_profiles():
        assert info.kind == "roofline" and "data sheet" in info.source and "http" in info.source


def test_t4_peaks_from_the_data_sheet() -> None:
    t4 = load_profile("nvidia-t4")
    assert isinstance(t4, RooflineProfile)
    assert t4.peak_ops_per_s["int8"] == 130e12 and t4.peak_ops_per_s["int4"] == 260e12
    assert t4.memory_bandwidth_bytes_per_s == 320e9


@pytest.mark.parametrize(
    ("weight", "act", "expected"),
    [
        ("int4", "int4", "int4"),
        ("int4", "int8", "int8"),
        ("uint8", "int8", "int8"),
        ("e4m3", "e4m3", "fp16"),
        ("int4", "fp16", "fp16"),
        ("int2", "int2", "int4"),
    ],
)
def test_compute_format(weight: str, act: str, expected: str) -> None:
    t4 = load_profile("nvidia-t4")
    assert isinstance(t4, RooflineProfile)
    assert t4.compute_format(weight, act) == expected


def test_roofline_takes_the_slower_of_compute_and_memory() -> None:
    t4 = load_profile("nvidia-t4")
    assert isinstance(t4, RooflineProfile)
    # Compute bound: 2 * 1e9 MACs / 130e12 ops/s = 15.38 us.
    assert t4.latency_ms(1e9, "int8", "int8", weight_bytes=1e3) == pytest.approx(2e9 / 130e12 * 1e3)
    # Memory bound: 320e6 bytes / 320e9 B/s = 1 ms.
    assert t4.latency_ms(1.0, "int8", "int8", weight_bytes=320e6) == pytest.approx(1.0)


def test_with_latency_from_roofline_and_table(tmp_path: Path) -> None:
    problem = quant_problem(3, seed=0)
    a100 = load_profile("nvidia-a100")
    priced = with_latency(problem, a100)
    for layer in priced.layers:
        fast, slow = layer.options[1], layer.options[3]  # w4a4 vs w8a8
        assert 0 < fast.latency_ms < slow.latency_ms
    csv_path = tmp_path / "t.csv"
    rows = ["layer,option,latency_ms"] + [
        f"{layer.name},{o.key},{i + 0.5}"
        for i, layer in enumerate(problem.layers)
        for o in layer.options
    ]
    csv_path.write_text("\n".join(rows) + "\n")
    table = load_table_csv(csv_path, name="bench")
    priced = with_latency(problem, table)
    assert [layer.options[0].latency_ms for layer in priced.layers] == [0.5, 1.5, 2.5]
    json_path = tmp_path / "t.json"
    json_path.write_text(json.dumps(table.to_json()))
    assert load_profile(json_path) == table


def test_bad_profiles() -> None:
    with pytest.raises(NotFound, match="known profiles"):
        load_profile("nvidia-h900")
    with pytest.raises(InvalidArgument, match="unknown numeric format"):
        format_bits("int")
    with pytest.raises(InvalidArgument, match="finite"):
        LatencyTable("x", "", "", {("a", "b"): float("nan")})
    with pytest.raises(InvalidArgument, match="no entry"):
        with_latency(quant_problem(1, 0), LatencyTable("x", "", "", {}))
    with pytest.raises(InvalidArgument, match="cite"):
        RooflineProfile("x", "", "", {"int8": 1.0}, 1.0)


def test_a_profile_file_is_parsed_once_and_again_when_edited(tmp_path: Path) -> None:
    path = tmp_path / "dev.json"
    first = LatencyTable("dev", "gpu", "measured", {("a", "w4a4"): 1.0})
    path.write_text(json.dumps(first.to_json()))
    assert load_profile(path) is load_profile(path)  # remembered, not re-read
    second = LatencyTable("dev", "gpu", "measured again", {("a", "w4a4"): 2.5})
    path.write_text(json.dumps(second.to_json()))
    assert load_profile(path) == second
