"""Find a model's quantizable layers and what each one costs to run.

The quantizable layers are the ``nn.Conv1d/2d/3d`` and ``nn.Linear`` modules
that the forward pass actually calls, named by their qualified name from
``named_modules()`` (stable across runs and processes) and listed in the order
of their first call. For each we record the weight shape and the
multiply-accumulates (MACs) for ONE sample at the model's input shape:

- convolution: output elements x (in_channels / groups) x prod(kernel)
- linear: output elements x in_features (covers any leading dimensions)

A layer called twice in one forward counts its MACs twice.

``parameters`` counts the weight's elements only, as HAWQ-V3 does: it is what
gets quantized at the weight format's width. The bias (kept at high
precision by integer runtimes) is reported apart in ``bias_parameters``.

How the MACs are measured depends on the model:

- an eager ``nn.Module``: forward hooks on the Conv/Linear modules;
- a TorchScript module (hooks are not supported on it) or a ``torch.export``
  program (its convolutions are graph nodes, not modules): a dispatch mode
  sees every convolution and matrix product, and the weight operand's storage
  says which parameter, hence which layer, it belongs to.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from bitmesh.errors import InvalidArgument
from bitmesh.models.loading import probe_forward

__all__ = [
    "QUANTIZABLE_TYPES",
    "LayerProfile",
    "discover_layers",
    "total_macs",
    "weight_coverage",
    "weight_parameters",
]

logger = logging.getLogger(__name__)

#: Module types whose weights bitmesh quantizes.
QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

_KINDS = ("conv1d", "conv2d", "conv3d", "linear")
_KIND_BY_TYPE_NAME = {
    "Conv1d": "conv1d",
    "Conv2d": "conv2d",
    "Conv3d": "conv3d",
    "Linear": "linear",
}
_CONV_KIND_BY_WEIGHT_NDIM = {3: "conv1d", 4: "conv2d", 5: "conv3d"}

_aten = torch.ops.aten
_CONV_OPS = {_aten.convolution, _aten._convolution, _aten.conv1d, _aten.conv2d, _aten.conv3d}
_TRANSPOSED_ARG = {_aten.convolution: 6, _aten._convolution: 6}


@dataclass(frozen=True)
class LayerProfile:
    """One quantizable layer: identity, weight geometry and per-sample MACs."""

    name: str
    kind: str
    parameters: int
    weight_shape: tuple[int, ...]
    output_channels: int
    macs: int
    bias_parameters: int = 0


def total_macs(layers: Iterable[LayerProfile]) -> int:
    """MACs of one forward pass over all the given layers."""
    return sum(layer.macs for layer in layers)


def weight_parameters(model: nn.Module) -> int:
    """Elements of every parameter tensor with 2 or more dimensions.

    These are what a quantizer could store narrower: layer weights, and also
    embeddings or position tables no layer owns. Biases and norm scales (1-D)
    stay float in every integer runtime, so they are not counted.
    """
    return sum(p.numel() for p in model.parameters() if p.ndim >= 2)


def weight_coverage(model: nn.Module, layers: Iterable[LayerProfile]) -> float:
    """The share of :func:`weight_parameters` the discovered layers hold (1.0 when none)."""
    total = weight_parameters(model)
    return sum(layer.parameters for layer in layers) / total if total else 1.0


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the measuring forward, the caller's mode restored after.

    Exported programs refuse ``eval()``/``train()``: their mode is fixed.
    """
    was_training = model.training
    try:
        model.eval()
        switched = True
    except NotImplementedError:
        switched = False
    try:
        yield
    finally:
        if switched:
            model.train(was_training)


def _kind_of_module(module: nn.Module) -> str:
    for cls, kind in zip(QUANTIZABLE_TYPES, _KINDS, strict=True):
        if isinstance(module, cls):
            return kind
    raise AssertionError(f"not a quantizable module: {type(module).__name__}")


