"""`bitmesh run`'s file-size check, budget checks with scales, and the
export-support check that runs before any training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bitmesh.client import Client
from bitmesh.errors import FailedPrecondition, InvalidArgument
from bitmesh.pipeline import report as rep
from bitmesh.pipeline.file_size import check_file_size, file_size_report
from bitmesh.pipeline.request import PipelineRequest
from bitmesh.pipeline.run import run_pipeline
from bitmesh.pipeline.stages import problem_from, solution_dict
from bitmesh.settings import SERVICES
from bitmesh.v1 import common_pb2, solver_pb2

pytestmark = pytest.mark.unit

#: MXFP4 on 4096 weights: 2048 bytes of codes, 128 of E8M0 scales.
COSTS = {"size_bytes": 2048.0, "bops": 1.0, "latency_ms": 0.0, "scale_bytes": 128.0}


def export(weight_bytes: float, layer_weight: str = "blocked") -> dict[str, Any]:
    return {
        "exported": True,
        "weight_bytes": {"fc": weight_bytes},
        "file_bytes": int(weight_bytes) + 900,
        "layers": [{"layer": "fc", "weight_format": "mxfp4", "weight": layer_weight}],
    }


def test_a_faithful_file_meets_the_budget_with_its_scales() -> None:
    sizes = file_size_report(
        export(2176.0), COSTS, {"max_size_bytes": 2176.0}, "weights_and_scales"
    )
    assert sizes["ok"] and sizes["predicted_bytes"] == 2176.0
    assert sizes["other_file_bytes"] == 900
    check_file_size(sizes)


def test_a_dequantized_file_fails_with_what_was_written() -> None:
    sizes = file_size_report(
        export(16384.0, "dequantized"), COSTS, {"max_size_bytes": 2200.0}, "weights_and_scales"
    )
    assert not sizes["ok"]
    assert "exceeds the scales' share" in sizes["message"]
    assert "exceed the size budget 2200" in sizes["message"]
    assert "fc (mxfp4)" in sizes["message"]
    with pytest.raises(FailedPrecondition, match="does not match its budget"):
        check_file_size(sizes)


def test_weights_only_budgets_allow_the_scales_share_and_no_more() -> None:
    # A codes-only budget of 2048 bytes: the file's 2176 are 128 (the scales) over.
    ok = file_size_report(export(2176.0), COSTS, {"max_size_bytes": 2048.0}, "weights_only")
    assert ok["ok"]
    over = file_size_report(export(2176.0), COSTS, {"max_size_bytes": 2000.0}, "weights_only")
    assert not over["ok"] and "exceed the size budget 2000" in over["message"]


def test_budget_checks_count_scales_unless_weights_only() -> None:
    budgets = {"max_size_bytes": 2100.0}
    assert rep.budget_checks(COSTS, budgets)["max_size_bytes"]["value"] == 2176.0
    assert rep.budget_checks(COSTS, budgets)["max_size_bytes"]["met"] is False
    assert rep.budget_checks(COSTS, budgets, None, "weights_only")["max_size_bytes"]["met"]


def test_the_problem_and_answers_say_which_accounting() -> None:
    table = {
        "layers": [
            {
                "name": "fc",
                "parameters": 4096,
                "options": {
                    "mxfp4": {"omega": 1.0, "costs": COSTS, "weight_bits": 4},
                },
            }
        ]
    }
    assert problem_from(table, "p").size_accounting == common_pb2.SIZE_ACCOUNTING_WEIGHTS_AND_SCALES
    assert problem_from(table, "p", "weights_only").size_accounting == (
        common_pb2.SIZE_ACCOUNTING_WEIGHTS_ONLY
    )
    answer = solver_pb2.Solution(size_accounting=common_pb2.SIZE_ACCOUNTING_WEIGHTS_ONLY)
    assert solution_dict(answer)["size_accounting"] == "weights_only"


def test_unsupported_formats_stop_the_run_before_training(tmp_path: Path) -> None:
    request = PipelineRequest(
        model="digits_cnn",
        options=("mxfp4", "mxfp6_e2m3", "int4_g32"),
        budgets={"max_size_bytes": 9000.0},
    )
    # Nothing listens at these addresses: the run must stop before calling any.
    client = Client(addresses=dict.fromkeys(SERVICES, "127.0.0.1:9"))
    with pytest.raises(InvalidArgument, match=r"mxfp6_e2m3.*Nothing was trained"):
        run_pipeline(client, request, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "unsupported_format"
    assert set(report["export_support"]["unsupported"]) == {"mxfp6_e2m3"}
    assert report["stages"] == {}
