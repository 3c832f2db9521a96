"""`bitmesh run` on the user's own trained model and image folder, through
the real mesh (a real Redis, a real Celery worker, the four services).

A resnet18 is trained briefly here at 3x32x32 on scikit-learn's digits
rendered as PNGs (accuracy is not the point: the plumbing is), saved as a
state_dict and as a ``.pt2``, and handed to ``bitmesh run`` under a BOPs
budget. Checked: no FP32 training ran and the given model is the teacher,
the budget is met, the best uniform fit is trained and in the report, and
the ONNX export agrees with torch in onnxruntime. Bad input is refused
before anything is queued."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bitmesh.artifacts import sha256_hex
from bitmesh.client import Client
from bitmesh.errors import BitmeshError, InvalidArgument
from bitmesh.formats import parse_option
from bitmesh.pipeline.request import PipelineRequest
from bitmesh.pipeline.run import run_pipeline
from bitmesh.v1 import common_pb2, sensitivity_pb2
from tests.digits_images import write_digits_folder
from tests.integration.trainer.conftest import TrainerMesh

pytestmark = pytest.mark.integration

REDIS_DB = 15
SHAPE = (3, 32, 32)
#: Steps of every stage: enough to exercise it, not to learn.
FEW = {"qat_steps": 2, "proxy_trials": 0, "sensitivity_samples": 10, "sensitivity_subset": 16}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_folder(tmp_path_factory.mktemp("digits-png"), per_class=8)


@pytest.fixture(scope="module")
def trained(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A resnet18 trained for a few steps on the folder: its state_dict and .pt2."""
    import torch
    import torchvision

    from bitmesh.data.datasets import DatasetSpec, load_dataset, make_loader
    from bitmesh.data.normalization import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)
    spec = DatasetSpec(
        "image_folder", path=str(folder), shape=SHAPE, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    model = torchvision.models.resnet18(num_classes=10)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for x, y in make_loader(load_dataset(spec), 40, shuffle=True):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    model.eval()
    out = tmp_path_factory.mktemp("resnet18")
    torch.save(model.state_dict(), out / "resnet18.pt")
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (torch.zeros(2, *SHAPE),), dynamic_shapes=({0: batch},))
    torch.export.save(program, out / "resnet18.pt2")
    return {"weights": out / "resnet18.pt", "program": out / "resnet18.pt2"}


def _budget(client: Client) -> float:
    """Halfway between uniform INT4 and INT8 BOPs: INT4 fits, INT8 does not."""
    from bitmesh.formats import parse_option
    from bitmesh.rpc.convert import option_to_pb

    reply = client.list_layers(
        sensitivity_pb2.ListLayersRequest(
            model=common_pb2.ModelRef(architecture="resnet18", input_shape=SHAPE, num_classes=10),
            options=[option_to_pb(parse_option(k)) for k in ("int4", "int8")],
        )
    )
    int4 = sum(layer.options[0].costs.bops for layer in reply.layers)
    int8 = sum(layer.options[1].costs.bops for layer in reply.layers)
    return (int4 + int8) / 2


def _check_report(report: dict, budget: float, teacher_sha: str, out: Path) -> None:
    fp32 = report["stages"]["fp32"]
    assert fp32["trained"] is False and fp32["steps_done"] == 0
    assert fp32["kind"] == "calibration"  # an evaluation job: no optimiser step
    assert report["teacher"] == {
        "given": True,
        "weights_sha256": teacher_sha,
        "text": "the given model",
    }
    result = report["result"]
    assert result["meets_budget"] and result["costs"]["bops"] <= budget * (1 + 1e-9)
    best = report["best_uniform"]
    int4, int8 = parse_option("int4").key, parse_option("int8").key
    assert best["option"] == int4 and not best["fits"][int8]["fits"]
    assert report["stages"]["best_uniform"]["reused_from"] == "int4"
    assert "vs_best_uniform" in report["comparisons"]
    summary = (out / "summary.md").read_text()
    assert "best uniform fit (INT4)" in summary
    assert summary.strip().splitlines()[-1].startswith("Verdict: ")
    assert "model.onnx size:" in summary
    verify = report["onnx"]["verify"]
    assert verify["onnxruntime_ok"] and verify["agreement"] >= 0.99, verify


