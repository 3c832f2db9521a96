"""CUDA against CPU for the pipeline stages' own work, on resnet18 at 3x224x224.

Each stage is the domain function the services run, on the device
``BITMESH_DEVICE`` would pick, with the same model (torchvision resnet18,
seed 0, 10 classes, bitmesh's build) and the same random data:

- ``hessian``: ``sensitivity_svc.analysis.analyse`` (memory check included:
  on CUDA it reads ``torch.cuda.mem_get_info``) on one batch, every layer
  exactly ``--hessian-samples`` probes (min = max samples), so both devices
  do the same work, one probe per autograd call;
- ``hessian_batched``: the same, with up to 8 probes per autograd call
  (``hvp_strategy="batched"``, vmap): the same probes and estimates, so the
  faster of the two is the strategy that reaches a target error soonest on
  that device (what ``BITMESH_HVP_STRATEGY=auto`` measures on CUDA);
- ``qat``: ``trainer_svc.loop.train`` for ``--qat-steps`` SGD steps on the
  model wrapped at uniform INT8 (``wrap_with_config``), batches from
  ``StepBatches`` (host-to-device copies included);
- ``calibration``: ``--calibration-batches`` forward passes observing the
  activation ranges, as ``trainer_svc.calibration`` does;
- ``evaluation``: ``trainer_svc.evaluate.accuracy_and_loss`` on
  ``--eval-samples`` held-out samples.

Before the stages each device runs one untimed forward and backward (CUDA
context, cuDNN and allocator warm-up); CUDA stages end with a synchronize.
The CPU part is small (a few steps) so the whole run stays well under ten
minutes on a 16-core host.

Without CUDA it says so, prints ``RESULT cuda=absent`` and exits 0.
``--smoke`` first runs every stage on the CPU at 3x32x32 with tiny counts
(a check that the script works, not a measurement).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_gpu.py [--smoke]

The last line is ``RESULT cuda=present device=... <stage>_cpu_s=...
<stage>_cuda_s=... <stage>_speedup=...`` (speedup = CPU time / CUDA time).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bitmesh.formats import parse_option  # noqa: E402
from bitmesh.models.layers import discover_layers  # noqa: E402
from bitmesh.models.loading import build_architecture  # noqa: E402
from bitmesh.quant.qmodel import QuantSettings, observing, wrap_with_config  # noqa: E402
from sensitivity_svc.analysis import SensitivitySettings, analyse  # noqa: E402
from trainer_svc.batches import StepBatches  # noqa: E402
from trainer_svc.evaluate import accuracy_and_loss  # noqa: E402
from trainer_svc.loop import NullIO, train  # noqa: E402
from trainer_svc.specs import TrainingSettings  # noqa: E402

CLASSES = 10
STAGES = ("hessian", "hessian_batched", "qat", "calibration", "evaluation")
#: Probes per autograd call of the ``hessian_batched`` stage.
BATCHED_PROBES = 8


@dataclass(frozen=True)
class Sizes:
    shape: tuple[int, ...]
    hessian_batch: int
    hessian_samples: int
    qat_steps: int
    batch: int
    calibration_batches: int
    eval_samples: int


def _data(count: int, shape: tuple[int, ...], seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((count, *shape), generator=generator)
    y = torch.randint(0, CLASSES, (count,), generator=generator)
    return TensorDataset(x, y)


def _timed(device: torch.device, work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def run_stages(device: torch.device, sizes: Sizes) -> dict[str, float]:
    """Seconds per stage on ``device`` (fresh model and data each call)."""
    torch.manual_seed(0)
    base = build_architecture("resnet18", CLASSES, sizes.shape).eval()
    layers = discover_layers(base, sizes.shape)  # on the CPU, as the services do
    base.to(device)
    train_data = _data(max(sizes.batch * 2, sizes.hessian_batch), sizes.shape, seed=1)
    test_data = _data(sizes.eval_samples, sizes.shape, seed=2)

    warm = base.train()
    x = train_data.tensors[0][: sizes.batch].to(device)
    F.cross_entropy(warm(x), train_data.tensors[1][: sizes.batch].to(device)).backward()
    warm.zero_grad(set_to_none=True)
    base.eval()
    if device.type == "cuda":
        torch.cuda.synchronize(device)

    config = {layer.name: parse_option("int8") for layer in layers}
    times: dict[str, float] = {}

    hessian_batches = [
        (
            train_data.tensors[0][: sizes.hessian_batch].to(device),
            train_data.tensors[1][: sizes.hessian_batch].to(device),
        )
    ]
    settings = SensitivitySettings(
        max_samples=sizes.hessian_samples, min_samples=sizes.hessian_samples, seed=0
    )
    times["hessian"] = _timed(
        device, lambda: analyse(base, hessian_batches, layers, ["int8"], settings)
    )
    batched = replace(
        settings,
        hvp_strategy="batched",
        hvp_probes_per_call=min(BATCHED_PROBES, sizes.hessian_samples),
    )
    times["hessian_batched"] = _timed(
        device, lambda: analyse(base, hessian_batches, layers, ["int8"], batched)
    )

    student: nn.Module = copy.deepcopy(base)
    batches = StepBatches(train_data, sizes.batch, 0, device)
    wrap_with_config(student, config, QuantSettings(), batches.get(0)[0])
    training = TrainingSettings(steps=sizes.qat_steps, batch_size=sizes.batch)
    times["qat"] = _timed(device, lambda: train(student, batches, training, NullIO()))

    calibrated: nn.Module = copy.deepcopy(base)
    quantized = wrap_with_config(calibrated, config, QuantSettings(), batches.get(0)[0])
    calibrated.eval()

    def calibrate() -> None:
        with observing(quantized), torch.no_grad():
            for index in range(sizes.calibration_batches):
                calibrated(batches.get(index)[0])

    times["calibration"] = _timed(device, calibrate)
    times["evaluation"] = _timed(device, lambda: accuracy_and_loss(calibrated, test_data, device))
    return times


def _show(device: torch.device, times: dict[str, float]) -> None:
    print(f"{device}: " + "  ".join(f"{stage} {times[stage]:.2f} s" for stage in STAGES))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hessian-batch", type=int, default=8)
    parser.add_argument("--hessian-samples", type=int, default=8)
    parser.add_argument("--qat-steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--calibration-batches", type=int, default=4)
    parser.add_argument("--eval-samples", type=int, default=128)
    parser.add_argument(
        "--smoke", action="store_true", help="first run every stage on the CPU at 3x32x32"
    )
    args = parser.parse_args()
    cpu = torch.device("cpu")
    if args.smoke:
        smoke = Sizes((3, 32, 32), 4, 2, 2, 8, 2, 16)
        print("smoke run (CPU, 3x32x32, tiny counts; not a measurement):")
        _show(cpu, run_stages(cpu, smoke))
    if not torch.cuda.is_available():
        print("CUDA is not available on this machine (torch sees no GPU): nothing to compare")
        print("RESULT cuda=absent")
        return 0
    sizes = Sizes(
        (3, 224, 224),
        args.hessian_batch,
        args.hessian_samples,
        args.qat_steps,
        args.batch,
        args.calibration_batches,
        args.eval_samples,
    )
    cuda = torch.device("cuda", 0)
    name = torch.cuda.get_device_name(cuda)
    print(
        f"resnet18 at 3x224x224 on {name} and {torch.get_num_threads()} CPU threads: "
        f"hessian {sizes.hessian_samples} probes/layer on {sizes.hessian_batch} samples, "
        f"qat {sizes.qat_steps} steps x {sizes.batch}, calibration "
        f"{sizes.calibration_batches} x {sizes.batch}, evaluation {sizes.eval_samples} samples"
    )
    on_cuda = run_stages(cuda, sizes)
    _show(cuda, on_cuda)
    on_cpu = run_stages(cpu, sizes)
    _show(cpu, on_cpu)
    fields = [f"cuda=present device={name.replace(' ', '_')}"]
    for stage in STAGES:
        speedup = on_cpu[stage] / max(on_cuda[stage], 1e-9)
        print(
            f"{stage:12s} cpu {on_cpu[stage]:8.2f} s  cuda {on_cuda[stage]:8.3f} s  x{speedup:.1f}"
        )
        fields.append(
            f"{stage}_cpu_s={on_cpu[stage]:.3f} {stage}_cuda_s={on_cuda[stage]:.3f} "
            f"{stage}_speedup={speedup:.1f}"
        )
    print("RESULT " + " ".join(fields))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
