"""Per-layer Hessian traces by Rademacher Hutchinson, with honest error bars.

What is estimated. For each layer l, Tr(H_ll): the trace of the diagonal
block of the Hessian of the loss with respect to the layer's *weight* (bias
excluded, HAWQ's convention), with the model in eval mode (BN uses its running
statistics). With several batches the Hessian is the average of the batches'
Hessians of their mean loss, i.e. the Hessian over the requested data. Every
sample is an unbiased estimate of it; runs are seeded and reproducible, and a
layer's probes do not depend on the other layers.

How, and why this way. Measured on torchvision resnet18 (random init, batch
32 x 3x32x32, 10 classes, eval, 2 shared CPU cores; costs as multiples of one
forward+backward pass):

1. One gradient graph per batch (``create_graph=True``, about 1.7 fwd+bwd),
   reused for every Hessian-vector product of every layer and every sample
   (``retain_graph=True``). A PyHessian-style loop rebuilds it per sample.
2. Probes restricted to one layer: ``grad(g_l, W_l, grad_outputs=v_l)`` is
   exactly H_ll v_l, and autograd walks only the part of the double-backward
   graph between the loss and W_l, so a late layer costs 0.1-0.5x and an
   early one about 1x (all 21 layers: about 18-20x per sample). Splitting
   one all-parameter HVP by layer costs 2x for every layer at once, but its
   cross-layer terms gave per-sample coefficients of variation of 1.4-19
   against 0.1-0.6 with per-layer probes, i.e. 10-1000x more samples: never
   cheaper, so it is not offered.
3. A running Nystrom control variate. The products y_j = H s_j of earlier
   probes are kept (up to ``sketch_size`` per layer and batch, within
   ``sketch_budget``); with M_ij = s_i . y_j they define the low-rank
   H_hat = Y^T M^+ Y, and a sample reports
   ``v^T H v - (v^T H_hat v - Tr(H_hat))`` for a fresh probe v. H_hat comes
   from earlier probes only, so the correction has conditional mean zero:
   every sample stays unbiased and the samples form a martingale-difference
   sequence. It costs no extra HVP (the products are the samples' own), only
   one pass over the stored products per sample. Layer blocks here are
   dominated by a few directions (the output curvature of 10 classes), so
   the residual variance drops 5-10x. Since early samples see a small
   sketch, the j-th sample of a batch weighs min(j, rank + 1): fixed in
   advance, so still exactly unbiased. Samples to 5 % over the 21 layers:
   1150 plain, 446 corrected, 376 corrected and weighted (a trained digits
   CNN, one batch: 692 and 71). A layer falls back to plain samples when
   the correction stops paying (decided from past samples only). With
   several batches each batch has its own sketch: one shared by all mixes
   their Hessians and did worse than no correction on the digits CNN.
4. Honest error bars. The standard error is the largest of (a) the spread
   of the samples (pooled within batches), (b) the Rademacher variance
   bound Var(v^T A v) = 2 (||A||_F^2 - sum_i A_ii^2) <= 2 E||A v||^2,
   estimated from every sample's own ||A v||^2 (A = H, or H - H_hat when
   corrected), and (c) the rounding error of a dot product over P terms.
   (a) alone is unreliable at 10-30 samples of a skewed distribution: on
   small exact-Hessian models it let layers stop early at 4-8 standard
   errors from the truth (95 % intervals held the truth 80-90 % of the
   time); ||Av||^2 fluctuates far less than (x - mean)^2, and with (b) the
   intervals held it 95-100 % of the time, never missing by 3 SE.
5. Per-layer adaptive stopping: a layer stops once it has ``min_samples``
   samples and its relative standard error is at most the target, or at
   ``max_samples``; the others carry on.
6. Two Hessian-vector products at a time (``workers``, threads sharing the
   retained graph; each layer keeps its own generator and state, so results
   do not depend on it). Autograd leaves much of a 2-core CPU idle on one
   HVP (small late-layer kernels, engine overhead): a round of all 21 layers
   took 0.69-0.84 s with two concurrent HVPs against 1.17-1.58 s one at a
   time. Under load from other processes the gap grew to 5-10x (one
   thread's OpenMP team waiting on a descheduled helper).
7. Several batches: samples go round-robin (one per layer per batch per
   round) and layers stop only at the end of a round, so each batch gets the
   same number of samples; the estimate is the mean of the batches' means and
   the standard error is stratified (pooled within-batch spread): the target
   is the Hessian over *these* batches, so their differences are not noise.

8. Batched probes, chosen by measurement: ``probes_per_call`` k > 1 takes k
   probes in one ``torch.autograd.grad(..., is_grads_batched=True)`` call
   (vmap). On this 2-core CPU that was up to 10x slower per probe than a
   loop on most of resnet18's layers (faster on the small digits CNN); a
   GPU, which one probe leaves mostly idle, may gain. With
   ``measure_probes`` the first round takes one probe per call, the second
   k, and the run keeps the one whose samples cost less wall time (the
   graph's one-off build is not counted; both rounds' samples are kept, so
   measuring costs no extra products). Each layer draws the same probes in
   the same order either way: with one batch the estimates are the same to
   rounding; with several, which probe goes to which batch changes. A graph
   holding an op that vmap cannot batch falls back to one call per probe.

Not used, measured: forward-over-reverse (``torch.func.jvp`` of ``torch.func.grad``)
costs about a fresh-graph double backward (METHODS.md section 9) and cannot
reuse one gradient graph across probes; a Nystrom correction of all-parameter
probes (one sketch of the whole Hessian, whose cross-layer blocks make it
strongly indefinite) raised the split samples' variation from 1.4-26 to 7-156;
routing conv2d through a custom Function so that the double backward skips
``_convolution_double_backward``'s unused weight term was 30 % slower.

Activation sensitivity (optional, stated as such): the same estimator on each
layer's *input* activation, scaled by the batch size, gives the mean over
samples of the trace of the per-sample loss's Hessian with respect to that
sample's layer input.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from bitmesh.errors import Cancelled, FailedPrecondition, InvalidArgument

__all__ = [
    "Batch",
    "CancelFlag",
    "HutchinsonSettings",
    "HvpChoice",
    "LayerTrace",
    "LossFn",
    "NystromControlVariate",
    "ProgressFn",
    "Samples",
    "estimate_activation_traces",
    "estimate_weight_traces",
    "eval_mode",
    "rademacher_",
    "sketch_rank",
    "weighted_mean_se",
]

logger = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]

#: Eigenvalues of the sketch matrix M below this fraction of its largest are
#: dropped from M^+: float32 products carry relative errors near 1e-6, and
#: inverting noise would only add variance (never bias: any H_hat is valid).
_PINV_RTOL = 1e-4
#: Plain and corrected samples are compared only after this many pairs.
_MIN_PAIRS_TO_COMPARE = 5


class CancelFlag(Protocol):
    """Anything with ``is_set()``, e.g. a ``threading.Event``."""

    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class HutchinsonSettings:
    """How long to sample and what to reuse.

    ``workers`` is how many Hessian-vector products run at once (threads).
    ``probes_per_call`` is how many probes one autograd call takes (k > 1:
    ``is_grads_batched``, vmap over k probes); with ``measure_probes`` the
    first round takes one probe per call, the second ``probes_per_call``,
    and the rest of the run the one whose samples cost less (see
    :class:`HvpChoice`). The probes are the same either way (drawn in
    order from each layer's generator); what changes is how many products
    one call computes.
    ``sketch_size`` caps the rank of the control variate (0: plain
    Hutchinson) and ``sketch_budget`` the elements it stores per layer: a
    layer of P weights keeps ``min(sketch_size, sketch_budget // P)``
    products (see :func:`sketch_rank`). Both bound memory, and the budget
    also bounds the per-sample arithmetic on the biggest layers, which in a
    CNN are the last ones, whose Hessian-vector products are the cheapest.
    """

    target_relative_se: float = 0.05
    max_samples: int = 200
    min_samples: int = 10
    sketch_size: int = 16
    sketch_budget: int = 16_000_000
    seed: int = 0
    workers: int = 2
    probes_per_call: int = 1
    measure_probes: bool = False

    def __post_init__(self) -> None:
        if not (self.target_relative_se > 0 and math.isfinite(self.target_relative_se)):
            raise InvalidArgument(
                f"target_relative_se must be a positive number, got {self.target_relative_se!r}"
            )
        if self.min_samples < 2:
            raise InvalidArgument(
                f"min_samples must be at least 2 (a standard error needs two samples), "
                f"got {self.min_samples}"
            )
        if self.max_samples < self.min_samples:
            raise InvalidArgument(
                f"max_samples ({self.max_samples}) must be at least min_samples "
                f"({self.min_samples})"
            )
        if self.sketch_size < 0 or self.sketch_budget < 0:
            raise InvalidArgument(
                f"sketch_size and sketch_budget must be >= 0, got {self.sketch_size} "
                f"and {self.sketch_budget}"
            )
        if self.seed < 0:
            raise InvalidArgument(f"seed must be >= 0, got {self.seed}")
        if self.workers < 1:
            raise InvalidArgument(f"workers must be >= 1, got {self.workers}")
        if self.probes_per_call < 1:
            raise InvalidArgument(f"probes_per_call must be >= 1, got {self.probes_per_call}")


@dataclass(frozen=True)
class LayerTrace:
    """A layer's trace estimate: running (``done`` False) or final."""

    name: str
    trace: float
    standard_error: float
    samples: int
    done: bool

    @property
    def relative_se(self) -> float:
        """Standard error over |trace| (inf for a zero trace with nonzero error)."""
        if self.standard_error == 0.0:
            return 0.0
        return self.standard_error / abs(self.trace) if self.trace != 0.0 else math.inf


ProgressFn = Callable[[LayerTrace], None]


@dataclass(frozen=True)
class HvpChoice:
    """How the run computed its Hessian-vector products, and why.

    ``seconds_per_sample`` holds what was measured, keyed by probes per call
    (the wall time of a round over the samples it took; empty when nothing
    was measured, i.e. the setting decided). ``fell_back`` says a batched
    call failed (an op without a batching rule) and the products were taken
    one at a time instead.
    """

    probes_per_call: int
    seconds_per_sample: dict[int, float]
    fell_back: bool = False


ChoiceFn = Callable[[HvpChoice], None]


def sketch_rank(numel: int, settings: HutchinsonSettings, batches: int = 1) -> int:
    """How many products each batch's control variate keeps for a layer of
    ``numel`` weights (the budget is shared by the batches' sketches)."""
    return min(settings.sketch_size, settings.sketch_budget // max(numel * batches, 1))


@dataclass(frozen=True)
class Samples:
    """One layer's samples by batch: values, their fixed weights, and each
    sample's variance bound (2 ||A v||^2)."""

    values: Sequence[Sequence[float]]
    weights: Sequence[Sequence[float]]
    bounds: Sequence[Sequence[float]]


def weighted_mean_se(samples: Samples) -> tuple[float, float, float]:
    """(estimate, sample-spread SE, variance-bound SE) of the mean over batches
    of each batch's weighted mean.

    The weights are fixed in advance (they depend on a sample's position
    only), so the estimate is exactly unbiased. The spread-based SE pools the
    within-batch residuals with the n / (n - B) correction (with equal
    weights it is the usual stratified formula); with one sample per batch
    there is no within-batch spread and the spread around the overall
    estimate, which also holds the between-batch differences, is used
    (conservative).
    """
    batches = len(samples.values)
    counts = [len(v) for v in samples.values]
    if not counts or min(counts) == 0:
        raise ValueError("every batch needs at least one sample")
    n = sum(counts)
    if n < 2:
        raise ValueError("a standard error needs at least two samples")
    means, spread, bound = [], 0.0, 0.0
    for values, weights, bounds in zip(
        samples.values, samples.weights, samples.bounds, strict=True
    ):
        x, w, b = np.asarray(values), np.asarray(weights), np.asarray(bounds)
        share = w / w.sum()
        mean = float(share @ x)
        means.append(mean)
        spread += float(share**2 @ (x - mean) ** 2)
        bound += float(share**2 @ b)
    estimate = float(np.mean(means))
    if n > batches:
        spread *= n / (n - batches)
    else:
        spread = float(np.var(np.concatenate([np.asarray(v) for v in samples.values]), ddof=1))
        spread *= sum(1.0 / c for c in counts)
    return estimate, math.sqrt(spread) / batches, math.sqrt(bound) / batches


class NystromControlVariate:
    """The correction ``v^T H_hat v - Tr(H_hat)``, H_hat = Y^T M^+ Y, from past probes.

    Y holds earlier products y_j = H s_j (one row each, up to ``capacity``)
    and M is symmetric with M_ij = s_i . y_j for i >= j (mirrored). Any
    symmetric M and any Y that do not depend on the current probe v give an
    unbiased correction (E[v^T A v] = Tr(A) for Rademacher v and any fixed
    A), so there is no need to keep the probes themselves: with one batch M
    is exactly S^T H S (the Nystrom approximation), with several it is a
    slightly worse but still valid choice. ``observe`` applies the current
    H_hat to v first and only then adds (v, H v).

    Cost per probe: one pass over Y (a k x P by P x 2 product) plus k x k
    arithmetic; ||(H - H_hat) v||^2 is expanded through the Gram matrix of Y
    instead of materialising H_hat v.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._products: Tensor | None = None
        self._count = 0
        self._m = np.zeros((capacity, capacity))
        self._gram = np.zeros((capacity, capacity))
        self._pinv = np.zeros((0, 0))
        self._trace = 0.0

    @property
    def rank(self) -> int:
        """How many products the approximation holds."""
        return self._count

    @property
    def trace(self) -> float:
        """Tr(H_hat), exact for the stored products."""
        return self._trace

    def observe(self, pair: Tensor, probe_product: float, product_sq: float) -> tuple[float, float]:
        """``(v^T H_hat v - Tr(H_hat), ||H v - H_hat v||^2)`` with H_hat from the
        earlier probes, then keep H v. ``pair`` is (2, P): the flat probe v and
        H v; ``probe_product`` = v . Hv and ``product_sq`` = ||Hv||^2 (the caller
        has them). With nothing stored yet the result is ``(0, ||H v||^2)``."""
        k = self._count
        correction, residual_sq = 0.0, product_sq
        z = cross = np.zeros(0)
        if k:
            assert self._products is not None
            both = (self._products[:k] @ pair.T).double().cpu().numpy()
            z, cross = both[:, 0], both[:, 1]
            weights = self._pinv @ z
            correction = float(z @ weights) - self._trace
            approx_sq = float(weights @ self._gram[:k, :k] @ weights)
            residual_sq = max(product_sq - 2.0 * float(weights @ cross) + approx_sq, 0.0)
        if k < self.capacity:
            if self._products is None:
                self._products = torch.empty(
                    (self.capacity, pair.shape[1]), dtype=pair.dtype, device=pair.device
                )
            self._m[k, :k] = self._m[:k, k] = z
            self._m[k, k] = probe_product
            self._gram[k, :k] = self._gram[:k, k] = cross
            self._gram[k, k] = product_sq
            self._products[k] = pair[1]
            self._count = k + 1
            self._refresh()
        return correction, residual_sq

    def _refresh(self) -> None:
        k = self._count
        eigenvalues, vectors = np.linalg.eigh(self._m[:k, :k])
        largest = float(np.abs(eigenvalues).max())
        keep = np.abs(eigenvalues) > _PINV_RTOL * largest if largest > 0 else eigenvalues != 0
        kept = vectors[:, keep]
        self._pinv = (kept / eigenvalues[keep]) @ kept.T
        self._trace = float((self._pinv * self._gram[:k, :k]).sum())

    def release(self) -> None:
        """Free the stored products (the layer has finished)."""
        self._products = None


_BIT_SHIFTS = torch.arange(8, dtype=torch.uint8)


def rademacher_(out: Tensor, generator: torch.Generator) -> Tensor:
    """Fill a flat tensor with independent fair +-1 entries.

    Eight per random byte (each byte uniform on 0..255, so its bits are
    independent and fair): 5x faster than ``randint`` per element on this CPU,
    where drawing the probe was 6 % of the whole estimate.
    """
    count = out.numel()
    random_bytes = torch.empty((count + 7) // 8, dtype=torch.uint8)
    random_bytes.random_(0, 256, generator=generator)
    bits = ((random_bytes.unsqueeze(1) >> _BIT_SHIFTS) & 1).reshape(-1)[:count]
    out.copy_(bits)
    return out.mul_(2).sub_(1)


def _layer_generator(seed: int, index: int) -> torch.Generator:
    """One generator per layer, so a layer's probes do not depend on when the
    other layers stop (results reproduce layer by layer)."""
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class _LayerState:
    """The running estimate of one layer."""

    def __init__(self, index: int, name: str, batches: int, settings: HutchinsonSettings) -> None:
        self.name = name
        self.values: list[list[float]] = [[] for _ in range(batches)]
        self.weights: list[list[float]] = [[] for _ in range(batches)]
        self.variances: list[list[float]] = [[] for _ in range(batches)]
        self.samples = 0
        self.done = False
        self.generator = _layer_generator(settings.seed, index)
        # One sketch per batch, sized at its first sample: each batch's samples
        # are corrected with an approximation of that batch's own Hessian.
        self.settings = settings
        self.batches = batches
        self.controls: dict[int, NystromControlVariate | None] = {}
        self._pair: Tensor | None = None
        self._abs_plain_sum = 0.0
        self._rounding_scale = 0.0
        self._frob_plain: list[float] = []
        self._frob_control: list[float] = []
        self.fell_back = False

    def sample(
        self, gradient: Tensor | None, target: Tensor, batch: int, scale: float, probes: int = 1
    ) -> None:
        """Draw ``probes`` probes, take their Hessian-vector products (one
        autograd call for all of them when ``probes`` > 1), record the samples."""
        numel = target.numel()
        if self._pair is None or self._pair.shape[1] != numel or self._pair.dtype != target.dtype:
            self._pair = torch.empty((2, numel), dtype=target.dtype, device=target.device)
        pair = self._pair
        if probes == 1:
            rademacher_(pair[0], self.generator)
            product = _hvp(gradient, target, pair[0].view_as(target))
            pair[1].copy_(product.reshape(-1))
            self._record(pair, target, batch, scale)
            return
        block = torch.empty((probes, numel), dtype=target.dtype, device=target.device)
        for row in block:
            rademacher_(row, self.generator)
        products = self._batched_products(gradient, target, block)
        for row, product in zip(block, products, strict=True):
            pair[0].copy_(row)
            pair[1].copy_(product.reshape(-1))
            self._record(pair, target, batch, scale)

    def _batched_products(self, gradient: Tensor | None, target: Tensor, block: Tensor) -> Tensor:
        """H v for each row of ``block`` in one call; one call per row if the
        graph holds an op that vmap cannot batch (the same products)."""
        try:
            return _hvp_batched(gradient, target, block.view(block.shape[0], *target.shape))
        except RuntimeError as exc:
            if not self.fell_back:
                logger.info("layer %s: batched products failed (%s); one at a time", self.name, exc)
            self.fell_back = True
            return torch.stack([_hvp(gradient, target, row.view_as(target)) for row in block])

    def _record(self, pair: Tensor, target: Tensor, batch: int, scale: float) -> None:
        """One sample from ``pair`` = (probe v, H v), flat."""
        numel = target.numel()
        gram = (pair @ pair.T).double().cpu().numpy()
        plain, product_sq = float(gram[0, 1]), float(gram[1, 1])
        if not math.isfinite(plain):
            raise FailedPrecondition(
                f"a Hessian-vector product of layer {self.name!r} is not finite on batch "
                f"{batch}: the loss surface has inf/NaN curvature there; check the model and data"
            )
        if batch not in self.controls:
            rank = sketch_rank(numel, self.settings, self.batches)
            self.controls[batch] = NystromControlVariate(rank) if rank > 0 else None
        control = self.controls[batch]
        value, frob = plain, product_sq
        if control is not None:
            use = self._control_helps()
            had_rank = control.rank > 0
            correction, frob_control = control.observe(pair, plain, product_sq)
            if had_rank:
                self._frob_plain.append(product_sq)
                self._frob_control.append(frob_control)
                if use:
                    value, frob = plain - correction, frob_control
        self.samples += 1
        self._abs_plain_sum += abs(plain * scale)
        eps = float(torch.finfo(target.dtype).eps)
        self._rounding_scale = 4.0 * eps * math.sqrt(numel)
        self.values[batch].append(value * scale)
        # Early samples see a small sketch and scatter more: the j-th sample
        # of a batch weighs min(j, rank + 1), fixed in advance (no bias).
        capacity = control.capacity if control is not None else 0
        self.weights[batch].append(float(min(len(self.values[batch]), capacity + 1)))
        # Var(v^T A v) = 2 (||A||_F^2 - sum_i A_ii^2) <= 2 E||A v||^2 for symmetric A.
        self.variances[batch].append(2.0 * frob * scale * scale)

    def probes_for(self, wanted: int, batches: int) -> int:
        """Probes per call this round: ``wanted``, but never past max_samples."""
        room = (self.settings.max_samples - self.samples) // batches
        return max(1, min(wanted, room))

    def _control_helps(self) -> bool:
        """Whether the next sample should use the correction (past samples only):
        E||(H - H_hat) v||^2 against E||H v||^2, i.e. the two variances' bounds."""
        if len(self._frob_plain) < _MIN_PAIRS_TO_COMPARE:
            return True
        return sum(self._frob_control) <= sum(self._frob_plain)

    def snapshot(self) -> LayerTrace | None:
        """The running estimate, once every batch has a sample and n >= 2."""
        if self.samples < 2 or any(not v for v in self.values):
            return None
        estimate, sample_se, model_se = weighted_mean_se(
            Samples(self.values, self.weights, self.variances)
        )
        # Rounding of a float dot product over P terms: the reported error is
        # never smaller than that, whatever the samples' spread.
        floor = self._rounding_scale * self._abs_plain_sum / self.samples
        se = max(sample_se, model_se, floor)
        return LayerTrace(self.name, estimate, se, self.samples, self.done)

    def finish_round(self, settings: HutchinsonSettings, batches: int) -> None:
        """Stop when the target is met (after min_samples) or the cap is near."""
        current = self.snapshot()
        if current is None:
            return
        converged = (
            current.samples >= settings.min_samples
            and current.standard_error <= settings.target_relative_se * abs(current.trace)
        )
        # (A round of k probes per call shrinks k to what fits, probes_for:
        # only a round that cannot take one sample per batch ends the layer.)
        if converged or self.samples + batches > settings.max_samples:
            self.done = True
            for control in self.controls.values():
                if control is not None:
                    control.release()
            logger.debug(
                "layer %s: trace %.6g +- %.3g after %d samples%s",
                self.name,
                current.trace,
                current.standard_error,
                current.samples,
                "" if converged else " (sample cap)",
            )

    def result(self) -> LayerTrace:
        current = self.snapshot()
        if current is None:
            raise RuntimeError(f"layer {self.name!r} finished without samples")
        return current


def _hvp(gradient: Tensor | None, target: Tensor, probe: Tensor) -> Tensor:
    """H v for the block of ``target``; zero when the loss is at most linear in it."""
    if gradient is None or not gradient.requires_grad:
        return torch.zeros_like(target)
    (product,) = torch.autograd.grad(
        gradient, target, grad_outputs=probe, retain_graph=True, allow_unused=True
    )
    return torch.zeros_like(target) if product is None else product.detach()


def _hvp_batched(gradient: Tensor | None, target: Tensor, probes: Tensor) -> Tensor:
    """H v for each of ``probes`` (k, *target.shape) in one autograd call (vmap)."""
    if gradient is None or not gradient.requires_grad:
        return torch.zeros_like(probes)
    (products,) = torch.autograd.grad(
        gradient,
        target,
        grad_outputs=probes,
        retain_graph=True,
        allow_unused=True,
        is_grads_batched=True,
    )
    return torch.zeros_like(probes) if products is None else products.detach()


def _mean_loss(model: nn.Module, loss_fn: LossFn, batch: Batch, index: int) -> Tensor:
    inputs, targets = batch
    loss = loss_fn(model(inputs), targets)
    if loss.ndim != 0:
        raise InvalidArgument(
            f"the loss function returned shape {tuple(loss.shape)}; it must return the "
            "batch's mean loss as a scalar"
        )
    if not torch.isfinite(loss):
        raise FailedPrecondition(
            f"the loss is {loss.item()} on batch {index}; the model or data has non-finite "
            "values there (check the weights, the inputs' normalisation and the labels)"
        )
    return loss


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside, every submodule's own flag restored after.

    Exported programs refuse ``eval()``: their mode was fixed when exported.
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        try:
            model.eval()
        except NotImplementedError:
            logger.debug("module %s has a fixed mode (exported program)", type(model).__name__)
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def _eval_and_grad(model: nn.Module, tensors: Sequence[Tensor]) -> Iterator[None]:
    """Eval mode and gradients on for the run; every flag restored after."""
    frozen = [t for t in tensors if not t.requires_grad]
    with eval_mode(model):
        try:
            for t in frozen:
                t.requires_grad_(True)
            with torch.enable_grad():
                yield
        finally:
            for t in frozen:
                t.requires_grad_(False)


# A graph builder: (batch index, layer indices) -> per layer (gradient of the
# batch loss w.r.t. the target, the target), and the factor on sample values.
_GraphFn = Callable[[int, Sequence[int]], tuple[list[tuple[Tensor | None, Tensor]], float]]


def _check_inputs(
    names: Sequence[str], batches: Sequence[Batch], settings: HutchinsonSettings
) -> None:
    if not names:
        raise InvalidArgument("no layers to analyse: the model has no quantizable layers")
    if not batches:
        raise InvalidArgument("no data: at least one batch is needed")
    if len(batches) > settings.max_samples:
        raise InvalidArgument(
            f"{len(batches)} batches but at most {settings.max_samples} samples per layer: "
            "every batch needs a sample; use fewer, larger batches or raise max_samples"
        )


def _check_cancel(cancel: CancelFlag | None, state: _LayerState) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(
            f"sensitivity analysis cancelled while sampling layer {state.name!r} "
            f"({state.samples} samples taken)"
        )


def _sample_all(
    pool: ThreadPoolExecutor | None,
    work: Sequence[tuple[_LayerState, Tensor | None, Tensor]],
    batch: int,
    scale: float,
    progress: ProgressFn | None,
    cancel: CancelFlag | None,
    probes: int = 1,
    batches: int = 1,
) -> None:
    """``probes`` samples of each (layer, gradient, target) (fewer where a
    layer's max_samples is near; one autograd call each), in ``pool``'s
    threads if given. Progress is reported from the calling thread, and once
    the cancel flag is seen no sample starts and nothing more is reported
    (samples already running, at most one per worker, are waited for)."""

    def one(state: _LayerState, gradient: Tensor | None, target: Tensor) -> _LayerState:
        _check_cancel(cancel, state)
        state.sample(gradient, target, batch, scale, state.probes_for(probes, batches))
        return state

    def report(state: _LayerState) -> None:
        _check_cancel(cancel, state)
        if progress is not None and (running := state.snapshot()) is not None:
            progress(running)

    if pool is None:
        for item in work:
            report(one(*item))
        return
    futures = [pool.submit(one, *item) for item in work]
    try:
        for future in as_completed(futures):
            report(future.result())
    except BaseException:
        for future in futures:
            future.cancel()
        wait(futures)
        raise


def _run(
    names: Sequence[str],
    batches: Sequence[Batch],
    build_graph: _GraphFn,
    settings: HutchinsonSettings,
    progress: ProgressFn | None,
    cancel: CancelFlag | None,
    on_choice: ChoiceFn | None = None,
) -> list[LayerTrace]:
    """Rounds over the batches until every layer has stopped."""
    count = len(batches)
    states = [_LayerState(i, name, count, settings) for i, name in enumerate(names)]
    kept: tuple[list[tuple[Tensor | None, Tensor]], float] | None = None
    pool = ThreadPoolExecutor(settings.workers) if settings.workers > 1 else None
    chooser = _ProbeChooser(settings)
    try:
        while active := [i for i, s in enumerate(states) if not s.done]:
            probes = chooser.next_round()
            taken = sum(states[i].samples for i in active)
            seconds = 0.0  # what a round's samples cost: its products, and its
            # graphs where every round builds them again (several batches)
            for b in range(count):
                started = time.perf_counter()
                if count == 1:
                    # One batch: its graph serves every sample of the whole run.
                    if kept is None:
                        kept = build_graph(0, range(len(states)))
                        started = time.perf_counter()
                    pairs, scale = [kept[0][i] for i in active], kept[1]
                else:
                    pairs, scale = build_graph(b, active)
                work = [(states[i], g, t) for i, (g, t) in zip(active, pairs, strict=True)]
                _sample_all(pool, work, b, scale, progress, cancel, probes, count)
                seconds += time.perf_counter() - started
                del pairs, work
            chooser.measured(probes, seconds, sum(states[i].samples for i in active) - taken)
            for i in active:
                states[i].finish_round(settings, count)
                if states[i].done and progress is not None:
                    progress(states[i].result())
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if on_choice is not None:
        on_choice(chooser.choice(any(s.fell_back for s in states)))
    return [s.result() for s in states]


class _ProbeChooser:
    """Probes per autograd call, round by round: the setting's, or (with
    ``measure_probes``) one in the first round, ``probes_per_call`` in the
    second, then whichever took less wall time per sample. Both rounds'
    samples count: measuring costs no extra products."""

    def __init__(self, settings: HutchinsonSettings) -> None:
        self.wanted = settings.probes_per_call
        self.measure = settings.measure_probes and self.wanted > 1
        self.seconds: dict[int, float] = {}
        self.chosen: int | None = None if self.measure else self.wanted

    def next_round(self) -> int:
        if self.chosen is not None:
            return self.chosen
        return 1 if 1 not in self.seconds else self.wanted

    def measured(self, probes: int, seconds: float, samples: int) -> None:
        if self.chosen is not None or samples == 0:
            return
        self.seconds[probes] = seconds / samples
        if len(self.seconds) == 2:
            self.chosen = min(self.seconds, key=lambda k: (self.seconds[k], k))
            logger.info(
                "Hessian-vector products: %s per call (seconds per sample: %s)",
                self.chosen,
                ", ".join(f"{k} per call {v:.3g}" for k, v in sorted(self.seconds.items())),
            )

    def choice(self, fell_back: bool) -> HvpChoice:
        # A run that ended within its first round chose nothing: one per call.
        chosen = self.chosen if self.chosen is not None else 1
        return HvpChoice(chosen, dict(self.seconds), fell_back)


def estimate_weight_traces(
    model: nn.Module,
    loss_fn: LossFn,
    layers: Sequence[tuple[str, Tensor]],
    batches: Sequence[Batch],
    settings: HutchinsonSettings = HutchinsonSettings(),
    *,
    progress: ProgressFn | None = None,
    cancel: CancelFlag | None = None,
    on_choice: ChoiceFn | None = None,
) -> list[LayerTrace]:
    """Tr(H_ll) for each (name, weight) in ``layers``, in that order.

    ``loss_fn(outputs, targets)`` must return the batch's mean loss.
    ``progress`` receives every layer's running estimate after each of its
    samples (and the final one, ``done=True``), always from the calling
    thread; ``cancel.is_set()`` is checked before every sample and every
    report and raises Cancelled. ``on_choice`` receives how the products
    were computed (:class:`HvpChoice`) once the run ends.
    """
    _check_inputs([n for n, _ in layers], batches, settings)
    weights = [w for _, w in layers]

    def build_graph(
        b: int, indices: Sequence[int]
    ) -> tuple[list[tuple[Tensor | None, Tensor]], float]:
        loss = _mean_loss(model, loss_fn, batches[b], b)
        chosen = [weights[i] for i in indices]
        grads = torch.autograd.grad(loss, chosen, create_graph=True, allow_unused=True)
        return list(zip(grads, chosen, strict=True)), 1.0

    with _eval_and_grad(model, weights):
        return _run(
            [n for n, _ in layers],
            batches,
            build_graph,
            settings,
            progress,
            cancel,
            on_choice,
        )


def estimate_activation_traces(
    model: nn.Module,
    loss_fn: LossFn,
    layers: Sequence[tuple[str, nn.Module]],
    batches: Sequence[Batch],
    settings: HutchinsonSettings = HutchinsonSettings(),
    *,
    progress: ProgressFn | None = None,
    cancel: CancelFlag | None = None,
    on_choice: ChoiceFn | None = None,
) -> list[LayerTrace]:
    """Mean over samples of Tr(d^2 loss_n / d a_n^2) for each layer's input a_n.

    The input is taken as the layer sees it (a forward pre-hook hands the
    layer an alias of it), so a tensor that also feeds another branch (a
    residual shortcut) is perturbed only on the path through this layer. A
    layer called twice per forward is measured at its first call.
    """
    _check_inputs([n for n, _ in layers], batches, settings)
    modules = [m for _, m in layers]

    def build_graph(
        b: int, indices: Sequence[int]
    ) -> tuple[list[tuple[Tensor | None, Tensor]], float]:
        captured: dict[int, Tensor] = {}

        def hook_for(i: int) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...] | None]:
            def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
                if i in captured or not args or not isinstance(args[0], Tensor):
                    return None
                x = args[0]
                alias = x.view_as(x) if x.requires_grad else x.detach().requires_grad_(True)
                captured[i] = alias
                return (alias, *args[1:])

            return hook

        handles = [modules[i].register_forward_pre_hook(hook_for(i)) for i in indices]
        try:
            loss = _mean_loss(model, loss_fn, batches[b], b)
        finally:
            for handle in handles:
                handle.remove()
        missing = [layers[i][0] for i in indices if i not in captured]
        if missing:
            raise InvalidArgument(f"layers not called by the model's forward: {missing}")
        chosen = [captured[i] for i in indices]
        grads = torch.autograd.grad(loss, chosen, create_graph=True, allow_unused=True)
        return list(zip(grads, chosen, strict=True)), float(batches[b][0].shape[0])

    with _eval_and_grad(model, []):
        return _run(
            [n for n, _ in layers],
            batches,
            build_graph,
            settings,
            progress,
            cancel,
            on_choice,
        )