def _quantized_jobs_distil_from(mesh: TrainerMesh, report: dict, path_sha: str) -> None:
    """Every QAT job started from, and distilled from, the given model's bytes."""
    store = mesh.store()
    for stage in ("int8", "int4", "lcpaq"):
        record = store.get(report["stages"][stage]["job_id"])
        model = record.request["model"]
        weights = model.get("weights_path") or ""
        program = model["name_or_path"] if model["source"] == "exported_program" else ""
        assert sha256_hex(Path(weights or program).read_bytes()) == path_sha, stage
        assert record.request["spec"]["distillation"]["enabled"]


def test_pretrained_resnet18_from_a_state_dict(
    client: Client,
    mesh: TrainerMesh,
    folder: Path,
    trained: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bitmesh.cli.main import main

    budget = _budget(client)
    monkeypatch.setenv("BITMESH_ARTIFACT_ROOT", client.settings.artifact_root)
    argv = ["run", "--model", "resnet18", "--weights", str(trained["weights"]), "--input-shape"]
    argv += [",".join(map(str, SHAPE))]
    argv += ["--dataset", f"folder:{folder}", "--max-bops", f"{budget:.0f}", "--out", str(tmp_path)]
    argv += ["--qat-steps", "2", "--proxy-trials", "0", "--sensitivity-samples", "10"]
    argv += ["--sensitivity-subset", "16"]
    for service, address in client.addresses.items():
        argv += ["--address", f"{service}={address}"]
    assert main(argv) == 0
    assert "Verdict:" in capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    sha = sha256_hex(trained["weights"].read_bytes())
    _check_report(report, budget, sha, tmp_path)
    _quantized_jobs_distil_from(mesh, report, sha)
    assert report["resolved"]["input_shape"] == list(SHAPE)
    assert report["resolved"]["num_classes"] == 10
    print("\nPRETRAINED", json.dumps({"timings": report["timings"], "trained": report["trained"]}))


def test_pretrained_resnet18_from_a_program_file(
    client: Client, mesh: TrainerMesh, folder: Path, trained: dict[str, Path], tmp_path: Path
) -> None:
    budget = _budget(client)
    request = PipelineRequest(
        model=str(trained["program"]),
        dataset=f"folder:{folder}",
        budgets={"max_bops": budget},
        **FEW,  # type: ignore[arg-type]
    )
    report = run_pipeline(client, request, tmp_path)
    sha = sha256_hex(trained["program"].read_bytes())
    _check_report(report, budget, sha, tmp_path)
    _quantized_jobs_distil_from(mesh, report, sha)
    assert report["resolved"]["input_shape"] == list(SHAPE)  # from the program's example


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "resnet34"}, r"do not match the model \(missing keys: layer1\.2\.conv1\.weight"),
        ({"num_classes": 7}, r"dataset has 10 classes but the model has 7 outputs"),
        (
            {"dataset": "synthetic", "data_classes": 7},  # 7 classes: the weights have 10
            r"shape mismatches: fc\.weight \(file \(10, 512\), model \(7, 512\)",
        ),
        ({"model": "resnet81"}, r"unknown architecture 'resnet81'.*did you mean .*resnet18"),
        ({"input_shape": (1, 32, 32)}, r"input shape \(1, 32, 32\) does not fit the model"),
    ],
)
def test_bad_input_is_refused_before_anything_is_queued(
    client: Client,
    folder: Path,
    trained: dict[str, Path],
    tmp_path: Path,
    change: dict,
    message: str,
) -> None:
    before = len(client.list_training().jobs)
    fields = {
        "model": "resnet18",
        "weights": str(trained["weights"]),
        "input_shape": SHAPE,
        "dataset": f"folder:{folder}",
        "budgets": {"max_bops": 1e9},
        **FEW,
    }
    with pytest.raises(InvalidArgument, match=message):
        run_pipeline(client, PipelineRequest(**(fields | change)), tmp_path)  # type: ignore[arg-type]
    assert len(client.list_training().jobs) == before


def test_a_folder_with_a_file_that_is_not_an_image(
    client: Client, folder: Path, tmp_path: Path
) -> None:
    import shutil

    broken = tmp_path / "data"
    shutil.copytree(folder, broken)
    (broken / "train" / "3" / "notes.txt").write_text("not an image")
    request = PipelineRequest(
        model="resnet18", input_shape=SHAPE, dataset=f"folder:{broken}", budgets={"max_bops": 1e9}
    )
    before = len(client.list_training().jobs)
    with pytest.raises(BitmeshError, match=r"not images \(3/notes\.txt\)"):
        run_pipeline(client, request, tmp_path / "out")
    assert len(client.list_training().jobs) == before
