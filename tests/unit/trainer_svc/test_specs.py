"""Request value objects: JSON round trip and the range checks at submission."""

from __future__ import annotations

import pytest

from bitmesh.data.datasets import DatasetSpec
from bitmesh.errors import InvalidArgument
from bitmesh.formats import Granularity, get_format, parse_option
from bitmesh.models.loading import ModelSpec
from bitmesh.quant.range_estimators import RangeEstimator
from trainer_svc.specs import (
    CalibrationSpec,
    Distillation,
    QatSpec,
    SearchSpec,
    TrainingRequest,
    TrainingSettings,
)

pytestmark = pytest.mark.unit

MODEL = ModelSpec(source="architecture", name_or_path="digits_cnn", input_shape=(1, 8, 8))
DATA = DatasetSpec(kind="digits")


def _formats(*names: str):  # type: ignore[no-untyped-def]
    return tuple(get_format(n) for n in names)


@pytest.mark.parametrize(
    "spec",
    [
        QatSpec(
            config={"conv1": parse_option("int8"), "fc2": parse_option("e4m3/e4m3:pt")},
            default_option=parse_option("int4"),
            distillation=Distillation(enabled=True, alpha=0.9, temperature=3.0),
            fold_bn=True,
            weight_granularity=Granularity.PER_TENSOR,
            activation_range=RangeEstimator("ema", momentum=0.8),
        ),
        SearchSpec(
            formats=_formats("int2", "int4", "e2m1", "bf16"),
            separate_activation=True,
            axis="size",
            cost_target=1234.0,
            one_sided=True,
            tie_groups=(("conv1", "conv2"),),
            learned_clips=True,
            reward_holdout=0.1,
            plain_baseline=True,
        ),
        CalibrationSpec(config={"fc1": parse_option("int8")}, calibration_batches=3),
    ],
)
def test_json_round_trip(spec) -> None:  # type: ignore[no-untyped-def]
    kind = {QatSpec: "qat", SearchSpec: "search", CalibrationSpec: "calibration"}[type(spec)]
    request = TrainingRequest(kind, MODEL, DATA, spec, TrainingSettings(steps=7, seed=3))
    assert TrainingRequest.from_dict(request.to_dict()) == request


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 0}, "steps must be"),
        ({"steps": 2_000_000}, "steps must be"),
        ({"learning_rate": 11.0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"data_fraction": 1.5}, "data_fraction"),
        ({"schedule": "linear"}, "schedule"),
    ],
)
def test_training_settings_out_of_range(changes: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        TrainingSettings(**changes)


def test_search_spec_checks() -> None:
    with pytest.raises(InvalidArgument, match="empty"):
        SearchSpec(formats=(), cost_target=1.0)
    with pytest.raises(InvalidArgument, match="repeated"):
        SearchSpec(formats=_formats("int4", "int4"), cost_target=1.0)
    with pytest.raises(InvalidArgument, match="use int4"):
        SearchSpec(formats=_formats("uint4"), cost_target=1.0)
    with pytest.raises(InvalidArgument, match="needs a cost target"):
        SearchSpec(formats=_formats("int4"))
    with pytest.raises(InvalidArgument, match="more than one tie group"):
        SearchSpec(formats=_formats("int4"), cost_target=1.0, tie_groups=(("a", "b"), ("b", "c")))
    with pytest.raises(InvalidArgument, match="warmup_fraction"):
        SearchSpec(formats=_formats("int4"), cost_target=1.0, warmup_fraction=1.0)


def test_distillation_and_calibration_checks() -> None:
    with pytest.raises(InvalidArgument, match="alpha"):
        Distillation(alpha=1.5)
    with pytest.raises(InvalidArgument, match="temperature"):
        Distillation(temperature=0.0)
    with pytest.raises(InvalidArgument, match="calibration_batches"):
        CalibrationSpec(calibration_batches=0)


def test_request_kind_must_match_spec_and_train_split() -> None:
    with pytest.raises(InvalidArgument, match="needs a QatSpec"):
        TrainingRequest("qat", MODEL, DATA, CalibrationSpec())
    with pytest.raises(InvalidArgument, match="train split"):
        TrainingRequest("qat", MODEL, DatasetSpec(kind="digits", split="test"), QatSpec())
