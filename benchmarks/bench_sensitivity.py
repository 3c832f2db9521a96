"""Sensitivity benchmark: bitmesh's per-layer Hutchinson against a PyHessian-style loop.

Model and data: torchvision resnet18, random init (seed 0), 10 classes, eval
mode; one batch of 32 x 3x32x32 (and 8 x 3x224x224 for the per-sample cost).
Loss: cross-entropy. Everything runs in this one process on the same model and
batch.

Baseline ("PyHessian-style"): for each layer on its own, PyHessian's trace
loop (one Rademacher probe per sample, double backward, its stopping rule:
stop when the running mean moves by less than tol=1e-3 relative, at most
maxIter=100 samples) with a fresh gradient graph per sample (no reuse). It is
given the cheapest such loop: the gradient and the HVP are taken with
respect to that layer's weight only, so autograd walks only the part of the
graph it needs (PyHessian itself differentiates every parameter). Its
stopping test uses |mean| (the 0.1 release divides by the signed mean).

bitmesh: ``estimate_weight_traces`` with its defaults (target relative
standard error 5 %, at most 200 samples, per-layer stopping, one gradient
graph reused, the Nystrom control variate).

"Equal per-layer standard error": both sides' standard errors use the same
rule (max of the sample SE and the Frobenius bound sqrt(2 mean ||Hv||^2 / n),
see ``sensitivity_svc/hutchinson.py``). The baseline's per-sample spread and
per-sample time per layer are measured from its run; the time it needs for
bitmesh's per-layer standard error is time_per_sample x
max(10, (sd / se_bitmesh)^2), summed over layers. That is compared with
bitmesh's measured time (mean of a run before and a run after the baseline,
since other processes share this machine). The baseline's own-rule time and
errors are printed too.

Per-sample cost: one probe on every layer (21 HVPs on one reused graph plus
the control variate's arithmetic) at 8 x 3x224x224, as a multiple of one
forward+backward pass at that batch.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_sensitivity.py [--quick]``.
The last line is ``RESULT speedup_vs_pyhessian=<x> sample_cost_x_fwdbwd=<y>``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sensitivity_svc.hutchinson import (  # noqa: E402
    HutchinsonSettings,
    LayerTrace,
    estimate_weight_traces,
)

MIN_SAMPLES = 10


@dataclass(frozen=True)
class BaselineLayer:
    name: str
    samples: int
    seconds: float
    mean: float
    sd: float  # per-sample spread under the shared SE rule (sample sd vs Frobenius bound)
    se: float


def _resnet18(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=10).eval()


def _batch(size: int, side: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 3, side, side, generator=generator)
    y = torch.randint(0, 10, (size,), generator=generator)
    return x, y


def _layers(model: nn.Module) -> list[tuple[str, Tensor]]:
    return [
        (name, module.weight)
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
    ]


def _timed(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def fwd_bwd_seconds(model: nn.Module, x: Tensor, y: Tensor, repeats: int = 5) -> float:
    """Median of one forward+backward (all parameters), after a warm-up."""

    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    step()
    seconds = statistics.median(_timed(step, repeats))
    model.zero_grad(set_to_none=True)
    return seconds


def pyhessian_layer(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    name: str,
    weight: Tensor,
    seed: int,
    max_iter: int = 100,
    tol: float = 1e-3,
) -> BaselineLayer:
    """PyHessian's ``trace()`` loop for one layer, with a fresh graph per sample."""
    generator = torch.Generator().manual_seed(seed)
    values: list[float] = []
    frobenius: list[float] = []
    trace = 0.0
    start = time.perf_counter()
    for _ in range(max_iter):
        v = torch.randint(0, 2, weight.shape, generator=generator, dtype=weight.dtype)
        v.mul_(2.0).sub_(1.0)
        loss = F.cross_entropy(model(x), y)
        (gradient,) = torch.autograd.grad(loss, weight, create_graph=True)
        (hv,) = torch.autograd.grad(gradient, weight, grad_outputs=v)
        values.append(float((hv * v).sum()))
        frobenius.append(float(hv.square().sum()))
        mean = float(np.mean(values))
        if abs(mean - trace) / (abs(trace) + 1e-6) < tol:
            break
        trace = mean
    seconds = time.perf_counter() - start
    n = len(values)
    sample_sd = float(np.std(values, ddof=1)) if n > 1 else math.inf
    sd = max(sample_sd, math.sqrt(2.0 * float(np.mean(frobenius))))
    return BaselineLayer(name, n, seconds, float(np.mean(values)), sd, sd / math.sqrt(n))


