from __future__ import annotations

import pytest

from bitmesh.errors import InvalidArgument
from proxy_nas_svc.space import (
    KNOBS,
    Categorical,
    FloatRange,
    Hyperparameter,
    IntRange,
    parse_value,
    space_from_dict,
    space_size,
    space_to_dict,
    validate_space,
)

pytestmark = pytest.mark.unit


def hp(name: str, *choices: str) -> Hyperparameter:
    return Hyperparameter(name, Categorical(tuple(choices)))


@pytest.mark.parametrize(
    ("space", "needle"),
    [
        ([], "empty"),
        ([hp("epochs", "1")], "unknown knob"),
        ([hp("fold_bn", "true"), hp("fold_bn", "false")], "twice"),
        ([hp("granularity")], "no choices"),
        ([hp("granularity", "per_channel", "per_channel")], "repeats"),
        ([hp("activation_range", "minmax", "median")], "median"),
        ([Hyperparameter("learning_rate", FloatRange(0.5, 0.1))], "low 0.5 > high 0.1"),
        ([Hyperparameter("learning_rate", FloatRange(0.0, 0.1))], "leaves its domain"),
        ([Hyperparameter("weight_decay", FloatRange(0.0, 0.1, log=True))], "log range"),
        ([Hyperparameter("fold_bn", IntRange(0, 1))], "categorical, not a range"),
        ([hp("alpha", "0.5")], "distillation"),
        ([hp("distillation", "false"), hp("alpha", "0.5")], "distillation"),
        ([hp("range_momentum", "0.9")], "ema or percentile"),
        ([hp("activation_range", "ema"), hp("range_percentile", "99")], "percentile"),
    ],
)
def test_bad_spaces_are_refused_with_what_to_fix(space: list[Hyperparameter], needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        validate_space(space)


def test_values_parse_to_the_knob_type() -> None:
    assert parse_value(KNOBS["fold_bn"], "True") is True
    assert parse_value(KNOBS["learning_rate"], "0.02") == pytest.approx(0.02)
    with pytest.raises(InvalidArgument, match="takes a number"):
        parse_value(KNOBS["learning_rate"], "fast")


def test_size_and_round_trip() -> None:
    space = validate_space(
        [
            hp("distillation", "true", "false"),
            Hyperparameter("alpha", FloatRange(0.5, 0.9)),
            hp("granularity", "per_channel", "per_tensor"),
        ]
    )
    assert space_size(space) is None  # a float range
    assert space_from_dict(space_to_dict(space)) == space
    finite = validate_space(
        [hp("fold_bn", "true", "false"), hp("schedule", "cosine", "step", "constant")]
    )
    assert space_size(finite) == 6
