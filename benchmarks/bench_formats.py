"""Block-scaled formats: fake-quantization throughput and weight error on ResNet-18.

Workload: every Conv2d/Linear weight of torchvision resnet18 (random init,
seed 0, 1000 classes; 21 tensors, 11.7M weights; nothing downloaded), fake
quantized whole, without gradient, as the sensitivity service does for Omega
and a QAT step does for its forward pass.

Baseline: a plain per-channel INT4 fake quantizer written here in the
textbook form (``s = amax / 7``; ``clamp(round(w / s), -8, 7) * s``, one
fresh tensor per op), in the same process, on the same tensors. bitmesh's
own per-channel INT4 is timed too. Each format's time is the median of
``--repeats`` passes over all 21 tensors; the formats are timed in rounds
(every format once per round, the baseline first in each) so that a change
of load on this shared machine hits all of them alike. Only ratios measured
in one run are comparable (METHODS.md section 11). One torch thread.

Weight error: sum over layers of ||Q(W) - W||^2 over ||W||^2 (the relative
squared error of the whole model's weights), and the largest per-layer value.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_formats.py [--repeats N]``.
The last line is ``RESULT mxfp4_vs_int4_time=<x> nvfp4_vs_int4_time=<y> ...``:
each block format's time over the plain per-channel INT4 time (goal: <= 1.5),
and ``<format>_rel_err`` for each.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import Tensor, nn

from bitmesh.formats import Granularity, get_format
from bitmesh.quant.fake_quant import fake_quantize

FORMATS = (
    "int4",
    "mxfp4",
    "nvfp4",
    "int4_g32",
    "int4_g128",
    "int4_g32_zp",
    "mxfp6_e2m3",
    "mxfp8_e4m3",
    "mxint8",
)
KEYS = {
    "mxfp4": "mxfp4",
    "nvfp4": "nvfp4",
    "int4_g32": "int4g32",
    "int4_g128": "int4g128",
    "int4_g32_zp": "int4g32zp",
    "mxfp6_e2m3": "mxfp6",
    "mxfp8_e4m3": "mxfp8",
    "mxint8": "mxint8",
    "int4": "int4pc",
}


def plain_int4_per_channel(w: Tensor) -> Tensor:
    """The textbook per-channel INT4 fake quantizer (the baseline)."""
    dims = list(range(1, w.dim()))
    scale = w.abs().amax(dim=dims, keepdim=True) / 7.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.clamp(torch.round(w / scale), -8, 7) * scale


def quantizer(name: str) -> Callable[[Tensor], Tensor]:
    fmt = get_format(name)
    return lambda w: fake_quantize(w, fmt, granularity=Granularity.PER_CHANNEL, axis=0)


def weights() -> list[Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    return [
        m.weight.detach().clone() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)
    ]


def one_pass(fn: Callable[[Tensor], Tensor], tensors: list[Tensor]) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for w in tensors:
            fn(w)
    return time.perf_counter() - start


def relative_errors(fn: Callable[[Tensor], Tensor], tensors: list[Tensor]) -> tuple[float, float]:
    total_err = total_norm = 0.0
    worst = 0.0
    with torch.no_grad():
        for w in tensors:
            err = float((fn(w) - w).double().square().sum())
            norm = float(w.double().square().sum())
            total_err += err
            total_norm += norm
            worst = max(worst, err / norm)
    return total_err / total_norm, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tensors = weights()
    count = sum(w.numel() for w in tensors)
    print(f"resnet18: {len(tensors)} weight tensors, {count / 1e6:.2f}M weights, 1 thread")
    candidates: dict[str, Callable[[Tensor], Tensor]] = {"plain_int4": plain_int4_per_channel}
    candidates |= {name: quantizer(name) for name in FORMATS}
    for fn in candidates.values():  # warm-up: allocator, first-call costs
        one_pass(fn, tensors)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.repeats):
        for name, fn in candidates.items():
            times[name].append(one_pass(fn, tensors))
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["plain_int4"]
    print(
        f"{'format':>14} {'ms/pass':>9} {'Mw/s':>8} {'vs plain int4':>14} {'rel err':>10} {'worst':>10}"
    )
    result: dict[str, str] = {}
    for name, fn in candidates.items():
        err, worst = relative_errors(fn, tensors)
        ratio = medians[name] / base
        print(
            f"{name:>14} {medians[name] * 1e3:9.1f} {count / medians[name] / 1e6:8.1f} "
            f"{ratio:14.2f} {err:10.3e} {worst:10.3e}"
        )
        if name in KEYS:
            result[f"{KEYS[name]}_vs_int4_time"] = f"{ratio:.3f}"
            result[f"{KEYS[name]}_rel_err"] = f"{err:.4e}"
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
