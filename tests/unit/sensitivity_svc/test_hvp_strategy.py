"""Hessian-vector products one probe per call, k per call (vmap), or chosen by
measuring both: the same probes and estimates, the cap kept, the choice
reported."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitmesh.errors import InvalidArgument
from sensitivity_svc.analysis import SensitivitySettings, analyse, hvp_plan
from sensitivity_svc.hutchinson import (
    HutchinsonSettings,
    HvpChoice,
    LayerTrace,
    _ProbeChooser,
    estimate_weight_traces,
)
from tests.unit.sensitivity_svc.test_hutchinson import _data, _layers, _small_cnn

pytestmark = pytest.mark.unit


def _traces(
    model: nn.Module, settings: HutchinsonSettings, batches: list[tuple[Tensor, Tensor]]
) -> tuple[list[LayerTrace], HvpChoice]:
    choices: list[HvpChoice] = []
    traces = estimate_weight_traces(
        model, F.cross_entropy, _layers(model), batches, settings, on_choice=choices.append
    )
    assert len(choices) == 1
    return traces, choices[0]


@pytest.mark.parametrize(("probes", "measure"), [(4, False), (3, True)])
def test_batched_probes_give_the_single_probe_estimates(probes: int, measure: bool) -> None:
    """One batch: each layer draws the same probes in the same order, so the
    samples (and the estimates) are those of one probe per call, to rounding."""
    model = _small_cnn(nn.Tanh, seed=0)
    batches = [_data(1)]
    fixed = {"min_samples": 9, "max_samples": 9}
    single, one = _traces(model, HutchinsonSettings(**fixed), batches)
    batched, choice = _traces(
        model,
        HutchinsonSettings(**fixed, probes_per_call=probes, measure_probes=measure),
        batches,
    )
    assert one == HvpChoice(1, {})
    for a, b in zip(single, batched, strict=True):
        assert b.samples == a.samples == 9
        assert b.trace == pytest.approx(a.trace, rel=1e-9)
        assert b.standard_error == pytest.approx(a.standard_error, rel=1e-6)
    if measure:
        assert set(choice.seconds_per_sample) == {1, probes}
        fastest = min(choice.seconds_per_sample, key=choice.seconds_per_sample.__getitem__)
        assert choice.probes_per_call == fastest
    else:
        assert choice == HvpChoice(probes, {})


def test_batched_rounds_never_pass_max_samples() -> None:
    model = _small_cnn(nn.Tanh, seed=2)
    settings = HutchinsonSettings(
        min_samples=2, max_samples=11, target_relative_se=1e-9, probes_per_call=4
    )
    traces, _ = _traces(model, settings, [_data(3, n=6), _data(4, n=6)])
    assert [t.samples for t in traces] == [10, 10, 10, 10]  # 4+4 per round, then 1+1


def test_the_measured_cheaper_way_is_kept() -> None:
    chooser = _ProbeChooser(HutchinsonSettings(probes_per_call=8, measure_probes=True))
    assert chooser.next_round() == 1
    chooser.measured(1, seconds=2.0, samples=10)  # 0.2 s per sample
    assert chooser.next_round() == 8
    chooser.measured(8, seconds=4.0, samples=80)  # 0.05 s per sample
    assert chooser.next_round() == 8
    assert chooser.choice(False) == HvpChoice(8, {1: 0.2, 8: 0.05})
    slower = _ProbeChooser(HutchinsonSettings(probes_per_call=8, measure_probes=True))
    slower.measured(1, seconds=1.0, samples=10)
    slower.measured(8, seconds=16.0, samples=80)
    assert slower.next_round() == 1 and slower.choice(False).probes_per_call == 1


class _Square(torch.autograd.Function):
    """x^2 as a custom Function whose backward reads a value out of the
    gradient (``.item()``), which vmap refuses."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        finite = 1.0 if math.isfinite(grad.sum().item()) else math.nan
        return 2 * x * grad * finite


class _Cube(torch.autograd.Function):
    """x^3 whose backward goes through :class:`_Square`: the second
    derivative then runs a backward that vmap cannot batch, as a user's op
    without batching support would."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return 3 * _Square.apply(x) * grad


class _CubeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.fc1 = nn.Linear(64, 6).double()
        self.fc2 = nn.Linear(6, 4).double()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(_Cube.apply(self.fc1(x.flatten(1))))


def test_an_op_vmap_cannot_batch_falls_back_to_one_probe_per_call() -> None:
    model = _CubeNet()
    batches = [_data(6)]
    fixed = {"min_samples": 6, "max_samples": 6}
    single, _ = _traces(model, HutchinsonSettings(**fixed), batches)
    batched, choice = _traces(model, HutchinsonSettings(**fixed, probes_per_call=3), batches)
    assert choice.fell_back
    assert [b.trace for b in batched] == pytest.approx([a.trace for a in single], rel=1e-9)


def test_the_plan_measures_on_cuda_and_takes_one_probe_on_a_cpu() -> None:
    auto = SensitivitySettings()
    assert hvp_plan(auto, torch.device("cpu")) == (1, False)
    assert hvp_plan(auto, torch.device("cuda", 0)) == (8, True)
    assert hvp_plan(SensitivitySettings(hvp_strategy="batched"), torch.device("cpu")) == (8, False)
    assert hvp_plan(SensitivitySettings(hvp_strategy="single"), torch.device("cuda")) == (1, False)
    with pytest.raises(InvalidArgument, match="hvp strategy must be one of"):
        hvp_plan(SensitivitySettings(hvp_strategy="fast"), torch.device("cpu"))


def test_the_report_says_how_the_products_were_computed() -> None:
    model = _small_cnn(nn.ReLU, seed=7).float()
    x, y = _data(8)
    settings = SensitivitySettings(
        hvp_strategy="measure", hvp_probes_per_call=4, min_samples=10, max_samples=10
    )
    report = analyse(model, [(x.float(), y)], None, ["int8"], settings)
    info = report.estimator
    assert set(info.hvp_seconds_per_sample) == {"1", "4"}
    assert info.hvp_probes_per_call in (1, 4)
    assert info.to_dict()["hvp_probes_per_call"] == info.hvp_probes_per_call