def run_bitmesh(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, list[LayerTrace]]:
    start = time.perf_counter()
    results = estimate_weight_traces(
        model, F.cross_entropy, _layers(model), [(x, y)], HutchinsonSettings(seed=0)
    )
    return time.perf_counter() - start, results


def per_sample_seconds(model: nn.Module, x: Tensor, y: Tensor, samples: int) -> float:
    """Seconds per sample (one probe per layer) on one reused graph: a run of
    ``samples`` samples minus the graph build, measured apart."""
    weights = [w for _, w in _layers(model)]

    def build() -> None:
        loss = F.cross_entropy(model(x), y)
        torch.autograd.grad(loss, weights, create_graph=True)

    build()
    graph = min(_timed(build, 2))
    settings = HutchinsonSettings(min_samples=samples, max_samples=samples, seed=1)
    start = time.perf_counter()
    estimate_weight_traces(model, F.cross_entropy, _layers(model), [(x, y)], settings)
    total = time.perf_counter() - start
    return (total - graph) / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer baseline samples (smoke)")
    args = parser.parse_args()
    max_iter = 20 if args.quick else 100
    began = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    model = _resnet18()
    x, y = _batch(32, 32)
    layers = _layers(model)
    fwd_bwd = fwd_bwd_seconds(model, x, y)
    print(f"resnet18 32x3x32x32: forward+backward {fwd_bwd * 1e3:.1f} ms")

    ours_before, results = run_bitmesh(model, x, y)
    print(f"bitmesh run 1: {ours_before:.1f} s, {sum(r.samples for r in results)} samples")

    baseline = []
    for i, (name, weight) in enumerate(layers):
        baseline.append(pyhessian_layer(model, x, y, name, weight, seed=i, max_iter=max_iter))
    baseline_own = sum(b.seconds for b in baseline)

    ours_after, results_again = run_bitmesh(model, x, y)
    assert [r.trace for r in results] == [r.trace for r in results_again], "not reproducible"
    ours = (ours_before + ours_after) / 2
    print(f"bitmesh run 2: {ours_after:.1f} s (mean {ours:.1f} s)")

    print(
        f"\n{'layer':24s} {'bitmesh':>28s} {'PyHessian-style (own rule)':>34s}"
        f" {'baseline n for equal SE':>24s}"
    )
    baseline_equal = 0.0
    for result, base in zip(results, baseline, strict=True):
        needed = max(MIN_SAMPLES, (base.sd / result.standard_error) ** 2)
        baseline_equal += base.seconds / base.samples * needed
        print(
            f"{result.name:24s} {result.trace:9.3f} rse {result.relative_se:5.3f} n {result.samples:3d}"
            f"   {base.mean:9.3f} rse {base.se / abs(base.mean):5.3f} n {base.samples:3d}"
            f" {base.seconds / base.samples * 1e3:6.0f} ms/s {needed:10.0f}"
        )
    base_rse = [b.se / abs(b.mean) for b in baseline]
    print(
        f"\nbaseline, own rule: {baseline_own:.1f} s, {sum(b.samples for b in baseline)} samples, "
        f"relative SE median {statistics.median(base_rse):.3f}, max {max(base_rse):.3f} "
        f"({sum(r > 0.05 for r in base_rse)} of {len(base_rse)} layers above 5 %)"
    )
    print(
        f"bitmesh: {ours:.1f} s ({ours / fwd_bwd:.0f} fwd+bwd), every layer at relative SE "
        f"<= 5 % or its cap; max {max(r.relative_se for r in results):.3f}"
    )
    speedup = baseline_equal / ours
    print(
        f"baseline time for bitmesh's per-layer SE: {baseline_equal:.1f} s -> speedup {speedup:.1f}x"
        f" (own-rule time / bitmesh time: {baseline_own / ours:.1f}x)"
    )

    big = _resnet18()
    x224, y224 = _batch(8, 224)
    fwd_bwd_224 = fwd_bwd_seconds(big, x224, y224, repeats=3)
    per_sample = per_sample_seconds(big, x224, y224, samples=2 if args.quick else 3)
    cost = per_sample / fwd_bwd_224
    print(
        f"\nresnet18 8x3x224x224: forward+backward {fwd_bwd_224:.3f} s; one sample of all "
        f"{len(layers)} layers {per_sample:.2f} s = {cost:.1f}x forward+backward"
    )
    print(f"total benchmark time {time.perf_counter() - began:.0f} s")
    print(f"RESULT speedup_vs_pyhessian={speedup:.2f} sample_cost_x_fwdbwd={cost:.2f}")


if __name__ == "__main__":
    main()
