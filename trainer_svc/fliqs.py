"""FLIQS one-shot search: the policy, its reward and its update (METHODS.md section 5).

A :class:`Controller` holds one categorical distribution per decision (a
layer, a tied group of layers, or with ``separate_activation`` a layer's
weight and its activation apart) over the formats of the search space. Each
step it samples a configuration (uniformly during the warm-up), the supernet
trains one step at it, and the controller is updated on the TuNAS absolute
reward with a moving-average baseline and the cosine entropy penalty. The
controller plugs into the ordinary training loop as a hook (``before_step``
/ ``after_step``), so a search step is a QAT step plus well under a
millisecond of policy arithmetic (numpy, closed-form gradients).

Quality ``Q_t`` is by default the negative cross-entropy of the step's own
training batch, computed by the forward pass the weight update needs anyway;
``SearchHook(quality=...)`` takes it from held-out data instead (TuNAS'
validation batch), which costs one more forward pass per step (measured
1.3-1.6x a QAT step on digits_cnn).

The gradient estimator (see :class:`Controller`): REINFORCE for the quality,
the exact conditional expectation for the cost penalty (the cost model is
known and cheap), unbiased either way; the published single-baseline form is
``ControllerSettings(counterfactual_cost=False)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bitmesh.formats import NumericFormat, QuantOption
from bitmesh.models.layers import LayerProfile
from bitmesh.quant.qmodel import LayerSpace, QuantLayer
from trainer_svc.schedules import cosine_entropy_beta

Role = Literal["both", "weight", "activation"]


@dataclass(frozen=True)
class Decision:
    """One categorical choice of the policy and the layers it sets."""

    name: str
    layers: tuple[str, ...]
    role: Role


def build_decisions(
    layer_names: Sequence[str], tie_groups: Sequence[Sequence[str]], separate: bool
) -> list[Decision]:
    """Decisions in layer order: one per untied layer or tie group (two with
    ``separate``: weight and activation)."""
    group_of = {layer: tuple(group) for group in tie_groups for layer in group}
    units: list[tuple[str, ...]] = []
    for name in layer_names:
        unit = group_of.get(name, (name,))
        if unit not in units:
            units.append(unit)
    decisions = []
    for unit in units:
        label = ",".join(unit)
        if separate:
            decisions.append(Decision(f"{label}:weight", unit, "weight"))
            decisions.append(Decision(f"{label}:activation", unit, "activation"))
        else:
            decisions.append(Decision(label, unit, "both"))
    return decisions


def cost_penalty(cost: float, target: float, beta: float, one_sided: bool) -> float:
    """beta |C / T - 1| (one-sided: beta max(0, C / T - 1))."""
    excess = cost / target - 1.0
    return beta * (max(0.0, excess) if one_sided else abs(excess))


def tunas_reward(quality: float, cost: float, target: float, beta: float, one_sided: bool) -> float:
    """TuNAS' absolute reward Q - beta |C / T - 1| (one-sided: beta max(0, C / T - 1))."""
    return quality - cost_penalty(cost, target, beta, one_sided)


def categorical_entropy(logits: Tensor) -> Tensor:
    """Entropy in nats of each row's softmax distribution."""
    log_p = F.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


