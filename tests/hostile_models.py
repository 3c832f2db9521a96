"""Model files that attack the process loading them, for the sandbox tests.

Each is a real ``torch.export`` program (dynamic batch, input ``(4,)``,
3 logits), saved as a user would upload it:

- :func:`looping_program`: a ``torch.while_loop`` that runs 10^12 times;
- :func:`allocating_program`: ``torch.empty`` of 50 GB in its forward;
- :func:`batch_allocating_program`: ``torch.empty`` of 40 GB per sample past
  the first, so the sandbox's one-sample probe passes and an analysis's
  batch does not;
- :func:`file_reading_program`: calls ``aten.from_file`` on ``/etc/hostname``.
  torch.export cannot trace ``torch.from_file`` (it has no fake kernel), so
  this one is exported with a ``torch.zeros`` in its place and the graph
  node is edited to ``aten.from_file`` before saving (torch.fx), which is
  what a hostile user would do;
- :func:`scripted_loop`: a TorchScript module whose forward never ends.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

INPUT_SHAPE = (4,)
NUM_CLASSES = 3
#: The file the file-reading program maps (outside any artifact root).
READ_TARGET = "/etc/hostname"


class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(INPUT_SHAPE[0], NUM_CLASSES)


class Tiny(_Head):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Looping(_Head):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def cond(i: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return i < 10**12

        def body(i: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return i + 1, y + 1

        _, y = torch._higher_order_ops.while_loop(cond, body, (torch.tensor(0), x))
        return self.fc(y)


class Allocating(_Head):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = torch.empty(50 * 10**9 // 4)
        return self.fc(x) + big[:1].sum() * 0


class BatchAllocating(_Head):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = torch.empty((x.shape[0] - 1) * 10**10)
        return self.fc(x) + big[:1].sum() * 0


class _ZerosStandIn(_Head):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        data = torch.zeros(1, dtype=torch.uint8)
        return self.fc(x) + data.float().sum() * 0


def _export(model: nn.Module) -> torch.export.ExportedProgram:
    return torch.export.export(
        model.eval(),
        (torch.randn(2, *INPUT_SHAPE),),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )


def _save(model: nn.Module, path: Path) -> Path:
    torch.export.save(_export(model), path)
    return path


def tiny_program(path: Path) -> Path:
    return _save(Tiny(), path)


def looping_program(path: Path) -> Path:
    return _save(Looping(), path)


def allocating_program(path: Path) -> Path:
    return _save(Allocating(), path)


def batch_allocating_program(path: Path) -> Path:
    return _save(BatchAllocating(), path)


def file_reading_program(path: Path) -> Path:
    program = _export(_ZerosStandIn())
    edited = 0
    for node in program.graph.nodes:
        if node.target is torch.ops.aten.zeros.default:
            node.target = torch.ops.aten.from_file.default
            node.args = (READ_TARGET, False, 1)
            node.kwargs = {"dtype": torch.uint8}
            edited += 1
    assert edited == 1, "the stand-in's torch.zeros node was not found"
    program.graph_module.recompile()
    torch.export.save(program, path)
    return path


class _ScriptedLoop(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        while bool(x.sum() > -1.0):
            x = x + 1.0
        return x


def scripted_loop(path: Path) -> Path:
    torch.jit.save(torch.jit.script(_ScriptedLoop()), str(path))
    return path
