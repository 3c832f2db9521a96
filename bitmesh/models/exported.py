"""Give a loaded ``torch.export`` program its Conv/Linear modules back.

``ExportedProgram.module()`` is a GraphModule whose convolutions and linear
layers are calls of ``aten.conv2d`` / ``aten.linear`` on parameters held by
plain containers: there is no ``nn.Conv2d`` left to fake-quantize, so QAT,
calibration and search (which wrap Conv/Linear modules) could not run on a
``.pt2`` at all. :func:`lift_layers` turns each such call back into a call of
a real module that owns the very same parameters under the same qualified
name (``layer1.0.conv1.weight`` stays ``layer1.0.conv1.weight``), so the
state_dict, the layer names every service reports and the exported graph are
unchanged, and everything that works on a torchvision model works on the
program.

The program's own train/eval behaviour was fixed when it was exported
(BatchNorm reads its running statistics, dropout is as captured), which is
why torch refuses ``train()`` on it. The quantizers bitmesh wraps around the
lifted layers do need the flag (ranges update while training), so
:func:`allow_mode_switch` gives the module plain ``nn.Module.train`` back: it
sets the flag on every submodule and changes nothing in the captured graph.

A program must have a dynamic batch dimension
(:func:`require_dynamic_batch`): bitmesh runs it on one-sample probes,
training batches and a shorter last batch, and a program exported with a
static batch refuses every other size inside a job.

Calls whose weight is not a parameter of its own (shared or computed weights,
string padding) are left as they are: the layer then stays float, as a
module the wrappers do not know would.
"""

from __future__ import annotations

import types
from collections import Counter
from typing import Any

import torch
from torch import fx, nn

from bitmesh.errors import InvalidArgument
from bitmesh.models.model_files import EXPORT_COMMAND

__all__ = ["allow_mode_switch", "lift_layers", "require_dynamic_batch"]

_CONVS: dict[Any, type[nn.Module]] = {
    torch.ops.aten.conv1d.default: nn.Conv1d,
    torch.ops.aten.conv2d.default: nn.Conv2d,
    torch.ops.aten.conv3d.default: nn.Conv3d,
}
_LINEAR = torch.ops.aten.linear.default
#: aten.convNd's positional defaults after (input, weight, bias).
_CONV_DEFAULTS = (1, 0, 1, 1)  # stride, padding, dilation, groups


def _attr_target(node: Any) -> str | None:
    if isinstance(node, fx.Node) and node.op == "get_attr" and isinstance(node.target, str):
        return node.target
    return None


def _module_for(node: fx.Node, weight: nn.Parameter, bias: nn.Parameter | None) -> nn.Module:
    if node.target is _LINEAR:
        module: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        given: list[Any] = list(node.args[3:])
        stride, padding, dilation, groups = given + list(_CONV_DEFAULTS[len(given) :])
        module = _CONVS[node.target](
            weight.shape[1] * int(groups),
            weight.shape[0],
            tuple(weight.shape[2:]),
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias is not None,
        )
    module.weight = weight
    if bias is not None:
        module.bias = bias
    return module


def lift_layers(graph_module: fx.GraphModule) -> int:
    """Replace conv/linear calls on own parameters by module calls, in place;
    returns how many were lifted."""
    graph = graph_module.graph
    calls = [
        n
        for n in graph.nodes
        if n.op == "call_function" and (n.target in _CONVS or n.target is _LINEAR)
    ]
    uses = Counter(_attr_target(n.args[1]) for n in calls)
    lifted = 0
    for node in calls:
        weight_name = _attr_target(node.args[1])
        bias_arg = node.args[2] if len(node.args) > 2 else None
        bias_name = _attr_target(bias_arg)
        if (
            weight_name is None
            or uses[weight_name] != 1
            or not weight_name.endswith(".weight")
            or (bias_arg is not None and bias_name != weight_name.removesuffix("weight") + "bias")
            or node.kwargs
        ):
            continue
        owner = weight_name.removesuffix(".weight")
        weight = graph_module.get_parameter(weight_name)
        bias = graph_module.get_parameter(bias_name) if bias_name else None
        container = graph_module.get_submodule(owner)
        if set(dict(container.named_parameters())) - {"weight", "bias"} or any(
            True for _ in container.children()
        ):
            continue  # the owner holds more than this layer: leave it alone
        parent_name, _, leaf = owner.rpartition(".")
        setattr(graph_module.get_submodule(parent_name), leaf, _module_for(node, weight, bias))
        with graph.inserting_before(node):
            call = graph.call_module(owner, (node.args[0],))
        weight_node = node.args[1]
        node.replace_all_uses_with(call)
        graph.erase_node(node)
        for arg in (weight_node, bias_arg):
            if isinstance(arg, fx.Node) and not arg.users:
                graph.erase_node(arg)
        lifted += 1
    if lifted:
        graph.lint()
        graph_module.recompile()
    return lifted


def allow_mode_switch(module: nn.Module) -> None:
    """Let ``train()``/``eval()`` set the flag only (see the module docstring)."""
    module.train = types.MethodType(nn.Module.train, module)  # type: ignore[method-assign]
    module.eval = types.MethodType(nn.Module.eval, module)  # type: ignore[method-assign]


def require_dynamic_batch(program: torch.export.ExportedProgram, shown: str) -> None:
    """Raise InvalidArgument unless the program's first input has a symbolic
    (dynamic) batch dimension; ``shown`` names the file in the message."""
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        value = node.meta.get("val")
        shape = getattr(value, "shape", None)
        if shape is None or len(shape) == 0 or not isinstance(shape[0], int):
            return  # a SymInt (dynamic), or not a tensor: nothing to refuse
        raise InvalidArgument(
            f"{shown!r} was exported with a static batch dimension ({shape[0]}); bitmesh "
            "runs it on batches of other sizes: export it again with a dynamic batch, "
            f"{EXPORT_COMMAND}"
        )
