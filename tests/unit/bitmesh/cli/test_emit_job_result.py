"""``emit_job_result``: a finished job's output and exit code, shared by
``bitmesh training`` and ``bitmesh tune``."""

from __future__ import annotations

import argparse
import json

import pytest

from bitmesh.cli.common import emit_job_result
from bitmesh.v1 import common_pb2, proxy_nas_pb2

pytestmark = pytest.mark.unit


def _result(state: int) -> proxy_nas_pb2.SearchResult:
    result = proxy_nas_pb2.SearchResult()
    result.status.state = state
    result.status.job_id = "search-1"
    return result


@pytest.mark.parametrize(
    ("state", "code"),
    [(common_pb2.JOB_STATE_SUCCEEDED, 0), (common_pb2.JOB_STATE_FAILED, 1)],
)
def test_exit_code_follows_the_job_state(state: int, code: int) -> None:
    shown: list[proxy_nas_pb2.SearchResult] = []
    args = argparse.Namespace(json=False)
    assert emit_job_result(args, _result(state), shown.append) == code
    assert [r.status.job_id for r in shown] == ["search-1"]


def test_json_output_skips_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    shown: list[proxy_nas_pb2.SearchResult] = []
    args = argparse.Namespace(json=True)
    code = emit_job_result(args, _result(common_pb2.JOB_STATE_FAILED), shown.append)
    assert code == 1 and not shown
    assert json.loads(capsys.readouterr().out)["status"]["job_id"] == "search-1"
