"""Fake-quantized models: a model's Conv/Linear layers wrapped with weight and
activation quantizers, switchable among candidate formats by setting an index.

One wrapper serves every consumer: QAT and post-training calibration wrap
each layer with a single option; the one-shot search (FLIQS) wraps each layer
with its whole search space and switches formats every step. Switching is
setting two integers (``w_index``, ``a_index``): no module is rebuilt, so a
search step costs about what a QAT step costs.

What a wrapped layer computes (METHODS.md sections 1, 5 and 6):

- Its *input* activation is fake-quantized per tensor. The clip comes from a
  running range (``RangeEstimator``: min/max, EMA, percentile), updated in
  training mode or while ``observing`` (calibration), frozen otherwise. With
  ``learn_clips`` the clip is a parameter instead, initialised from the first
  batch's range and trained with the LSQ/PACT gradient of the fake quantizer
  (scaled by LSQ's ``1 / sqrt(n * qmax)`` so its step size is that of a
  weight).
- Switchable clipping (FLIQS): with ``switchable_clipping`` every activation
  format keeps its own clip (a slot per format), all formats sharing the
  weights, so training one format never moves another's clip. Off, all
  formats share one slot. A slot's clip is format-specific when learned, or
  with ``clip_refresh``: the running range times the ratio (from
  ``clip_ratios``) whose quantization MSE on the live batch is least, picked
  again every ``clip_refresh`` training calls of that slot. The MSE pick costs
  a few forward-only quantizations now and then; a learned clip's gradient
  costs every backward pass (measured +13 % per search step on digits_cnn).
- Its weight is fake-quantized per output channel (or per tensor) with the
  clip max |w|, recomputed from the current weights at every call: weight
  scales need no state, so formats cannot disturb one another.
- ``unsigned_activations``: an INT activation format on a layer whose input
  was never negative in the probe batch (it follows a ReLU) uses the unsigned
  grid of the same width (``int4`` -> ``uint4``), as HAWQ-V3 does; the costs
  are unchanged (same bits). The effective formats are what
  :func:`effective_config` reports.
- ``fold_bn``: a BatchNorm that consumes a convolution's output (and nothing
  else does) is folded into that convolution with its *running* statistics,
  which are then frozen (Jacob et al. 2018's "freeze BN" from the start), so
  the quantized weights are the ones an integer runtime would use. Folding is
  meant for QAT that starts from a trained model; gamma and beta stay
  trainable.

- Block-scaled formats (MX, NVFP4, per-group INT): the weight blocks along
  its input channels (dim 1) with scales from each block, recomputed every
  call like any weight scale; an activation blocks along its channel axis
  (dim 1 of a convolution's input, the last dim of a Linear's) with scales
  from each block of the live tensor, as block-scaled matmuls quantize both
  operands. Only NVFP4 uses the running range (as its tensor scale, as
  ModelOpt calibrates it); the MX and group recipes need none, so learned
  clips and clip refreshes do not apply to them.

Layers a configuration does not name are left as they are (FP32) and cost
nothing extra.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitmesh.errors import FailedPrecondition, InvalidArgument
from bitmesh.formats import FORMATS, FormatKind, Granularity, NumericFormat, QuantOption
from bitmesh.models.attention import torchvision_state_keys
from bitmesh.quant.fake_quant import fake_quantize, quant_range
from bitmesh.quant.range_estimators import RangeEstimator, update_range

__all__ = [
    "LayerSpace",
    "QuantLayer",
    "QuantSettings",
    "apply_config",
    "effective_config",
    "find_conv_bn_pairs",
    "observing",
    "plain_state_dict",
    "quantize_model",
    "quantizer_state",
    "wrap_with_config",
]

_WRAPPABLE: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BATCH_NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_MIN_CLIP = 1e-6


@dataclass(frozen=True)
class LayerSpace:
    """The candidate formats of one wrapped layer; one option is a space of one.

    ``granularity`` is that of the weight scale (activations are per tensor).
    """

    weight_formats: tuple[NumericFormat, ...]
    activation_formats: tuple[NumericFormat, ...]
    granularity: Granularity = Granularity.PER_CHANNEL

    def __post_init__(self) -> None:
        if not self.weight_formats or not self.activation_formats:
            raise InvalidArgument("a layer needs at least one weight and one activation format")
        for fmt in self.weight_formats:
            if fmt.kind is FormatKind.INT and not fmt.signed and not fmt.is_blocked:
                raise InvalidArgument(
                    f"weight format {fmt.name} is unsigned; weights are quantized "
                    f"symmetrically, use int{fmt.bits}"
                )

    @classmethod
    def of_option(cls, option: QuantOption) -> LayerSpace:
        return cls((option.weight,), (option.activation,), option.granularity)


@dataclass(frozen=True)
class QuantSettings:
    """How wrapped layers keep their clips (see the module docstring)."""

    estimator: RangeEstimator = field(default_factory=RangeEstimator)
    learn_clips: bool = False
    switchable_clipping: bool = True
    #: Every this many training calls of a slot, re-pick its clip as the
    #: running range times the ratio of ``clip_ratios`` with the least
    #: quantization MSE on the live batch (0: the running range as is).
    clip_refresh: int = 0
    clip_ratios: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
    fold_bn: bool = False
    unsigned_activations: bool = True


def _effective_activation(
    fmt: NumericFormat, nonnegative: bool, settings: QuantSettings
) -> NumericFormat:
    if (
        settings.unsigned_activations
        and nonnegative
        and fmt.kind is FormatKind.INT
        and fmt.signed
        and not fmt.is_blocked
    ):
        return FORMATS[f"uint{fmt.bits}"]
    return fmt


def _grad_scaled(value: Tensor, scale: float) -> Tensor:
    """``value`` in the forward pass, ``scale * grad`` in the backward pass (LSQ)."""
    scaled = value * scale
    return (value - scaled).detach() + scaled


class _LearnedClipQuant(torch.autograd.Function):
    """Fake quantization with a learned per-tensor clip, gradients by hand.

    The same values and gradients as ``fake_quantize(x, fmt, clip=clip)``
    through autograd (straight-through for x; LSQ/PACT for the clip:
    d x_hat / d s = Q(v) - v inside the range, the clamped bound outside),
    but the forward pass runs without a graph and the backward pass is one
    fused expression: about a third less time per call, which is most of
    what learned clips add to a search step.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        clip: Tensor,
        fmt: NumericFormat,
        grad_scale: float,
    ) -> Tensor:
        with torch.no_grad():
            out = fake_quantize(x, fmt, clip=clip)
        ctx.save_for_backward(x, out, clip)
        ctx.fmt = fmt
        ctx.grad_scale = grad_scale
        return out

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad: Tensor
    ) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, out, clip = ctx.saved_tensors
        lo, hi = quant_range(ctx.fmt)
        scale = clip / hi
        v = x / scale
        inside = (v >= lo) & (v <= hi)
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_clip = None
        if ctx.needs_input_grad[1]:
            q = out / scale
            term = torch.where(inside, q - v, q)
            grad_clip = (grad * term).sum() / hi * ctx.grad_scale
        return grad_x, grad_clip, None, None


