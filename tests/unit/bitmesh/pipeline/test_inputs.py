"""The run's inputs made concrete: uploads by content, shapes that follow the
model, classes that follow the data, and the verdict the report ends with."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitmesh.artifacts import sha256_hex
from bitmesh.data.normalization import IMAGENET_MEAN
from bitmesh.errors import InvalidArgument, NotFound
from bitmesh.pipeline import report as rep
from bitmesh.pipeline.inputs import resolve_inputs
from bitmesh.pipeline.request import PipelineRequest
from bitmesh.pipeline.run import STAGES

pytestmark = pytest.mark.unit

_BUDGET = {"max_bops": 1e9}


def _folder(root: Path, classes: int = 3) -> Path:
    for split in ("train", "test"):
        for index in range(classes):
            (root / split / f"c{index}").mkdir(parents=True)
    return root


def test_architecture_with_weights_and_a_folder(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"state dict bytes")
    request = PipelineRequest(
        model="resnet18",
        weights=str(weights),
        dataset=f"folder:{_folder(tmp_path / 'data')}",
        data_shape=(3, 32, 32),
        eval_subset=50,
        budgets=_BUDGET,
    )
    inputs = resolve_inputs(request, str(tmp_path / "root"))
    assert inputs.pretrained and inputs.num_classes == 3
    assert inputs.input_shape == (3, 32, 32)  # the model follows the data's shape
    assert inputs.weights_sha256 == sha256_hex(b"state dict bytes")
    assert Path(inputs.weights).read_bytes() == b"state dict bytes"
    assert Path(inputs.weights).name == "w.pt" and "uploads" in inputs.weights
    ref = inputs.model_ref()
    assert ref.architecture == "resnet18" and ref.weights == inputs.weights
    assert list(ref.input_shape) == [3, 32, 32] and ref.num_classes == 3
    data = inputs.dataset_ref()
    assert list(data.shape) == [3, 32, 32] and data.eval_subset_size == 50
    assert tuple(data.mean) == IMAGENET_MEAN  # the pretrained default
    assert inputs.dataset_ref(subset=7).subset_size == 7


def test_defaults_without_weights(tmp_path: Path) -> None:
    digits = resolve_inputs(PipelineRequest(model="digits_cnn", budgets=_BUDGET), str(tmp_path))
    assert not digits.pretrained and digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10 and not digits.dataset_ref().mean
    request = PipelineRequest(
        model="resnet18",
        dataset=f"folder:{_folder(tmp_path / 'data', 4)}",
        num_classes=4,
        normalize="none",
        budgets=_BUDGET,
    )
    folder = resolve_inputs(request, str(tmp_path))
    assert folder.input_shape == (3, 224, 224) and list(folder.dataset_ref().shape) == [3, 224, 224]
    assert not folder.dataset_ref().mean


def test_missing_files_and_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="weights file"):
        resolve_inputs(
            PipelineRequest(model="resnet18", weights="nope.pt", budgets=_BUDGET), str(tmp_path)
        )
    with pytest.raises(NotFound, match="image folder"):
        resolve_inputs(
            PipelineRequest(model="resnet18", dataset="folder:nope", budgets=_BUDGET),
            str(tmp_path),
        )
    (tmp_path / "flat").mkdir()
    with pytest.raises(InvalidArgument, match="no class subfolders"):
        resolve_inputs(
            PipelineRequest(
                model="resnet18", dataset=f"folder:{tmp_path / 'flat'}", budgets=_BUDGET
            ),
            str(tmp_path),
        )


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_torchscript_and_static_programs_are_refused_before_anything_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    import torch

    from bitmesh.cli.common import model_ref_from

    model = torch.nn.Linear(4, 3)
    scripted = tmp_path / "model.pt"
    torch.jit.script(model).save(str(scripted))
    monkeypatch.chdir(tmp_path)  # "model.pt" (no folder) names the file here
    disguised = tmp_path / "model.pt2"
    disguised.write_bytes(scripted.read_bytes())
    static = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(2, 4),)), static)
    root = tmp_path / "root"
    for given, match in [
        (scripted, "TorchScript"),
        (disguised, "TorchScript"),
        (static, "static batch dimension"),
    ]:
        with pytest.raises(InvalidArgument, match=match) as info:
            resolve_inputs(PipelineRequest(model=str(given), budgets=_BUDGET), str(root))
        assert 'torch.export.Dim("batch")' in info.value.message
    for given in (str(scripted), str(disguised), "model.pt"):  # single-stage commands' flags
        args = argparse.Namespace(model=given, weights="", input_shape="4", num_classes=3)
        with pytest.raises(InvalidArgument, match="TorchScript"):
            model_ref_from(args)
    uploads = root / "uploads"
    uploaded = [p for p in uploads.rglob("*") if p.is_file()] if uploads.exists() else []
    assert all(p.name == "static.pt2" for p in uploaded)  # no TorchScript bytes were stored


def test_stage_table_order() -> None:
    """Solver before any quantized training; the uniform fit before its training."""
    names = [stage.name for stage in STAGES]
    assert names[:4] == ["fp32", "sensitivity", "solver", "uniform_fit"]
    assert names.index("best_uniform") > names.index("int4")
    assert all(stage.key is not None for stage in STAGES)


def _comparison(delta: float) -> dict:
    return {"accuracy_delta": delta, "beats": delta > 0}


def test_verdict_lines() -> None:
    assert rep.verdict(_comparison(0.0123), "int4/int4") == (
        "Verdict: mixed precision beats the best uniform fit (uniform INT4) by 1.23 points."
    )
    level = rep.verdict(_comparison(-0.005), "int8/int8")
    assert level.startswith("Verdict: uniform INT8 is as good") and "take the uniform" in level
    assert "no uniform configuration fits" in rep.verdict(None, None)
    assert rep.best_uniform_label("int4/int8") == "best uniform fit (INT4/INT8)"