def _weight_of(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _module_macs(module: nn.Module, output: torch.Tensor) -> int:
    # Linear weight is (out, in); conv weight is (out, in / groups, *kernel):
    # either way one output element costs prod(weight.shape[1:]) MACs.
    return output.numel() * math.prod(_weight_of(module).shape[1:])


def _profile(
    name: str, kind: str, weight: torch.Tensor, bias: torch.Tensor | None, macs: int
) -> LayerProfile:
    return LayerProfile(
        name=name,
        kind=kind,
        parameters=weight.numel(),
        weight_shape=tuple(weight.shape),
        output_channels=int(weight.shape[0]),
        macs=macs,
        bias_parameters=0 if bias is None else bias.numel(),
    )


def _discover_with_hooks(
    model: nn.Module, candidates: list[tuple[str, nn.Module]], input_shape: tuple[int, ...]
) -> list[LayerProfile]:
    macs_by_name: dict[str, int] = {}  # insertion order = order of first call

    def make_hook(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                macs_by_name[name] = macs_by_name.get(name, 0) + _module_macs(module, output)

        return hook

    handles = [module.register_forward_hook(make_hook(name)) for name, module in candidates]
    try:
        with _eval_mode(model):
            probe_forward(model, input_shape)
    finally:
        for handle in handles:
            handle.remove()
    modules = dict(candidates)
    never_called = [name for name, _ in candidates if name not in macs_by_name]
    if never_called:
        logger.warning(
            "skipping %d Conv/Linear modules the forward never calls as modules "
            "(unused, or used through their weights only): %s",
            len(never_called),
            ", ".join(never_called[:5]),
        )
    return [
        _profile(
            name,
            _kind_of_module(modules[name]),
            _weight_of(modules[name]),
            getattr(modules[name], "bias", None),
            macs,
        )
        for name, macs in macs_by_name.items()
    ]


class _MacCounter(TorchDispatchMode):
    """Attributes each convolution / matrix product to the parameter it multiplies by."""

    def __init__(self, weights_by_storage: dict[int, str]) -> None:
        super().__init__()
        self._weights_by_storage = weights_by_storage
        self.macs_by_name: dict[str, int] = {}

    def _owner(self, *tensors: object) -> str | None:
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor) and tensor.numel() > 0:
                name = self._weights_by_storage.get(tensor.untyped_storage().data_ptr())
                if name is not None:
                    return name
        return None

    def _record(self, name: str | None, macs: int) -> None:
        if name is not None:
            self.macs_by_name[name] = self.macs_by_name.get(name, 0) + macs

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet in _CONV_OPS:
            transposed_at = _TRANSPOSED_ARG.get(packet)
            if transposed_at is None or not args[transposed_at]:
                weight = args[1]
                self._record(self._owner(weight), out.numel() * math.prod(weight.shape[1:]))
        elif packet is _aten.linear:
            weight = args[1]
            self._record(self._owner(weight), out.numel() * weight.shape[1])
        elif packet in (_aten.mm, _aten.addmm):
            left, right = (args[0], args[1]) if packet is _aten.mm else (args[1], args[2])
            macs = left.shape[0] * left.shape[1] * right.shape[1]
            self._record(self._owner(right, left), macs)
        return out


def _allowed_graph_layers(model: nn.Module) -> set[str] | None:
    """Names of Conv/Linear modules recorded in an exported graph's metadata.

    None when the graph carries no module metadata (then every convolution and
    matrix product with a parameter weight counts).
    """
    if not isinstance(model, torch.fx.GraphModule):
        return None
    allowed: set[str] = set()
    seen_metadata = False
    for node in model.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        seen_metadata = True
        for path, module_type in stack.values():
            type_name = getattr(module_type, "__name__", str(module_type)).rsplit(".", 1)[-1]
            if type_name in _KIND_BY_TYPE_NAME:
                allowed.add(str(path))
    return allowed if seen_metadata else None


def _discover_by_dispatch(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerProfile]:
    parameters = dict(model.named_parameters())
    weights_by_storage = {
        param.untyped_storage().data_ptr(): name.removesuffix(".weight")
        for name, param in parameters.items()
        if name.endswith(".weight") and 2 <= param.ndim <= 5 and param.numel() > 0
    }
    counter = _MacCounter(weights_by_storage)
    with _eval_mode(model), counter:
        probe_forward(model, input_shape)
    owners = dict(model.named_modules())
    allowed = _allowed_graph_layers(model)
    layers = []
    for name, macs in counter.macs_by_name.items():
        weight = parameters[f"{name}.weight"]
        original = getattr(owners.get(name), "original_name", None)  # TorchScript only
        if original is not None:
            kind = _KIND_BY_TYPE_NAME.get(original)
            if kind is None:
                continue
        else:
            if allowed is not None and name not in allowed:
                continue
            kind = "linear" if weight.ndim == 2 else _CONV_KIND_BY_WEIGHT_NDIM[weight.ndim]
        layers.append(_profile(name, kind, weight, parameters.get(f"{name}.bias"), macs))
    return layers


def discover_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerProfile]:
    """The model's quantizable layers in forward order, with MACs for one sample.

    Raises InvalidArgument when the input shape does not fit the model or the
    model has no Conv/Linear layer.
    """
    input_shape = tuple(input_shape)
    if isinstance(model, torch.jit.ScriptModule):
        layers = _discover_by_dispatch(model, input_shape)
    else:
        candidates = [
            (name, module)
            for name, module in model.named_modules()
            if isinstance(module, QUANTIZABLE_TYPES)
        ]
        if candidates:
            layers = _discover_with_hooks(model, candidates, input_shape)
        elif isinstance(model, torch.fx.GraphModule):
            layers = _discover_by_dispatch(model, input_shape)
        else:
            layers = []
    if not layers:
        raise InvalidArgument("model has no quantizable (Conv/Linear) layers")
    return layers