class QuantLayer(nn.Module):
    """A Conv/Linear with fake-quantized weight and input, switchable by index."""

    act_range: Tensor
    act_seen: Tensor
    clip_ready: Tensor
    clip_ratio: Tensor
    slot_calls: Tensor

    def __init__(
        self,
        inner: nn.Module,
        space: LayerSpace,
        settings: QuantSettings,
        *,
        input_nonnegative: bool = False,
        bn: nn.Module | None = None,
        bn_name: str = "",
    ) -> None:
        super().__init__()
        if not isinstance(inner, _WRAPPABLE):
            raise InvalidArgument(
                f"only Conv1d/2d/3d and Linear layers can be wrapped, not {type(inner).__name__}"
            )
        if bn is not None and not _foldable(bn):
            raise FailedPrecondition(
                "BN folding needs an affine BatchNorm that tracks running statistics"
            )
        self.inner = inner
        self.bn = bn
        self.bn_name = bn_name
        self.weight_formats = space.weight_formats
        self.activation_formats = tuple(
            _effective_activation(f, input_nonnegative, settings) for f in space.activation_formats
        )
        self.granularity = space.granularity
        self.estimator = settings.estimator
        self.switchable = settings.switchable_clipping
        self.input_nonnegative = input_nonnegative
        # Block formats block an input along its channels: dim 1 of a
        # convolution's input, the last dim of a Linear's.
        self.block_axis = -1 if isinstance(inner, nn.Linear) else 1
        self.w_index = 0
        self.a_index = 0
        self.observing = False
        slots = len(self.activation_formats) if self.switchable else 1
        self.register_buffer("act_range", torch.zeros(slots))
        self.register_buffer("act_seen", torch.zeros(slots, dtype=torch.bool))
        self.register_buffer("clip_ratio", torch.ones(slots))
        # Training calls per slot (a buffer, so a resumed job re-picks its
        # clips at the same steps as an unbroken one).
        self.register_buffer("slot_calls", torch.zeros(slots, dtype=torch.long))
        self.clip_refresh = settings.clip_refresh
        self.clip_ratios: tuple[float, ...] = settings.clip_ratios
        self.act_clip: nn.Parameter | None = None
        if settings.learn_clips:
            self.act_clip = nn.Parameter(torch.ones(slots))
            self.register_buffer("clip_ready", torch.zeros(slots, dtype=torch.bool))

    # -- switching ------------------------------------------------------------
    def set_choice(self, w_index: int, a_index: int) -> None:
        """Select candidate formats by index (what a search step does)."""
        if not (
            0 <= w_index < len(self.weight_formats) and 0 <= a_index < len(self.activation_formats)
        ):
            raise InvalidArgument(
                f"choice ({w_index}, {a_index}) is outside this layer's "
                f"{len(self.weight_formats)} x {len(self.activation_formats)} candidates"
            )
        self.w_index = w_index
        self.a_index = a_index

    @property
    def option(self) -> QuantOption:
        """The option in use (effective activation format)."""
        return QuantOption(
            weight=self.weight_formats[self.w_index],
            activation=self.activation_formats[self.a_index],
            granularity=self.granularity,
        )

    def _slot(self) -> int:
        return self.a_index if self.switchable else 0

    # -- quantizers -------------------------------------------------------------
    def activation_clip(self) -> float:
        """The clip the current activation format uses now (0 before any data)."""
        slot = self._slot()
        if self.act_clip is not None and bool(self.clip_ready[slot]):
            return float(self.act_clip[slot].detach().abs().clamp_min(_MIN_CLIP))
        return float(self.act_range[slot] * self.clip_ratio[slot])

    def _refresh_ratio(self, x: Tensor, fmt: NumericFormat, slot: int) -> None:
        """The ratio of the running range with the least quantization MSE on ``x``."""
        with torch.no_grad():
            errors = [
                float((fake_quantize(x, fmt, clip=self.act_range[slot] * r) - x).square().mean())
                for r in self.clip_ratios
            ]
        best = errors.index(min(errors))
        self.clip_ratio[slot] = self.clip_ratios[best]

    def _quantize_input(self, x: Tensor) -> Tensor:
        fmt = self.activation_formats[self.a_index]
        if not fmt.is_quantized:
            return fake_quantize(x, fmt)
        slot = self._slot()
        learned = self.act_clip is not None
        if (self.training or self.observing) and not (learned and bool(self.clip_ready[slot])):
            unsigned = fmt.kind is FormatKind.INT and not fmt.signed
            previous = self.act_range[slot] if bool(self.act_seen[slot]) else None
            with torch.no_grad():
                self.act_range[slot] = update_range(previous, x, self.estimator, unsigned=unsigned)
                self.act_seen[slot] = True
        if not bool(self.act_seen[slot]):
            raise FailedPrecondition(
                f"activation quantizer ({fmt.name}) has no range yet: run batches in training "
                "mode or calibrate before evaluating"
            )
        if fmt.is_blocked:
            return fake_quantize(
                x, fmt, clip=self.act_range[slot].clamp_min(_MIN_CLIP), block_axis=self.block_axis
            )
        if self.act_clip is None:
            if self.clip_refresh and self.training:
                if int(self.slot_calls[slot]) % self.clip_refresh == 0:
                    self._refresh_ratio(x.detach(), fmt, slot)
                self.slot_calls[slot] += 1
            return fake_quantize(x, fmt, clip=self.act_range[slot] * self.clip_ratio[slot])
        if not bool(self.clip_ready[slot]):
            with torch.no_grad():
                self.act_clip[slot] = self.act_range[slot].clamp_min(_MIN_CLIP)
                self.clip_ready[slot] = True
        hi = quant_range(fmt)[1]
        clip = self.act_clip[slot].abs().clamp_min(_MIN_CLIP)
        scale = 1.0 / math.sqrt(max(1, x.numel()) * hi)
        return cast(Tensor, _LearnedClipQuant.apply(x, clip, fmt, scale))

    def _weight_and_bias(self) -> tuple[Tensor, Tensor | None]:
        weight = cast(Tensor, self.inner.weight)
        bias = cast(Tensor | None, self.inner.bias)
        if self.bn is not None:
            gamma, beta = cast(Tensor, self.bn.weight), cast(Tensor, self.bn.bias)
            mean, var = cast(Tensor, self.bn.running_mean), cast(Tensor, self.bn.running_var)
            factor = gamma / torch.sqrt(var + float(cast(float, self.bn.eps)))
            weight = weight * factor.reshape(-1, *([1] * (weight.dim() - 1)))
            shift = mean if bias is None else mean - bias
            bias = beta - shift * factor
        fmt = self.weight_formats[self.w_index]
        if not fmt.is_identity:
            weight = fake_quantize(weight, fmt, granularity=self.granularity, axis=0)
        return weight, bias

    def forward(self, x: Tensor) -> Tensor:
        x = self._quantize_input(x)
        weight, bias = self._weight_and_bias()
        if isinstance(self.inner, nn.Linear):
            return F.linear(x, weight, bias)
        return cast(Tensor, self.inner._conv_forward(x, weight, bias))  # type: ignore[operator]

    def extra_repr(self) -> str:
        return (
            f"weight={[f.name for f in self.weight_formats]}[{self.w_index}], "
            f"activation={[f.name for f in self.activation_formats]}[{self.a_index}], "
            f"granularity={self.granularity.value}, folded_bn={self.bn is not None}"
        )


