"""What crosses back from the sandbox is bounded, typed data and nothing else."""

from __future__ import annotations

import pytest

from bitmesh.errors import InvalidArgument, ResourceExhausted
from bitmesh.models.layers import LayerProfile
from bitmesh.models.sandbox.protocol import MAX_MESSAGE_CHARS, error_from_reply, sanitize
from bitmesh.models.sandbox.table import ModelTable, errors_from_json
from bitmesh.models.sandbox.worker import child_environment

pytestmark = pytest.mark.unit

TABLE = ModelTable(
    layers=(LayerProfile("fc", "linear", 12, (3, 4), 3, 12, 3),),
    total_parameters=15,
    model_hash="abc",
    weight_parameters=12,
)


def test_a_message_is_one_bounded_printable_line() -> None:
    text = sanitize("line one\nline two\x00\x1b[31m" + "x" * 10_000)
    assert "\n" not in text and "\x00" not in text and "\x1b" not in text
    assert text.startswith("line one line two") and len(text) == MAX_MESSAGE_CHARS


def test_a_table_round_trips_and_wrong_types_are_refused() -> None:
    data = TABLE.to_json()
    assert ModelTable.from_json(data) == TABLE
    assert ModelTable.from_json(data).weight_coverage == 1.0
    data["layers"][0]["macs"] = True
    with pytest.raises(ValueError, match="expected int"):
        ModelTable.from_json(data)


def test_weight_errors_must_be_one_number_per_layer_and_option() -> None:
    assert errors_from_json([[0.5, 2], [0.0, 1e-9]], 2, 2) == [[0.5, 2.0], [0.0, 1e-9]]
    for forged in (
        [[0.5, 2.0]],  # a layer short
        [[0.5], [1.0]],  # an option short
        [[0.5, "1"], [1.0, 1.0]],
        [[0.5, True], [1.0, 1.0]],
        [[0.5, -1.0], [1.0, 1.0]],
        [[0.5, float("nan")], [1.0, 1.0]],
        {"fc": [0.5, 1.0]},
    ):
        with pytest.raises(ValueError):
            errors_from_json(forged, 2, 2)


def test_a_child_can_only_report_the_statuses_of_a_bad_model() -> None:
    assert isinstance(error_from_reply({"status": "RESOURCE_EXHAUSTED"}), ResourceExhausted)
    forged = error_from_reply({"status": "INTERNAL", "message": "x\n" * 1000})
    assert isinstance(forged, InvalidArgument) and len(forged.message) <= MAX_MESSAGE_CHARS


def test_the_child_environment_holds_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "BITMESH_AUTH_TOKEN",
        "BITMESH_TLS_KEY_FILE",
        "REDIS_URL",
        "AWS_SECRET_ACCESS_KEY",
    ):
        monkeypatch.setenv(name, "secret")
    env = child_environment("/scratch")
    assert "secret" not in env.values()
    assert env["HOME"] == env["TMPDIR"] == "/scratch" and env["CUDA_VISIBLE_DEVICES"] == ""