class SampledCost:
    """The cost of a sampled configuration in a few multiply-adds.

    Per layer it keeps (MACs or weight count, weight decision, activation
    decision); the bits of choice ``k`` are ``bits[k]``. BOPs = MACs x b_w x
    b_a, size = P x b_w / 8, or ``weight_bytes[layer][k]`` when given (the
    bytes with the format's scales, ``costing.weight_bytes_table``); layers
    outside the search count at FP32.
    """

    def __init__(
        self,
        layers: Sequence[LayerProfile],
        decisions: Sequence[Decision],
        bits: Sequence[int],
        axis: str,
        weight_bytes: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        self.bits = list(bits)
        self.axis = axis
        # Per term (searched layer), the bytes of each choice (size axis).
        self.sizes: list[list[float]] = []
        weight_of: dict[str, int] = {}
        activation_of: dict[str, int] = {}
        for index, decision in enumerate(decisions):
            for layer in decision.layers:
                if decision.role in ("both", "weight"):
                    weight_of[layer] = index
                if decision.role in ("both", "activation"):
                    activation_of[layer] = index
        self.terms: list[tuple[int, int, int]] = []
        self.fixed = 0.0
        for p in layers:
            amount = p.macs if axis == "bops" else p.parameters
            if p.name in weight_of:
                self.terms.append((amount, weight_of[p.name], activation_of[p.name]))
                self.sizes.append(
                    list(weight_bytes[p.name])
                    if weight_bytes is not None
                    else [p.parameters * b / 8 for b in self.bits]
                )
            else:
                self.fixed += amount * 32 * 32 if axis == "bops" else amount * 32 / 8
        self.num_decisions = len(decisions)
        # The terms each decision changes (a weight or an activation decision).
        self.touched: list[list[int]] = [[] for _ in decisions]
        for index, (_, w, a) in enumerate(self.terms):
            self.touched[w].append(index)
            if a != w:
                self.touched[a].append(index)

    def _term(self, index: int, actions: Sequence[int]) -> float:
        n, w, a = self.terms[index]
        if self.axis == "bops":
            return float(n * self.bits[actions[w]] * self.bits[actions[a]])
        return self.sizes[index][actions[w]]

    def __call__(self, actions: Sequence[int]) -> float:
        return self.fixed + sum(self._term(i, actions) for i in range(len(self.terms)))

    def counterfactuals(self, actions: Sequence[int]) -> list[list[float]]:
        """``[d][k]``: the cost had decision ``d`` taken choice ``k`` instead,
        the others as sampled (for the counterfactual cost baseline)."""
        total = self(actions)
        table = []
        changed = list(actions)
        for d in range(self.num_decisions):
            own = sum(self._term(i, actions) for i in self.touched[d])
            row = []
            for k in range(len(self.bits)):
                changed[d] = k
                row.append(total - own + sum(self._term(i, changed) for i in self.touched[d]))
            changed[d] = actions[d]
            table.append(row)
        return table


def controller_loss(
    logits: Tensor,
    actions: Sequence[int],
    advantage: float,
    entropy_beta: float,
    penalties: Sequence[Sequence[float]] | None = None,
) -> Tensor:
    """The controller's loss, whose gradient :func:`policy_gradient` computes
    in closed form: ``-advantage * sum_d log pi_d(a_d) + beta * sum_d H(pi_d)``
    plus, with ``penalties[d][k]`` (the cost penalty had decision d chosen k),
    ``sum_d sum_k pi_dk penalties[d][k]``."""
    log_p = F.log_softmax(logits, dim=-1)
    chosen = log_p[torch.arange(len(actions)), torch.as_tensor(list(actions))].sum()
    loss = -advantage * chosen + entropy_beta * categorical_entropy(logits).sum()
    if penalties is not None:
        loss = loss + (log_p.exp() * torch.tensor(penalties, dtype=log_p.dtype)).sum()
    return loss


def policy_gradient(
    logits: Tensor,
    actions: Sequence[int],
    advantage: float,
    entropy_beta: float,
    penalties: Sequence[Sequence[float]] | None = None,
) -> Tensor:
    """d controller_loss / d logits in closed form, with p = softmax(logits):

    - d log pi_d(a_d) / d theta_d = onehot(a_d) - p_d
    - d H_d / d theta_d = -p_d (log p_d + H_d)
    - d sum_k p_dk c_dk / d theta_d = p_d (c_d - sum_k p_dk c_dk)

    In numpy: the arrays are a few dozen numbers, and torch's multi-threaded
    kernels cost milliseconds per call on them on a busy CPU (measured 11 ms
    for one softmax of 3 x 4 with two threads), numpy microseconds.
    """
    log_p = _log_softmax(logits.detach().cpu().double().numpy())
    p = np.exp(log_p)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(actions)), np.asarray(actions)] = 1.0
    entropy = -(p * log_p).sum(axis=-1, keepdims=True)
    grad = -advantage * (onehot - p) - entropy_beta * p * (log_p + entropy)
    if penalties is not None:
        c = np.asarray(penalties, dtype=np.float64)
        grad = grad + p * (c - (p * c).sum(axis=-1, keepdims=True))
    return torch.from_numpy(grad).to(logits.dtype)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    out: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


