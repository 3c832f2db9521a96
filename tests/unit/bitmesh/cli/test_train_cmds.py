"""`bitmesh train/search/calibrate`: flags become the request the service expects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bitmesh.cli.main import build_parser
from bitmesh.cli.train_cmds import (
    calibration_request,
    parse_config,
    qat_request,
    search_request,
)
from bitmesh.errors import InvalidArgument
from bitmesh.v1 import common_pb2 as c
from bitmesh.v1 import trainer_pb2 as t

pytestmark = pytest.mark.unit


def _args(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(list(argv))


def test_parse_config_inline_and_from_a_file(tmp_path: Path) -> None:
    config = parse_config("conv1=int8, layer1.0.conv2=int4/uint8:pt")
    assert [
        (item.layer, item.option.weight.name, item.option.activation.name) for item in config.layers
    ] == [
        ("conv1", "int8", "int8"),
        ("layer1.0.conv2", "int4", "uint8"),
    ]
    assert config.layers[1].option.granularity == c.GRANULARITY_PER_TENSOR
    path = tmp_path / "solution.json"
    path.write_text(json.dumps({"config": {"fc1": "e4m3"}}))
    assert parse_config(f"@{path}").layers[0].option.weight.name == "e4m3"
    with pytest.raises(InvalidArgument, match="layer=option"):
        parse_config("conv1")
    with pytest.raises(InvalidArgument, match="unknown numeric format"):
        parse_config("conv1=int9")


def test_train_flags() -> None:
    args = _args(
        "train",
        "--model",
        "digits_cnn",
        "--uniform",
        "int4",
        "--config",
        "conv1=int8",
        "--distill",
        "--alpha",
        "0.9",
        "--fold-bn",
        "--per-tensor",
        "--steps",
        "150",
        "--lr",
        "0.01",
        "--schedule",
        "step",
        "--range",
        "ema",
    )
    request = qat_request(args)
    assert request.WhichOneof("kind") == "qat"
    assert request.model.architecture == "digits_cnn"
    assert request.dataset.kind == c.DATASET_KIND_DIGITS
    assert request.qat.default_option.weight.name == "int4"
    assert request.qat.config.layers[0].layer == "conv1"
    assert request.qat.distillation.enabled and request.qat.distillation.alpha == 0.9
    assert request.qat.fold_bn
    assert request.qat.weight_granularity == c.GRANULARITY_PER_TENSOR
    assert request.qat.activation_range == t.RANGE_ESTIMATOR_EMA
    assert (request.training.steps, request.training.learning_rate) == (150, 0.01)
    assert request.training.schedule == t.LR_SCHEDULE_STEP


def test_search_flags() -> None:
    args = _args(
        "search",
        "--model",
        "digits_cnn",
        "--formats",
        "int2,int4,fp8_e4m3",
        "--target",
        "int4",
        "--one-sided",
        "--tie",
        "conv1,conv2",
        "--separate-activation",
        "--shared-clipping",
    )
    spec = search_request(args).search
    assert [f.name for f in spec.formats] == ["int2", "int4", "e4m3"]
    assert spec.target_option.weight.name == "int4" and spec.cost_target == 0
    assert spec.target_axis == c.COST_AXIS_BOPS
    assert spec.one_sided and spec.separate_activation and not spec.switchable_clipping
    assert list(spec.tie_groups) == ["conv1,conv2"]
    sized = search_request(_args("search", "--model", "m", "--target-size", "5000"))
    assert sized.search.target_axis == c.COST_AXIS_SIZE and sized.search.cost_target == 5000
    with pytest.raises(InvalidArgument, match="exactly one"):
        search_request(_args("search", "--model", "m", "--target", "int4", "--target-bops", "1"))


def test_calibrate_and_dataset_flags() -> None:
    args = _args(
        "calibrate",
        "--model",
        "resnet18",
        "--uniform",
        "int8",
        "--batches",
        "4",
        "--dataset",
        "synthetic",
        "--data-shape",
        "3,32,32",
        "--data-classes",
        "5",
    )
    request = calibration_request(args)
    assert request.calibration.calibration_batches == 4
    assert request.dataset.kind == c.DATASET_KIND_SYNTHETIC
    assert list(request.dataset.shape) == [3, 32, 32] and request.dataset.num_classes == 5
    with pytest.raises(InvalidArgument, match="digits, synthetic or folder"):
        calibration_request(_args("calibrate", "--model", "m", "--dataset", "imagenet"))