def _foldable(bn: nn.Module) -> bool:
    return (
        isinstance(bn, _BATCH_NORMS)
        and bool(getattr(bn, "affine", False))
        and getattr(bn, "running_mean", None) is not None
    )


# -- finding what to wrap ------------------------------------------------------


def find_conv_bn_pairs(model: nn.Module) -> dict[str, str]:
    """Convolutions whose only consumer is a BatchNorm: ``{conv name: bn name}``.

    Uses a torch.fx trace, which sees the data flow (hooks would not tell
    whether something else also reads the convolution's output).
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # fx raises many types on untraceable control flow
        raise FailedPrecondition(
            f"BN folding needs a model torch.fx can trace ({type(exc).__name__}: {exc}); "
            "turn fold_bn off"
        ) from exc
    modules = dict(model.named_modules())
    pairs: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(
            modules.get(str(node.target)), nn.modules.conv._ConvNd
        ):
            continue
        users = list(node.users)
        if len(users) != 1:
            continue
        user = users[0]
        if (
            user.op == "call_module"
            and _foldable(modules.get(str(user.target), nn.Identity()))
            and len(user.all_input_nodes) == 1
        ):
            pairs[str(node.target)] = str(user.target)
    return pairs


def _input_nonnegative(model: nn.Module, names: list[str], example: Tensor) -> dict[str, bool]:
    """Per layer: was its input never negative on ``example``? (eval mode, no grad)"""
    seen: dict[str, bool] = {}
    modules = dict(model.named_modules())

    def hook_for(name: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            value = bool((inputs[0] >= 0).all())
            seen[name] = seen.get(name, True) and value

        return hook

    handles = [modules[n].register_forward_pre_hook(hook_for(n)) for n in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {n: seen.get(n, False) for n in names}


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def quantize_model(
    model: nn.Module,
    spaces: Mapping[str, LayerSpace],
    settings: QuantSettings,
    example: Tensor,
) -> dict[str, QuantLayer]:
    """Wrap the named layers of ``model`` in place; return them by name (in
    ``spaces``' order). ``example`` is a real input batch: it tells which
    layers see only non-negative inputs. Create optimizers after wrapping."""
    modules = dict(model.named_modules())
    unknown = [n for n in spaces if n not in modules]
    if unknown:
        known = [n for n, m in modules.items() if isinstance(m, _WRAPPABLE)]
        raise InvalidArgument(
            f"the model has no layer {', '.join(map(repr, unknown[:5]))}; its quantizable "
            f"layers are {', '.join(known[:20])}{' ...' if len(known) > 20 else ''}"
        )
    wrong = [n for n in spaces if not isinstance(modules[n], _WRAPPABLE)]
    if wrong:
        raise InvalidArgument(
            f"layers {', '.join(wrong[:5])} are not Conv/Linear modules and cannot be quantized"
        )
    names = list(spaces)
    nonnegative = _input_nonnegative(model, names, example)
    pairs = find_conv_bn_pairs(model) if settings.fold_bn else {}
    layers: dict[str, QuantLayer] = {}
    for name in names:
        bn_name = pairs.get(name, "")
        bn = modules[bn_name] if bn_name else None
        layer = QuantLayer(
            modules[name],
            spaces[name],
            settings,
            input_nonnegative=nonnegative[name],
            bn=bn,
            bn_name=bn_name,
        )
        # Its range buffers (and learned clips) live where the layer's weight
        # does: a model already moved to the GPU gets GPU quantizers.
        layer.to(modules[name].weight.device)
        layer.train(model.training)
        _set_submodule(model, name, layer)
        if bn_name:
            _set_submodule(model, bn_name, nn.Identity())
        layers[name] = layer
    return layers


def wrap_with_config(
    model: nn.Module,
    config: Mapping[str, QuantOption],
    settings: QuantSettings,
    example: Tensor,
) -> dict[str, QuantLayer]:
    """Wrap each named layer with its one option (QAT, calibration, serving)."""
    return quantize_model(
        model, {name: LayerSpace.of_option(o) for name, o in config.items()}, settings, example
    )


def apply_config(layers: Mapping[str, QuantLayer], config: Mapping[str, QuantOption]) -> None:
    """Select, in each layer's candidates, the formats ``config`` names (by
    format name; an activation format also matches its unsigned twin)."""
    for name, option in config.items():
        layer = layers[name]
        w = [f.name for f in layer.weight_formats].index(option.weight.name)
        a_names = [f.name for f in layer.activation_formats]
        wanted = option.activation.name
        twin = _effective_activation(option.activation, True, QuantSettings()).name
        a = a_names.index(wanted if wanted in a_names else twin)
        layer.set_choice(w, a)


def effective_config(layers: Mapping[str, QuantLayer]) -> dict[str, QuantOption]:
    """The option each wrapped layer uses now (unsigned activations as applied)."""
    return {name: layer.option for name, layer in layers.items()}


@contextmanager
def observing(layers: Mapping[str, QuantLayer]) -> Iterator[None]:
    """Let activation quantizers update their ranges in eval mode (calibration:
    BN statistics stay frozen while the ranges are measured)."""
    for layer in layers.values():
        layer.observing = True
    try:
        yield
    finally:
        for layer in layers.values():
            layer.observing = False


def quantizer_state(layers: Mapping[str, QuantLayer]) -> dict[str, Tensor]:
    """What a deployment needs beyond the weights: each layer's activation clip
    for its current format (``<layer>.activation_clip``, a 0-dim tensor)."""
    return {
        f"{name}.activation_clip": torch.tensor(layer.activation_clip(), dtype=torch.float32)
        for name, layer in layers.items()
    }


def plain_state_dict(
    model: nn.Module, layers: Mapping[str, QuantLayer], *, copy: bool = True
) -> dict[str, Tensor]:
    """The wrapped model's weights under the original model's keys (a folded
    BN's parameters back under its own name), so the file loads into the
    unwrapped architecture; quantizer state is left out.

    ``copy=False`` is for a caller that serialises the result at once and
    drops it (``trainer_svc.outcome.weights_bytes``): tensors that are whole
    storages are then the model's own, not clones. Cloning a resnet18's
    45 MB was a third of publishing a job's weights. A view into a larger
    storage is still cloned, since ``torch.save`` would write all of it."""
    renames: list[tuple[str, str]] = []
    for name, layer in layers.items():
        renames.append((f"{name}.inner.", f"{name}."))
        if layer.bn_name:
            renames.append((f"{name}.bn.", f"{layer.bn_name}."))
    plain: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        for old, new in renames:
            if key.startswith(old):
                plain[new + key[len(old) :]] = _detached(value, copy)
                break
        else:
            if not any(key.startswith(f"{n}.") for n in layers):
                plain[key] = _detached(value, copy)
    return torchvision_state_keys(model, plain)


def _detached(value: Tensor, copy: bool) -> Tensor:
    tensor = value.detach()
    whole = (
        tensor.is_contiguous()
        and tensor.storage_offset() == 0
        and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    )
    return tensor if whole and not copy else tensor.clone()
