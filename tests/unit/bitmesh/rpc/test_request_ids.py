"""Request ids: from callers when safe, else fresh; in every log line."""

from __future__ import annotations

import json
import logging

import pytest

from bitmesh.logs import JsonFormatter, current_request_id, request_id_scope
from bitmesh.rpc.request_ids import request_id_from

pytestmark = pytest.mark.unit


def test_callers_id_is_kept_when_safe() -> None:
    assert request_id_from((("x-request-id", "abc-1.2:3_4"),)) == "abc-1.2:3_4"


@pytest.mark.parametrize("value", ["", "a b", 'x"}', "x\ny", "a" * 65, b"bytes"])
def test_unsafe_ids_are_replaced(value: object) -> None:
    new = request_id_from((("x-request-id", value),))  # type: ignore[arg-type]
    assert new != value and len(new) == 16


def test_fresh_ids_differ() -> None:
    assert request_id_from(None) != request_id_from(None)


def test_formatter_adds_the_current_id() -> None:
    record = logging.LogRecord("bitmesh.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    assert "request_id" not in json.loads(JsonFormatter().format(record))
    with request_id_scope("rid-9"):
        assert current_request_id() == "rid-9"
        line = json.loads(JsonFormatter().format(record))
    assert line == {**line, "request_id": "rid-9", "msg": "hello you"}
    assert current_request_id() == ""
