"""Submission-time checks that need the model and the data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bitmesh.data.datasets import DatasetSpec
from bitmesh.errors import FailedPrecondition, InvalidArgument, NotFound
from bitmesh.formats import get_format, parse_option
from bitmesh.models.digits_cnn import DigitsCNN
from bitmesh.models.loading import ModelSpec
from trainer_svc.specs import Distillation, QatSpec, SearchSpec, TrainingRequest
from trainer_svc.workspace import resolve_config, validate

pytestmark = pytest.mark.unit

MODEL = ModelSpec(source="architecture", name_or_path="digits_cnn", input_shape=(1, 8, 8))
DATA = DatasetSpec(kind="digits")


def _search(**changes: object) -> TrainingRequest:
    fields: dict[str, object] = {
        "formats": tuple(get_format(n) for n in ("int4", "int8")),
        "target_option": parse_option("int4"),
    }
    fields.update(changes)
    return TrainingRequest("search", MODEL, DATA, SearchSpec(**fields))  # type: ignore[arg-type]


def test_a_good_request_gives_the_model_and_its_layers() -> None:
    ws = validate(
        TrainingRequest("qat", MODEL, DATA, QatSpec(config={"fc1": parse_option("int4")}))
    )
    assert ws.layer_names == ["conv1", "conv2", "conv3", "fc1", "fc2"]


def test_unknown_layers_are_refused_with_the_known_ones() -> None:
    request = TrainingRequest("qat", MODEL, DATA, QatSpec(config={"conv9": parse_option("int4")}))
    with pytest.raises(InvalidArgument, match=r"lacks: conv9.*conv1, conv2"):
        validate(request)


def test_dataset_model_mismatch() -> None:
    wide = ModelSpec(source="architecture", name_or_path="digits_cnn", input_shape=(3, 8, 8))
    with pytest.raises(InvalidArgument, match=r"samples of shape \(1, 8, 8\)"):
        validate(TrainingRequest("qat", wide, DATA, QatSpec()))
    seven = ModelSpec(
        source="architecture", name_or_path="digits_cnn", input_shape=(1, 8, 8), num_classes=7
    )
    with pytest.raises(InvalidArgument, match="10 classes"):
        validate(TrainingRequest("qat", seven, DATA, QatSpec()))


def test_unreachable_cost_targets() -> None:
    with pytest.raises(FailedPrecondition, match="below the cheapest"):
        validate(_search(target_option=parse_option("int2")))
    with pytest.raises(FailedPrecondition, match="above the most expensive"):
        validate(_search(target_option=None, cost_target=1e12))
    validate(_search(target_option=None, cost_target=1e12, one_sided=True))  # a budget: fine
    with pytest.raises(InvalidArgument, match="tie group"):
        validate(_search(tie_groups=(("conv1", "conv7"),)))


def test_distillation_needs_a_trained_teacher(tmp_path: Path) -> None:
    spec = QatSpec(distillation=Distillation(enabled=True))
    with pytest.raises(FailedPrecondition, match="trained full-precision teacher"):
        validate(TrainingRequest("qat", MODEL, DATA, spec))
    weights = tmp_path / "w.pt"
    torch.save(DigitsCNN().state_dict(), weights)
    trained = ModelSpec(
        source="architecture",
        name_or_path="digits_cnn",
        input_shape=(1, 8, 8),
        weights_path=str(weights),
    )
    validate(TrainingRequest("qat", trained, DATA, spec))
    missing = ModelSpec(
        source="architecture",
        name_or_path="digits_cnn",
        input_shape=(1, 8, 8),
        weights_path=str(tmp_path / "nope.pt"),
    )
    with pytest.raises(NotFound):
        validate(TrainingRequest("qat", missing, DATA, spec))


def test_resolve_config_fills_defaults_and_granularity() -> None:
    from bitmesh.formats import Granularity

    names = ["a", "b", "c"]
    config = resolve_config(names, {"b": parse_option("int8")}, parse_option("int4"), None)
    assert {k: v.key for k, v in config.items()} == {
        "a": "int4/int4",
        "b": "int8/int8",
        "c": "int4/int4",
    }
    only = resolve_config(names, {"b": parse_option("int8")}, None, Granularity.PER_TENSOR)
    assert {k: v.key for k, v in only.items()} == {"b": "int8/int8:pt"}
