"""Refuse a ``torch.export`` program whose graph could touch files or processes.

A ``.pt2`` is code: its graph calls operators, and a few of them reach past
the tensors (``aten.from_file`` maps any file the process can read, an
extension namespace like ``c10d`` talks to other processes, ``profiler``
writes trace files). The check runs on the loaded program *before* any of it
runs (before ``program.module()`` and the probe), in the sandbox and in every
process that loads a program, and it walks every graph the program holds
(the bodies of ``while_loop``/``cond``/``map`` are graphs of their own).

Why an allowlist of namespaces plus a small denylist inside ``aten``:

- Namespaces other than ``aten`` and ``prims`` are extensions (quantized
  kernels, distributed collectives, profiler, inductor, test ops): their
  effects are whatever the library registering them does, and a program
  that needs one cannot be judged from its op names, so all are refused.
- ``aten`` has over 3,000 ops and grows with every torch release; an
  allowlist of them would refuse ordinary models after each upgrade. Its ops
  are tensor maths except a handful, listed in :data:`DENIED_ATEN`, found by
  reading the registry's names (``torch._C._dispatch_get_all_op_names()``,
  torch 2.14) for files, printing, saving and loading.
- Higher-order operators are allowed by name (control flow and grad/autocast
  wrappers, whose bodies are checked like the main graph); others (for
  instance ``auto_functionalized``, which runs an arbitrary mutating op) are
  refused.
- Plain Python callables are allowed only where the serializer puts them:
  ``operator``/``math`` arithmetic on sizes and ``torch.sym_*``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import fx

from bitmesh.errors import InvalidArgument

__all__ = ["DENIED_ATEN", "refuse_io_ops", "unsafe_calls"]

#: Op namespaces a program may call (everything else is refused).
ALLOWED_NAMESPACES = frozenset({"aten", "prims"})

#: aten ops that do file or process I/O: name -> what it does, for the message.
DENIED_ATEN: dict[str, str] = {
    "from_file": "reads files",
    "_print": "writes to the process's output",
    "save": "writes files",
    "load": "reads files",
}

#: Higher-order operators a program may use (their bodies are checked too).
ALLOWED_HIGHER_ORDER = frozenset(
    {
        "while_loop",
        "cond",
        "map_impl",
        "scan",
        "associative_scan",
        "wrap_with_set_grad_enabled",
        "wrap_with_autocast",
        "invoke_subgraph",
    }
)

#: Modules whose plain functions a serialized graph may call (size arithmetic).
_PYTHON_MODULES = frozenset({"_operator", "operator", "math"})
#: Builtins likewise (``builtins`` as a whole holds ``open``, ``exec``, ``print``).
_PYTHON_BUILTINS = frozenset({"abs", "max", "min", "round", "int", "float", "bool"})


def _graphs(program: Any) -> Iterator[fx.Graph]:
    """The program's graph and every subgraph (control-flow bodies)."""
    seen = False
    for module in program.graph_module.modules():
        if isinstance(module, fx.GraphModule):
            seen = True
            yield module.graph
    if not seen:
        yield program.graph


def _refusal(target: Any) -> str | None:
    """Why ``target`` may not run, or None when it may."""
    if isinstance(target, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        namespace = target.namespace
        qualified = target.name() if isinstance(target, torch._ops.OpOverload) else str(target)
        base = qualified.split("::")[-1].split(".")[0]
        if namespace not in ALLOWED_NAMESPACES:
            return (
                f"the model calls {qualified}, an op of the {namespace!r} extension namespace; "
                "bitmesh runs only aten and prims ops"
            )
        if namespace == "aten" and base in DENIED_ATEN:
            return f"the model calls aten.{base}, which {DENIED_ATEN[base]}"
        return None
    if isinstance(target, torch._ops.HigherOrderOperator):
        if target.name() in ALLOWED_HIGHER_ORDER:
            return None
        return (
            f"the model uses the higher-order operator {target.name()}, which bitmesh does not run"
        )
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    if module in _PYTHON_MODULES or (module == "builtins" and name in _PYTHON_BUILTINS):
        return None
    if module.startswith("torch") and name.startswith("sym_"):
        return None
    return f"the model calls the Python function {module}.{name}, which bitmesh does not run"


def unsafe_calls(program: Any) -> list[str]:
    """Every distinct reason a call in ``program`` is refused, in graph order."""
    reasons: list[str] = []
    for graph in _graphs(program):
        for node in graph.nodes:
            if node.op != "call_function":
                continue
            reason = _refusal(node.target)
            if reason is not None and reason not in reasons:
                reasons.append(reason)
    return reasons


def refuse_io_ops(program: Any, shown: str) -> None:
    """Raise InvalidArgument naming the first refused call of ``program``
    (``shown`` names the file), before any of the program runs."""
    reasons = unsafe_calls(program)
    if reasons:
        more = f" (and {len(reasons) - 1} more refused calls)" if len(reasons) > 1 else ""
        raise InvalidArgument(
            f"{shown!r} is refused: {reasons[0]}{more}; export a model whose forward is "
            "tensor maths only"
        )
