"""The op check refuses a program's file and process I/O before any of it runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bitmesh.errors import InvalidArgument
from bitmesh.models.loading import ModelSpec, load_model
from bitmesh.models.sandbox.ops import unsafe_calls
from tests.hostile_models import (
    INPUT_SHAPE,
    NUM_CLASSES,
    file_reading_program,
    looping_program,
    tiny_program,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("programs")
    return {
        "tiny": tiny_program(root / "tiny.pt2"),
        "loop": looping_program(root / "loop.pt2"),
        "read": file_reading_program(root / "read.pt2"),
    }


def _spec(path: Path) -> ModelSpec:
    return ModelSpec(
        source="exported_program",
        name_or_path=str(path),
        input_shape=INPUT_SHAPE,
        num_classes=NUM_CLASSES,
    )


def test_tensor_maths_and_control_flow_pass(files: dict[str, Path]) -> None:
    assert unsafe_calls(torch.export.load(files["tiny"])) == []
    # while_loop is allowed; its cond and body graphs are checked too.
    assert unsafe_calls(torch.export.load(files["loop"])) == []


def test_a_program_reading_a_file_is_refused_before_it_runs(files: dict[str, Path]) -> None:
    with pytest.raises(InvalidArgument, match=r"calls aten\.from_file, which reads files"):
        load_model(_spec(files["read"]))


def _retarget(path: Path, target: object) -> torch.export.ExportedProgram:
    program = torch.export.load(path)
    for node in program.graph.nodes:
        if node.op == "call_function":
            node.target = target
    return program


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (torch.ops.profiler._record_function_enter.default, "'profiler' extension namespace"),
        (open, "Python function io.open"),
        (print, "Python function builtins.print"),
    ],
    ids=["extension-op", "open", "print"],
)
def test_other_namespaces_and_python_calls_are_refused(
    files: dict[str, Path], target: object, reason: str
) -> None:
    reasons = unsafe_calls(_retarget(files["tiny"], target))
    assert len(reasons) == 1 and reason in reasons[0]


def test_a_refused_op_inside_a_loop_body_is_found(files: dict[str, Path]) -> None:
    program = torch.export.load(files["loop"])
    bodies = [m for name, m in program.graph_module.named_children() if "body" in name]
    assert bodies, "the while_loop body is a submodule of the program"
    for node in bodies[0].graph.nodes:
        if node.op == "call_function":
            node.target = torch.ops.aten.from_file.default
    assert any("aten.from_file" in r for r in unsafe_calls(program))
