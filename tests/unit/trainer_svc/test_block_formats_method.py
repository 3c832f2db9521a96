"""The whole method on block-scaled formats, on digits (issue 18's search test).

An LCPAQ solve (sensitivity table -> solver problem -> ILP) and a FLIQS
one-shot search over a space with MXFP4, NVFP4 and INT4-g32 meet their size
budgets with every scale counted; QAT and calibration run on the formats.
Few steps: this checks the plumbing and the budgets, not accuracy. digits_cnn's
layers have 1, 16 and 32 input channels, so partial blocks occur.
"""

from __future__ import annotations

import math

import pytest
import torch

from bitmesh.data.datasets import DatasetSpec, load_dataset
from bitmesh.formats import get_format, parse_option
from bitmesh.models.digits_cnn import DigitsCNN
from bitmesh.models.loading import ModelSpec
from bitmesh.pipeline.stages import problem_from
from sensitivity_svc.analysis import SensitivitySettings, analyse
from solver_svc.convert import problem_from_pb
from solver_svc.solve import ProblemSolver
from solver_svc.spec import Budgets
from trainer_svc.execute import execute
from trainer_svc.specs import (
    CalibrationSpec,
    QatSpec,
    SearchSpec,
    TrainingRequest,
    TrainingSettings,
)
from trainer_svc.workspace import search_weight_bytes, validate

pytestmark = pytest.mark.unit

MODEL = ModelSpec(source="architecture", name_or_path="digits_cnn", input_shape=(1, 8, 8))
DATA = DatasetSpec(kind="digits")
SPACE = ("mxfp4", "nvfp4", "int4_g32", "int8")


def conv_and_linear_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: module.weight.detach()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear)
    }


def direct_bytes(weights: dict[str, torch.Tensor], config: dict[str, str]) -> float:
    """Codes + every scale of ``config``, counted from the weights' shapes."""
    total = 0.0
    for name, key in config.items():
        w = weights[name]
        fmt = parse_option(key).weight
        rows = w.numel() // w.shape[1]
        if fmt.block is None:  # per-channel INT: one FP32 scale per output channel
            total += w.numel() * fmt.bits / 8 + 4 * w.shape[0]
            continue
        blocks = rows * math.ceil(w.shape[1] / fmt.block.block_size)
        scale = {"mxfp4": 1, "nvfp4": 1, "int4_g32": 2}[fmt.name]
        total += w.numel() * fmt.bits / 8 + blocks * scale + (4 if fmt.name == "nvfp4" else 0)
    return total


def test_lcpaq_solve_meets_the_size_budget_with_scales() -> None:
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    x, y = load_dataset(DatasetSpec(kind="digits", split="train")).tensors  # type: ignore[attr-defined]
    report = analyse(
        model,
        [(x[:128], y[:128])],
        None,
        list(SPACE),
        SensitivitySettings(max_samples=4, min_samples=2),
    )
    table = {
        "layers": [
            {
                "name": e.name,
                "parameters": e.parameters,
                "options": {
                    p.option_key: {
                        "omega": p.omega,
                        "costs": {
                            "size_bytes": p.costs.size_bytes,
                            "bops": p.costs.bops,
                            "latency_ms": p.costs.latency_ms,
                            "scale_bytes": p.costs.scale_bytes,
                        },
                        "weight_bits": parse_option(p.option_key).weight_bits,
                    }
                    for p in e.perturbations
                },
            }
            for e in report.layers
        ]
    }
    weights = conv_and_linear_weights(model)
    uniform_mx = direct_bytes(weights, {name: "mxfp4/mxfp4" for name in weights})
    uniform_g32 = direct_bytes(weights, {name: "int4_g32/int4_g32" for name in weights})
    budget = (uniform_mx + uniform_g32) / 2
    counted = ProblemSolver(problem_from_pb(problem_from(table, "digits"))).solve(
        Budgets(size_bytes=budget)
    )
    chosen = dict(counted.assignment)
    assert counted.totals.size_accounting == "weights_and_scales"
    assert counted.totals.total_bytes <= budget
    assert direct_bytes(weights, chosen) == pytest.approx(counted.totals.total_bytes)
    assert {parse_option(k).weight.name for k in chosen.values()} <= set(SPACE)
    # The same limit on the codes alone buys more than the budget allows.
    codes_only = ProblemSolver(
        problem_from_pb(problem_from(table, "digits", "weights_only"))
    ).solve(Budgets(size_bytes=budget))
    assert codes_only.totals.size_bytes <= budget < codes_only.totals.total_bytes
    assert direct_bytes(weights, dict(codes_only.assignment)) > budget


def test_one_shot_search_meets_the_size_budget_with_scales() -> None:
    spec = SearchSpec(
        formats=tuple(get_format(n) for n in SPACE),
        axis="size",
        target_option=parse_option("nvfp4"),
        one_sided=True,
        cost_beta=20.0,
        warmup_fraction=0.0,
        policy_learning_rate=0.5,
    )
    request = TrainingRequest("search", MODEL, DATA, spec, TrainingSettings(steps=30))
    ws = validate(request)
    weights = conv_and_linear_weights(ws.model)
    # The target is uniform NVFP4 with its block and tensor scales.
    assert direct_bytes(weights, {n: "nvfp4" for n in weights}) == 11400 + 1560 + 5 * 4
    outcome = execute(request)
    assert outcome.target == 11400 + 1560 + 5 * 4
    costs = outcome.evaluation.costs
    assert costs.total_bytes <= outcome.target
    config = {name: option.key for name, option in outcome.config.items()}
    assert direct_bytes(weights, config) == costs.total_bytes
    # The controller priced each layer's formats with their scales.
    table = search_weight_bytes(ws.layers, spec)
    assert table["conv1"] == [16 * 9 * 0.5 + 16 * 9, 72 + 144 + 4, 72 + 288, 144 + 64]


def test_qat_and_calibration_run_on_block_formats() -> None:
    config = {"conv1": "int4_g32_zp/int8", "conv2": "mxfp4", "conv3": "nvfp4/nvfp4"}
    config |= {"fc1": "mxfp8_e4m3", "fc2": "int8_g64/mxint8"}
    options = {k: parse_option(v) for k, v in config.items()}
    qat = execute(
        TrainingRequest("qat", MODEL, DATA, QatSpec(config=options), TrainingSettings(steps=8))
    )
    assert {k: v.key for k, v in qat.config.items()} == {
        k: parse_option(v).key for k, v in config.items()
    }
    assert math.isfinite(qat.evaluation.loss)
    calibrated = execute(
        TrainingRequest("calibration", MODEL, DATA, CalibrationSpec(config=options))
    )
    assert math.isfinite(calibrated.evaluation.loss)
    assert calibrated.evaluation.costs.scale_bytes > 0
