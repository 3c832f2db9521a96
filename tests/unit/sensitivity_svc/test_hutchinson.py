"""Hutchinson per-layer traces against exact Hessian blocks, error bars,
control variate, stopping, progress and cancellation."""

from __future__ import annotations

import itertools
import math
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitmesh.errors import Cancelled, FailedPrecondition, InvalidArgument
from sensitivity_svc.hutchinson import (
    HutchinsonSettings,
    LayerTrace,
    NystromControlVariate,
    Samples,
    estimate_activation_traces,
    estimate_weight_traces,
    rademacher_,
    sketch_rank,
    weighted_mean_se,
)

pytestmark = pytest.mark.unit


def _small_cnn(activation: type[nn.Module], seed: int) -> nn.Sequential:
    """Four layers (27, 108, 512 and 32 weights), float64 so the exact
    Hessian is exact to rounding. BatchNorm checks that eval mode is used."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        activation(),
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        activation(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 8),
        activation(),
        nn.Linear(8, 4),
    ).double()
    bn = model[1]
    assert isinstance(bn, nn.BatchNorm2d)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return model


def _layers(model: nn.Module) -> list[tuple[str, Tensor]]:
    return [
        (name, module.weight)
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
    ]


def _data(seed: int, n: int = 12) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 4, (n,), generator=generator)
    return x, y


def _exact_traces(
    model: nn.Module, layers: list[tuple[str, Tensor]], batches: list[tuple[Tensor, Tensor]]
) -> list[float]:
    """Tr of each weight's Hessian block from the full block (eval mode),
    averaged over the batches."""
    model.eval()
    traces = []
    for name, weight in layers:
        total = 0.0
        for x, y in batches:

            def loss_of(w: Tensor, x: Tensor = x, y: Tensor = y, name: str = name) -> Tensor:
                outputs = torch.func.functional_call(model, {f"{name}.weight": w}, (x,))
                return F.cross_entropy(outputs, y)

            block = torch.autograd.functional.hessian(loss_of, weight.detach())
            total += float(block.reshape(weight.numel(), weight.numel()).trace())
        traces.append(total / len(batches))
    return traces


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh])
def test_traces_match_exact_blocks_with_honest_error_bars(activation: type[nn.Module]) -> None:
    # ReLU blocks are positive semi-definite and low-rank (the control variate
    # works); tanh blocks are indefinite (the estimator must stay honest anyway).
    z_scores = []
    for model_seed in range(2):
        model = _small_cnn(activation, model_seed)
        layers = _layers(model)
        batch = _data(100 + model_seed)
        exact = _exact_traces(model, layers, [batch])
        model.train()  # the estimator must switch to eval mode itself
        for seed in range(6):
            settings = HutchinsonSettings(seed=seed)
            results = estimate_weight_traces(model, F.cross_entropy, layers, [batch], settings)
            assert model.training, "the caller's mode must be restored"
            for result, truth in zip(results, exact, strict=True):
                assert result.done
                assert result.samples >= settings.min_samples
                assert result.standard_error > 0
                z_scores.append((result.trace - truth) / result.standard_error)
    z = np.abs(np.array(z_scores))
    assert z.max() < 3.0, f"a trace is {z.max():.2f} standard errors from the exact value"
    coverage = float((z < 1.96).mean())
    assert coverage >= 0.9, f"the 95 % intervals held the exact trace only {coverage:.0%}"


def test_several_batches_estimate_the_average_hessian() -> None:
    model = _small_cnn(nn.ReLU, 3)
    layers = _layers(model)
    batches = [_data(7), _data(8), _data(9, n=5)]
    exact = _exact_traces(model, layers, batches)
    per_batch = [_exact_traces(model, layers, [b]) for b in batches]
    for seed in range(3):
        results = estimate_weight_traces(
            model, F.cross_entropy, layers, batches, HutchinsonSettings(seed=seed)
        )
        for i, (result, truth) in enumerate(zip(results, exact, strict=True)):
            assert abs(result.trace - truth) < 3 * result.standard_error
            assert result.samples % len(batches) == 0, "each batch gets the same share"
            # Not the trace of any single batch: the batches really differ.
            assert min(abs(p[i] - truth) for p in per_batch) > 0


def test_results_are_reproducible_and_depend_on_the_seed() -> None:
    model = _small_cnn(nn.ReLU, 0)
    layers = _layers(model)
    batch = _data(1)
    first = estimate_weight_traces(model, F.cross_entropy, layers, [batch], HutchinsonSettings())
    again = estimate_weight_traces(model, F.cross_entropy, layers, [batch], HutchinsonSettings())
    other = estimate_weight_traces(
        model, F.cross_entropy, layers, [batch], HutchinsonSettings(seed=1)
    )
    assert first == again
    assert [r.trace for r in first] != [r.trace for r in other]
    # A layer's probes do not depend on the other layers: alone, same answer.
    alone = estimate_weight_traces(model, F.cross_entropy, layers[:1], [batch])
    assert alone[0] == first[0]
    # Nor on how many run at once.
    for workers in (1, 3):
        settings = HutchinsonSettings(workers=workers)
        assert estimate_weight_traces(model, F.cross_entropy, layers, [batch], settings) == first


def test_stopping_rule_min_samples_and_cap() -> None:
    model = _small_cnn(nn.Tanh, 0)
    layers = _layers(model)
    batch = _data(2)
    loose = HutchinsonSettings(target_relative_se=10.0, min_samples=7, max_samples=50)
    for result in estimate_weight_traces(model, F.cross_entropy, layers, [batch], loose):
        assert result.samples == 7
    strict = HutchinsonSettings(target_relative_se=1e-9, min_samples=5, max_samples=23)
    for result in estimate_weight_traces(model, F.cross_entropy, layers, [batch], strict):
        assert result.samples == 23
        assert result.relative_se > 1e-9
    # With two batches the count stays even: 22 (the cap, 23, is not reachable).
    two = estimate_weight_traces(model, F.cross_entropy, layers, [batch, _data(3)], strict)
    assert {r.samples for r in two} == {22}


def test_target_is_met_when_not_capped() -> None:
    model = _small_cnn(nn.ReLU, 1)
    layers = _layers(model)
    settings = HutchinsonSettings(target_relative_se=0.05, max_samples=2000)
    for result in estimate_weight_traces(model, F.cross_entropy, layers, [_data(4)], settings):
        assert result.relative_se <= 0.05
        assert result.samples < 2000


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_reports_running_estimates_and_cancel_stops(workers: int) -> None:
    model = _small_cnn(nn.ReLU, 0)
    layers = _layers(model)
    seen: list[LayerTrace] = []
    estimate_weight_traces(
        model,
        F.cross_entropy,
        layers,
        [_data(5)],
        HutchinsonSettings(workers=workers),
        progress=seen.append,
    )
    names = {name for name, _ in layers}
    assert {e.name for e in seen} == names
    for name in names:
        mine = [e for e in seen if e.name == name]
        assert [e.samples for e in mine if not e.done] == list(range(2, mine[-1].samples + 1))
        assert mine[-1].done and all(not e.done for e in mine[:-1])
        assert all(math.isfinite(e.standard_error) and e.standard_error > 0 for e in mine)

    flag = threading.Event()
    calls = 0

    def stop_after_ten(estimate: LayerTrace) -> None:
        nonlocal calls
        calls += 1
        if calls == 10:
            flag.set()

    with pytest.raises(Cancelled):
        estimate_weight_traces(
            model,
            F.cross_entropy,
            layers,
            [_data(5)],
            HutchinsonSettings(workers=workers),
            progress=stop_after_ten,
            cancel=flag,
        )
    assert calls == 10, "nothing may be reported once the flag is set"


def test_zero_curvature_layer_is_exactly_zero() -> None:
    # The loss is linear in the last layer's weight: its Hessian block is 0.
    model = _small_cnn(nn.ReLU, 0)
    layers = _layers(model)
    result = estimate_weight_traces(
        model, lambda out, y: out.sum() / len(y), layers[-1:], [_data(6)], HutchinsonSettings()
    )[0]
    assert result.trace == 0.0 and result.standard_error == 0.0
    assert result.samples == HutchinsonSettings().min_samples


def test_frozen_weights_are_measured_and_stay_frozen() -> None:
    model = _small_cnn(nn.ReLU, 0)
    for p in model.parameters():
        p.requires_grad_(False)
    layers = _layers(model)
    batch = _data(5)
    exact = _exact_traces(model, layers, [batch])
    results = estimate_weight_traces(model, F.cross_entropy, layers, [batch])
    assert all(abs(r.trace - t) < 3 * r.standard_error for r, t in zip(results, exact, strict=True))
    assert not any(p.requires_grad for p in model.parameters())


def test_bad_inputs_are_clear_errors() -> None:
    model = _small_cnn(nn.ReLU, 0)
    layers = _layers(model)
    batch = _data(5)
    with pytest.raises(InvalidArgument, match="no quantizable layers"):
        estimate_weight_traces(model, F.cross_entropy, [], [batch])
    with pytest.raises(InvalidArgument, match="at least one batch"):
        estimate_weight_traces(model, F.cross_entropy, layers, [])
    with pytest.raises(InvalidArgument, match="batches but at most"):
        estimate_weight_traces(
            model,
            F.cross_entropy,
            layers,
            [batch] * 5,
            HutchinsonSettings(max_samples=4, min_samples=2),
        )
    with pytest.raises(InvalidArgument, match="scalar"):
        estimate_weight_traces(
            model, lambda o, y: F.cross_entropy(o, y, reduction="none"), layers, [batch]
        )
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = math.inf
    with pytest.raises(FailedPrecondition, match="non-finite"):
        estimate_weight_traces(model, F.cross_entropy, layers, [batch])
    for bad in (
        {"target_relative_se": 0.0},
        {"min_samples": 1},
        {"max_samples": 5, "min_samples": 10},
        {"sketch_size": -1},
        {"seed": -3},
        {"workers": 0},
    ):
        with pytest.raises(InvalidArgument):
            HutchinsonSettings(**bad)  # type: ignore[arg-type]


def test_weighted_mean_se_by_hand() -> None:
    # Equal weights: the usual stratified mean and pooled within-batch SE.
    values = [[1.0, 3.0, 2.0], [10.0, 14.0, 12.0]]
    ones = [[1.0] * 3, [1.0] * 3]
    bounds = [[4.0, 4.0, 4.0], [9.0, 9.0, 9.0]]
    estimate, spread_se, bound_se = weighted_mean_se(Samples(values, ones, bounds))
    assert estimate == pytest.approx((2.0 + 12.0) / 2)
    pooled = (1 + 1 + 0 + 4 + 4 + 0) / (6 - 2)
    assert spread_se == pytest.approx(math.sqrt(pooled * (1 / 3 + 1 / 3)) / 2)
    assert bound_se == pytest.approx(math.sqrt(4.0 / 3 + 9.0 / 3) / 2)
    one = [2.0, 4.0, 9.0]
    _, spread_se, _ = weighted_mean_se(Samples([one], [[1.0] * 3], [[0.0] * 3]))
    assert spread_se == pytest.approx(np.std(one, ddof=1) / math.sqrt(3))
    # Weights: a weighted mean, and each sample's share squared in the SEs.
    estimate, spread_se, bound_se = weighted_mean_se(
        Samples([[1.0, 4.0]], [[1.0, 2.0]], [[3.0, 6.0]])
    )
    assert estimate == pytest.approx((1.0 + 8.0) / 3)
    assert bound_se == pytest.approx(math.sqrt(3.0 / 9 + 4 * 6.0 / 9))
    residual = (1 / 9) * (1.0 - 3.0) ** 2 + (4 / 9) * (4.0 - 3.0) ** 2
    assert spread_se == pytest.approx(math.sqrt(residual * 2 / (2 - 1)))
    with pytest.raises(ValueError):
        weighted_mean_se(Samples([[1.0], []], [[1.0], []], [[1.0], []]))


def _observe(control: NystromControlVariate, v: Tensor, hv: Tensor) -> tuple[float, float]:
    return control.observe(torch.stack((v, hv)), float(v @ hv), float(hv @ hv))


def _all_probes(dim: int) -> list[Tensor]:
    return [
        torch.tensor(signs, dtype=torch.float64)
        for signs in itertools.product((-1.0, 1.0), repeat=dim)
    ]


def test_control_variate_correction_has_mean_zero_for_any_matrix() -> None:
    # Exact expectation over all 2^6 Rademacher vectors, for an indefinite H.
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    h = a + a.T
    control = NystromControlVariate(capacity=3)
    probes = [torch.randint(0, 2, (6,), generator=generator).double() * 2 - 1 for _ in range(3)]
    for s in probes:
        _observe(control, s, h @ s)
    assert control.rank == 3  # full: observing more leaves it unchanged
    sketch = torch.stack(probes, dim=1)  # 6 x 3
    products = h @ sketch
    h_hat = products @ torch.linalg.pinv(sketch.T @ h @ sketch) @ products.T
    assert control.trace == pytest.approx(float(torch.trace(h_hat)), rel=1e-9)
    corrections = []
    for v in _all_probes(6):
        correction, residual_sq = _observe(control, v, h @ v)
        corrections.append(correction)
        assert correction == pytest.approx(float(v @ h_hat @ v - torch.trace(h_hat)), abs=1e-9)
        # ||(H - H_hat) v||^2, expanded without forming H_hat v.
        assert residual_sq == pytest.approx(float(((h - h_hat) @ v).square().sum()), rel=1e-9)
    assert control.rank == 3
    assert abs(float(np.mean(corrections))) < 1e-10


def test_control_variate_is_exact_for_low_rank_psd_blocks() -> None:
    # Nystrom is exact once it has seen rank(H) generic probes: every later
    # corrected sample equals Tr(H) whatever the probe.
    generator = torch.Generator().manual_seed(1)
    u = torch.randn(40, 2, generator=generator, dtype=torch.float64)
    h = u @ u.T
    control = NystromControlVariate(capacity=4)
    values = []
    for _ in range(8):
        v = torch.randint(0, 2, (40,), generator=generator).double() * 2 - 1
        rank_before = control.rank
        correction, residual_sq = _observe(control, v, h @ v)
        if rank_before >= 2:
            values.append(float(v @ h @ v) - correction)
            assert residual_sq == pytest.approx(0.0, abs=1e-9)
    assert values and np.allclose(values, float(torch.trace(h)), rtol=1e-9)


def test_rademacher_probes_are_fair_signs_and_seeded() -> None:
    out = torch.empty(100_003)
    first = rademacher_(out, torch.Generator().manual_seed(3)).clone()
    assert set(first.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(first.mean())) < 4 / math.sqrt(first.numel())  # 4 sigma
    # Neighbouring entries (bits of one byte) are uncorrelated.
    assert abs(float((first[:-1] * first[1:]).mean())) < 4 / math.sqrt(first.numel())
    again = rademacher_(torch.empty(100_003), torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    other = rademacher_(torch.empty(100_003), torch.Generator().manual_seed(4))
    assert not torch.equal(first, other)


def test_sketch_rank_respects_the_budget() -> None:
    settings = HutchinsonSettings(sketch_size=16, sketch_budget=1000)
    assert sketch_rank(10, settings) == 16
    assert sketch_rank(300, settings) == 3
    assert sketch_rank(5000, settings) == 0
    assert sketch_rank(10, HutchinsonSettings(sketch_size=0)) == 0
    assert sketch_rank(300, settings, batches=3) == 1  # the batches share the budget


def test_activation_traces_match_exact_input_hessians() -> None:
    model = _small_cnn(nn.Tanh, 0).eval()
    x, y = _data(11, n=6)
    # Layer model[6] (Linear 64 -> 8) sees flatten(...) of model[:6]; its
    # input Hessian of the mean loss, times the batch size, is the mean
    # per-sample trace the estimator reports.
    with torch.no_grad():
        a = model[:6](x)
    block = torch.autograd.functional.hessian(lambda t: F.cross_entropy(model[6:](t), y), a)
    exact = float(block.reshape(a.numel(), a.numel()).trace()) * len(y)
    results = [
        estimate_activation_traces(
            model, F.cross_entropy, [("6", model[6])], [(x, y)], HutchinsonSettings(seed=s)
        )[0]
        for s in range(4)
    ]
    for result in results:
        assert abs(result.trace - exact) < 3 * result.standard_error
    # The first layer's input is the data itself: it still gets a trace.
    first = estimate_activation_traces(model, F.cross_entropy, [("0", model[0])], [(x, y)])
    assert math.isfinite(first[0].trace) and first[0].standard_error > 0
