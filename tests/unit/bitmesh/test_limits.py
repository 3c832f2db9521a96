"""bitmesh.limits: each cap admits its own number and refuses the next one up,
a malformed number is INVALID_ARGUMENT, and every cap is a declared setting.
(The refusals through real servers: tests/integration/security/test_input_caps.py.)"""

from __future__ import annotations

from dataclasses import fields

import pytest

from bitmesh.errors import InvalidArgument, ResourceExhausted
from bitmesh.limits import MAX_DIM, InputLimits
from bitmesh.settings import Settings

pytestmark = pytest.mark.unit

SMALL = InputLimits(
    max_input_elements=12,
    max_num_classes=5,
    max_batch_size=8,
    max_batches=3,
    max_data_elements=100,
    max_calibration_batches=10,
)


def test_every_cap_is_a_setting_with_the_same_default() -> None:
    for item in fields(InputLimits):
        assert Settings.model_fields[item.name].default == item.default, item.name
    values = {item.name: i + 2 for i, item in enumerate(fields(InputLimits))}
    assert InputLimits.from_settings(Settings(**values)) == InputLimits(**values)


def test_each_cap_admits_its_number_and_refuses_the_next() -> None:
    assert SMALL.sample_shape("shape", [3, 2, 2]) == (3, 2, 2)
    assert SMALL.num_classes("classes", 5) == 5
    assert SMALL.batch_size("batch_size", 8) == 8
    assert SMALL.batches("num_batches", 3) == 3
    SMALL.data_in_memory("data", 25, (2, 2))
    assert SMALL.calibration_batches("calibration_batches", 10) == 10
    with pytest.raises(ResourceExhausted, match="BITMESH_MAX_CALIBRATION_BATCHES"):
        SMALL.calibration_batches("calibration_batches", 11)
    with pytest.raises(ResourceExhausted, match=r"13 elements .*BITMESH_MAX_INPUT_ELEMENTS"):
        SMALL.sample_shape("shape", [13])
    with pytest.raises(ResourceExhausted, match=r"6; the cap is 5 .*BITMESH_MAX_NUM_CLASSES"):
        SMALL.num_classes("classes", 6)
    with pytest.raises(ResourceExhausted, match="BITMESH_MAX_BATCH_SIZE"):
        SMALL.batch_size("batch_size", 9)
    with pytest.raises(ResourceExhausted, match="BITMESH_MAX_BATCHES"):
        SMALL.batches("num_batches", 4)
    with pytest.raises(ResourceExhausted, match=r"26 samples x 4 .*BITMESH_MAX_DATA_ELEMENTS"):
        SMALL.data_in_memory("data", 26, (2, 2))


@pytest.mark.parametrize("shape", [[], [0], [3, -1], [1, 1, 1, 1, 1], [MAX_DIM + 1], [True], [2.0]])
def test_a_malformed_shape_is_invalid_argument(shape: list[object]) -> None:
    with pytest.raises(InvalidArgument, match="1 to 4 integers"):
        SMALL.sample_shape("shape", shape)  # type: ignore[arg-type]


@pytest.mark.parametrize("check", [SMALL.num_classes, SMALL.batch_size, SMALL.batches])
@pytest.mark.parametrize("value", [0, -1, True])
def test_a_malformed_count_is_invalid_argument(check: object, value: object) -> None:
    with pytest.raises(InvalidArgument, match=">= 1"):
        check("n", value)  # type: ignore[operator]


def test_a_cap_below_one_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="BITMESH_MAX_BATCHES"):
        InputLimits(max_batches=0)
