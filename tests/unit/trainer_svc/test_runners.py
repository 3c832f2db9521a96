"""The job kinds' domain functions, called directly (no store, no queue)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bitmesh.data.datasets import DatasetSpec
from bitmesh.errors import FailedPrecondition
from bitmesh.formats import Granularity, get_format, parse_option
from bitmesh.models.loading import ModelSpec
from trainer_svc.execute import execute
from trainer_svc.prepare import prepare
from trainer_svc.specs import (
    CalibrationSpec,
    QatSpec,
    SearchSpec,
    TrainingRequest,
    TrainingSettings,
)
from trainer_svc.workspace import validate

pytestmark = pytest.mark.unit

MODEL = ModelSpec(source="architecture", name_or_path="digits_cnn", input_shape=(1, 8, 8))
DATA = DatasetSpec(kind="digits")


def _search(**changes: object) -> SearchSpec:
    fields: dict[str, object] = {
        "formats": tuple(get_format(n) for n in ("int4", "e2m1", "int8")),
        "target_option": parse_option("int4"),
    }
    fields.update(changes)
    return SearchSpec(**fields)  # type: ignore[arg-type]


def test_held_out_reward_data_is_kept_from_training() -> None:
    request = TrainingRequest("search", MODEL, DATA, _search(reward_holdout=0.2))
    data = prepare(validate(request), hold_out=0.2)
    assert data.held_out is not None
    assert data.batches.size + data.held_out.size == 1437  # the digits train split
    assert data.held_out.size == round(1437 * 0.2)
    outcome = execute(
        TrainingRequest(
            "search", MODEL, DATA, _search(reward_holdout=0.2), TrainingSettings(steps=30)
        )
    )
    assert outcome.steps_done == 30 and outcome.final_entropy is not None


def test_tied_layers_share_formats_and_separate_roles_are_searched_apart() -> None:
    spec = _search(separate_activation=True, tie_groups=(("conv2", "conv3"),), learned_clips=True)
    outcome = execute(
        TrainingRequest("search", MODEL, DATA, spec, TrainingSettings(steps=40, eval_every=20))
    )
    config = outcome.config
    assert config["conv2"].weight == config["conv3"].weight
    assert config["conv2"].activation.bits == config["conv3"].activation.bits
    assert outcome.policy is not None
    assert set(outcome.policy) == {
        "conv1:weight",
        "conv1:activation",
        "conv2,conv3:weight",
        "conv2,conv3:activation",
        "fc1:weight",
        "fc1:activation",
        "fc2:weight",
        "fc2:activation",
    }
    evaluated = [p for p in outcome.history if "eval_accuracy" in p]
    assert [int(p["step"]) for p in evaluated] == [20, 40]


def test_calibration_measures_ranges_without_training() -> None:
    spec = CalibrationSpec(default_option=parse_option("int8"), calibration_batches=3)
    outcome = execute(TrainingRequest("calibration", MODEL, DATA, spec))
    assert outcome.steps_done == 3 and [p["step"] for p in outcome.history] == [1.0, 2.0, 3.0]
    assert all(option.key.startswith("int8/") for option in outcome.config.values())


def test_qat_with_bn_folding_and_per_tensor_scales(tmp_path: Path) -> None:
    trained = execute(
        TrainingRequest(
            "qat", MODEL, DATA, QatSpec(), TrainingSettings(steps=150, learning_rate=0.05)
        )
    )
    weights = tmp_path / "fp32.pt"
    weights.write_bytes(trained.weights)
    model = replace(MODEL, weights_path=str(weights))
    spec = QatSpec(
        default_option=parse_option("int8"), fold_bn=True, weight_granularity=Granularity.PER_TENSOR
    )
    outcome = execute(TrainingRequest("qat", model, DATA, spec, TrainingSettings(steps=40)))
    assert all(o.granularity is Granularity.PER_TENSOR for o in outcome.config.values())
    assert outcome.evaluation.costs.scale_bytes == 5 * 4  # one 32-bit scale per layer
    assert outcome.evaluation.accuracy > trained.evaluation.accuracy - 0.05
    # Folding frozen statistics of a random init would train nothing: refused.
    with pytest.raises(FailedPrecondition, match="BN folding"):
        execute(TrainingRequest("qat", MODEL, DATA, spec, TrainingSettings(steps=40)))
