"""The analysis's memory estimate against the measured peak (issue 16).

:func:`sensitivity_svc.analysis.estimate_memory` decides whether an analysis
is refused RESOURCE_EXHAUSTED before it starts, so it must bound the real
peak (else a request it admits can OOM the service) without being so loose
that it refuses what would fit. The peak is measured with torch's profiler,
which records every tensor allocation and free of the calling thread: the
highest running sum of them during :func:`analyse` is the analysis's own
peak, to which the weights (alive before and throughout) are added. One
worker thread, so every allocation is on the calling thread (the profiler
does not see others'); the second worker's extra HVP is in the parameter
factor, measured by resident memory (see ``PARAMETER_FACTOR``).

Two regimes, since the estimate has a term for each: a CNN whose forward
activations dominate, and an MLP whose weights and control-variate sketches
dominate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from sensitivity_svc.analysis import SensitivitySettings, analyse, estimate_memory

pytestmark = pytest.mark.unit

#: The estimate may be at most this much above the peak (it was 1.2x and 1.1x).
LOOSEST = 2.0


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Small kernels run fastest on one thread (and the peak does not depend on it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _peak_allocated(run: Callable[[], object]) -> int:
    """The highest bytes of tensors allocated by ``run`` and alive at once
    (the legacy profiler: kineto's first start alone takes seconds)."""
    with torch.autograd.profiler.profile(profile_memory=True, use_kineto=False) as prof:
        run()
    events = sorted(
        (e for e in prof.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    assert events, "the profiler recorded no allocations"
    now = peak = 0
    for event in events:
        now += event.nbytes()
        peak = max(peak, now)
    return peak


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
    )


@pytest.mark.parametrize(
    ("build", "shape", "batch", "dominant"),
    [
        (_cnn, (3, 32, 32), 16, "activations"),
        (_mlp, (1024,), 8, "sketch"),
    ],
    ids=["activation-heavy-cnn", "weight-heavy-mlp"],
)
@pytest.mark.usefixtures("one_thread")
def test_the_estimate_bounds_the_measured_peak(
    build: Callable[[], nn.Module], shape: tuple[int, ...], batch: int, dominant: str
) -> None:
    torch.manual_seed(0)
    model = build()
    generator = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(batch, *shape, generator=generator),
            torch.randint(0, 10, (batch,), generator=generator),
        )
    ]
    settings = SensitivitySettings(max_samples=2, min_samples=2, workers=1)
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    need = estimate_memory(model, batches, weights, settings)
    parts = {"activations": need.activations, "parameters": need.parameters, "sketch": need.sketch}
    assert max(parts, key=lambda k: parts[k]) == dominant, parts

    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    peak = weight_bytes + _peak_allocated(lambda: analyse(model, batches, None, ["int8"], settings))

    assert peak <= need.total, f"the estimate {need} is below the measured peak {peak:,} B"
    assert need.total <= LOOSEST * peak, f"the estimate {need} is over {LOOSEST}x {peak:,} B"