@dataclass(frozen=True)
class ControllerSettings:
    learning_rate: float
    baseline_momentum: float
    entropy_beta_max: float
    warmup_steps: int
    total_steps: int
    cost_beta: float
    target: float
    one_sided: bool
    seed: int
    counterfactual_cost: bool = True
    adam_beta2: float = 0.95


class Controller:
    """REINFORCE over independent categorical decisions (logits start equal).

    The reward is TuNAS' absolute reward r = Q - penalty(C), the baseline a
    moving average, as in FLIQS. With ``counterfactual_cost`` (the default)
    the gradient of E[r] is estimated with less variance but no bias: the
    quality part by REINFORCE with the moving average of Q as baseline, and
    each decision's cost part exactly, as the gradient of
    ``sum_k pi_dk penalty(C(a_-d, k))`` (its own choice summed out, the others
    as sampled; the cost model is cheap and known, so nothing needs sampling).
    Measured on digits_cnn, the single-baseline form let the big layers' cost
    swings drown the small layers' signal (their formats were left to chance
    and a one-sided BOPs target was missed by up to 12 %) and pushed
    equal-cost formats (int4 / e2m1) around at random.
    ``counterfactual_cost=False`` is the published single-baseline form.
    """

    def __init__(self, num_decisions: int, num_choices: int, settings: ControllerSettings) -> None:
        self.settings = settings
        self.logits = torch.zeros(num_decisions, num_choices, requires_grad=True)
        self.optimizer = torch.optim.Adam(
            [self.logits], lr=settings.learning_rate, betas=(0.9, settings.adam_beta2)
        )
        self.generator = torch.Generator().manual_seed(settings.seed + 7919)
        self.baseline: float | None = None

    def _log_probs(self) -> np.ndarray:
        return _log_softmax(self.logits.detach().double().numpy())

    def sample(self, step: int) -> list[int]:
        """Uniform during the warm-up, then from the policy (inverse CDF of
        uniforms from the controller's own torch generator, so the draws are
        in its checkpointed state)."""
        rows, choices = self.logits.shape
        uniforms = torch.rand(rows, generator=self.generator, dtype=torch.float64).numpy()
        if step < self.settings.warmup_steps:
            drawn = np.minimum((uniforms * choices).astype(np.int64), choices - 1)
        else:
            cumulative = np.cumsum(np.exp(self._log_probs()), axis=-1)
            drawn = (uniforms[:, None] >= cumulative[:, :-1]).sum(axis=-1)
        return [int(a) for a in drawn]

    def _penalty(self, cost: float) -> float:
        s = self.settings
        return cost_penalty(cost, s.target, s.cost_beta, s.one_sided)

    def update(
        self,
        step: int,
        actions: Sequence[int],
        quality: float,
        cost: float,
        counterfactuals: Sequence[Sequence[float]] | None = None,
    ) -> dict[str, float]:
        """One REINFORCE step; the baseline also learns during the warm-up, the
        policy only after it (the warm-up samples are not the policy's).
        ``counterfactuals[d][k]`` (from :meth:`SampledCost.counterfactuals`)
        is needed with ``counterfactual_cost``."""
        s = self.settings
        penalty = self._penalty(cost)
        reward = quality - penalty
        split = s.counterfactual_cost and counterfactuals is not None
        tracked = quality if split else reward
        if self.baseline is None:
            self.baseline = tracked
        else:
            self.baseline = (
                s.baseline_momentum * self.baseline + (1 - s.baseline_momentum) * tracked
            )
        beta = cosine_entropy_beta(step, s.total_steps, s.warmup_steps, s.entropy_beta_max)
        if step >= s.warmup_steps:
            if split:
                assert counterfactuals is not None
                penalties = [[self._penalty(c) for c in row] for row in counterfactuals]
                grad = policy_gradient(
                    self.logits.detach(), actions, quality - self.baseline, beta, penalties
                )
            else:
                grad = policy_gradient(self.logits.detach(), actions, reward - self.baseline, beta)
            self.logits.grad = grad
            self.optimizer.step()
        return {"reward": reward, "entropy_beta": beta}

    def mean_entropy(self) -> float:
        """Mean nats per decision (0: deterministic)."""
        log_p = self._log_probs()
        return float(-(np.exp(log_p) * log_p).sum(axis=-1).mean())

    def argmax(self) -> list[int]:
        return [int(a) for a in self.logits.detach().argmax(dim=-1).tolist()]

    def probabilities(self) -> list[list[float]]:
        return [[float(p) for p in row] for row in np.exp(self._log_probs())]

    def state_dict(self) -> dict[str, Any]:
        return {
            "logits": self.logits.detach().clone(),
            "optimizer": self.optimizer.state_dict(),
            "baseline": self.baseline,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = state["baseline"]
        self.generator.set_state(state["generator"])


def search_spaces(
    layer_names: Sequence[str], formats: Sequence[NumericFormat], granularity: Any
) -> dict[str, LayerSpace]:
    """Every searched layer gets the whole space for weights and activations."""
    space = LayerSpace(tuple(formats), tuple(formats), granularity)
    return {name: space for name in layer_names}


QualityFn = Callable[[int], float]


class SearchHook:
    """Plugs a controller into the training loop: set formats, then learn.

    ``quality(step)``, when given, measures Q_t after the weight update on
    data the weights never train on (TuNAS' validation batch); without it Q_t
    is the negative loss of the step's own training batch, which costs
    nothing but is a weak signal once the weights fit the training data.
    """

    def __init__(
        self,
        controller: Controller,
        decisions: Sequence[Decision],
        layers: Mapping[str, QuantLayer],
        cost: SampledCost,
        quality: QualityFn | None = None,
    ) -> None:
        self.controller = controller
        self.decisions = list(decisions)
        self.layers = layers
        self.cost = cost
        self.quality = quality
        self._actions: list[int] = []
        # (layer, weight decision, activation decision), resolved once.
        weight_of: dict[str, int] = {}
        activation_of: dict[str, int] = {}
        for index, decision in enumerate(self.decisions):
            for name in decision.layers:
                if decision.role in ("both", "weight"):
                    weight_of[name] = index
                if decision.role in ("both", "activation"):
                    activation_of[name] = index
        self._wiring = [(layers[n], weight_of[n], activation_of[n]) for n in weight_of]

    def apply(self, actions: Sequence[int]) -> None:
        """Switch every layer to the sampled formats: two integer writes per layer."""
        for layer, w, a in self._wiring:
            layer.w_index = actions[w]
            layer.a_index = actions[a]

    def before_step(self, step: int) -> None:
        self._actions = self.controller.sample(step)
        self.apply(self._actions)

    def after_step(self, step: int, loss: float) -> dict[str, float]:
        sampled = self.cost(self._actions)
        counterfactuals = (
            self.cost.counterfactuals(self._actions)
            if self.controller.settings.counterfactual_cost
            else None
        )
        quality = self.quality(step) if self.quality is not None else -loss
        self.controller.update(step, self._actions, quality, sampled, counterfactuals)
        return {"entropy": self.controller.mean_entropy(), "sampled_cost": sampled}

    def finish(self) -> dict[str, QuantOption]:
        """Apply the argmax configuration and return it (effective formats)."""
        actions = self.controller.argmax()
        self.apply(actions)
        return {name: self.layers[name].option for name in self.layers}

    def state_dict(self) -> dict[str, Any]:
        return self.controller.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.controller.load_state_dict(state)

    def policy(self, formats: Sequence[NumericFormat]) -> dict[str, dict[str, float]]:
        """Each decision's probabilities by format name (for the result)."""
        return {
            d.name: {f.name: p for f, p in zip(formats, row, strict=True)}
            for d, row in zip(self.decisions, self.controller.probabilities(), strict=True)
        }
