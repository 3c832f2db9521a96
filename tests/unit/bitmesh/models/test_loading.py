"""load_model: every source, safe weights loading, and every bad-input path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bitmesh.errors import FailedPrecondition, InvalidArgument, NotFound
from bitmesh.models.digits_cnn import DigitsCNN
from bitmesh.models.hashing import model_hash
from bitmesh.models.loading import (
    ModelSpec,
    available_architectures,
    build_architecture,
    load_model,
    load_state_dict_file,
)

pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore:`torch.jit")]

DIGITS = (1, 8, 8)


def _marker_side_effect(path: str) -> None:
    Path(path).write_text("the checkpoint ran code")


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_marker_side_effect, (str(self.marker),))


def _trained_like_digits(seed: int = 1) -> DigitsCNN:
    """A DigitsCNN with non-default weights and BN statistics."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
        model.bn1.running_mean.add_(0.5)
    return model.eval()


def _spec(**overrides: object) -> ModelSpec:
    fields: dict[str, object] = {
        "source": "architecture",
        "name_or_path": "digits_cnn",
        "input_shape": DIGITS,
    }
    fields.update(overrides)
    return ModelSpec(**fields)  # type: ignore[arg-type]


# ------------------------------------------------------------ architectures


def test_builtin_architecture_loads_in_eval_mode() -> None:
    model = load_model(_spec())
    assert isinstance(model, DigitsCNN)
    assert not model.training
    assert model(torch.zeros(2, *DIGITS)).shape == (2, 10)


def test_torchvision_architecture_with_num_classes() -> None:
    model = load_model(_spec(name_or_path="resnet18", input_shape=(3, 32, 32), num_classes=7))
    assert not model.training
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
    assert {"digits_cnn", "resnet18", "resnet50", "mobilenet_v3_small"} <= set(
        available_architectures()
    )


def test_unknown_architecture_lists_close_matches() -> None:
    with pytest.raises(InvalidArgument, match=r"unknown architecture 'resnet181'.*resnet18"):
        load_model(_spec(name_or_path="resnet181"))
    with pytest.raises(InvalidArgument, match="unknown architecture 'zzzz'"):
        load_model(_spec(name_or_path="zzzz"))


def test_torchvision_names_come_from_a_per_machine_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cached names are torchvision's own, and once they are cached an
    unknown name is refused without importing torchvision (seconds of CPU in
    a fresh service process)."""
    import torchvision

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    names = set(available_architectures())
    assert names == {"digits_cnn", *torchvision.models.list_models(module=torchvision.models)}
    assert list((tmp_path / "bitmesh" / "arrays").glob("torchvision-models-*.npz"))
    monkeypatch.setitem(sys.modules, "torchvision", None)  # importing it now fails
    with pytest.raises(InvalidArgument, match=r"unknown architecture 'resnet19'.*resnet18"):
        build_architecture("resnet19", 10, (3, 32, 32))
    with pytest.raises(ImportError):
        build_architecture("resnet18", 10, (3, 32, 32))  # a known name does import it


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"source": "onnx"}, "model source"),
        ({"name_or_path": ""}, "name_or_path"),
        ({"input_shape": ()}, "input shape"),
        ({"input_shape": (1, 0, 8)}, "input shape"),
        ({"input_shape": (1, 2, 3, 4, 5)}, "input shape"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 2.5}, "num_classes"),
    ],
)
def test_bad_specs_are_refused(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        _spec(**overrides)


def test_spec_normalises_shape_and_empty_weights() -> None:
    spec = _spec(input_shape=[1, 8, 8], weights_path="")
    assert spec.input_shape == DIGITS
    assert spec.weights_path is None


def test_wrong_input_shape_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match=r"input shape \(1, 32, 32\) does not fit"):
        load_model(_spec(name_or_path="resnet18", input_shape=(1, 32, 32)))


# ------------------------------------------------------------------ weights


def test_weights_round_trip(tmp_path: Path) -> None:
    source = _trained_like_digits()
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    loaded = load_model(_spec(weights_path=str(path)))
    assert model_hash(loaded) == model_hash(source)
    x = torch.randn(4, *DIGITS)
    torch.testing.assert_close(loaded(x), source(x))


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "module_prefix"])
def test_wrapped_checkpoints_are_accepted(tmp_path: Path, wrapper: str) -> None:
    source = _trained_like_digits()
    state = source.state_dict()
    if wrapper == "module_prefix":
        payload: object = {f"module.{key}": value for key, value in state.items()}
    else:
        payload = {wrapper: state, "epoch": 3}
    path = tmp_path / "w.pt"
    torch.save(payload, path)
    assert model_hash(load_model(_spec(weights_path=str(path)))) == model_hash(source)


def test_pickled_object_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Payload(marker)}, path)
    with pytest.raises(FailedPrecondition, match=r"torch.save\(model.state_dict\(\)"):
        load_model(_spec(weights_path=str(path)))
    assert not marker.exists()


def test_whole_pickled_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(DigitsCNN(), path)
    with pytest.raises(FailedPrecondition, match="unpickling"):
        load_state_dict_file(str(path))


def test_missing_weights_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        load_model(_spec(weights_path=str(tmp_path / "nope.pt")))


def test_weights_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not a regular file"):
        load_state_dict_file(str(tmp_path))


def test_corrupt_weights_file_is_invalid_argument(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a checkpoint" * 20)
    with pytest.raises(InvalidArgument, match=r"not a readable torch\.save file"):
        load_state_dict_file(str(path))


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ([torch.zeros(2)], "holds a list, not a state_dict"),
        ({"conv1.weight": torch.zeros(2), "step": 3}, "entry 'step' is a int"),
    ],
)
def test_non_state_dict_payloads(tmp_path: Path, payload: object, match: str) -> None:
    path = tmp_path / "w.pt"
    torch.save(payload, path)
    with pytest.raises(InvalidArgument, match=match):
        load_state_dict_file(str(path))


def test_state_dict_of_another_shape_names_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(DigitsCNN(num_classes=5).state_dict(), path)
    with pytest.raises(InvalidArgument, match=r"shape mismatches: fc2.weight \(file \(5, 64\)"):
        load_model(_spec(weights_path=str(path)))


def test_state_dict_with_missing_and_unexpected_keys(tmp_path: Path) -> None:
    state = DigitsCNN().state_dict()
    state.pop("conv3.weight")
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(InvalidArgument) as info:
        load_model(_spec(weights_path=str(path)))
    assert "missing keys: conv3.weight" in info.value.message
    assert "unexpected keys: extra.weight" in info.value.message


def test_state_dict_of_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(nn.Linear(3, 4).state_dict(), path)
    with pytest.raises(InvalidArgument, match=r"missing keys: .* and \d+ more"):
        load_model(_spec(weights_path=str(path)))


# ------------------------------------------------- exported programs, TorchScript


def _save_program(model: nn.Module, path: Path, *, dynamic: bool = True) -> None:
    """Export ``model`` on a batch of two; ``dynamic``: with a symbolic batch."""
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    program = torch.export.export(model, (torch.zeros(2, *DIGITS),), dynamic_shapes=shapes)
    torch.export.save(program, path)


def test_exported_program_round_trip(tmp_path: Path) -> None:
    source = _trained_like_digits()
    path = tmp_path / "m.pt2"
    _save_program(source, path)
    loaded = load_model(_spec(source="exported_program", name_or_path=str(path)))
    x = torch.randn(3, *DIGITS)
    torch.testing.assert_close(loaded(x), source(x))


def test_exported_program_with_wrong_input_shape(tmp_path: Path) -> None:
    path = tmp_path / "m.pt2"
    _save_program(DigitsCNN().eval(), path)
    with pytest.raises(InvalidArgument, match=r"input shape \(1, 16, 16\) does not fit"):
        load_model(
            _spec(source="exported_program", name_or_path=str(path), input_shape=(1, 16, 16))
        )


def test_exported_program_with_static_batch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "static.pt2"
    _save_program(DigitsCNN().eval(), path, dynamic=False)
    with pytest.raises(InvalidArgument, match=r"static batch dimension \(2\)") as info:
        load_model(_spec(source="exported_program", name_or_path=str(path)))
    assert 'torch.export.Dim("batch")' in info.value.message


@pytest.fixture
def torchscript_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real torch.jit.save archive; afterwards torch's readers refuse to run,
    so a test passes only if the file is judged without being loaded."""
    path = tmp_path / "scripted.pt"
    torch.jit.script(DigitsCNN().eval()).save(str(path))

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a TorchScript file was handed to a torch reader")

    for reader in ("torch.load", "torch.jit.load", "torch.export.load"):
        monkeypatch.setattr(reader, no_loading)
    return path


def _refused(exc: InvalidArgument) -> None:
    assert "TorchScript" in exc.message
    assert 'torch.export.Dim("batch")' in exc.message
    assert "weights_only=False" not in exc.message


def test_torchscript_source_is_refused_when_the_spec_is_built(torchscript_file: Path) -> None:
    with pytest.raises(InvalidArgument) as info:
        _spec(source="torchscript", name_or_path=str(torchscript_file))
    _refused(info.value)


def test_torchscript_content_is_refused_under_any_name(
    torchscript_file: Path, tmp_path: Path
) -> None:
    disguised = tmp_path / "model.pt2"
    disguised.write_bytes(torchscript_file.read_bytes())
    with pytest.raises(InvalidArgument) as info:
        _spec(source="exported_program", name_or_path=str(disguised))
    _refused(info.value)
    with pytest.raises(InvalidArgument) as info:
        _spec(weights_path=str(torchscript_file))
    _refused(info.value)
    with pytest.raises(InvalidArgument) as info:
        load_state_dict_file(str(torchscript_file))
    _refused(info.value)


def test_state_dicts_and_programs_are_not_taken_for_torchscript(tmp_path: Path) -> None:
    from bitmesh.models.model_files import is_torchscript_archive

    weights, program = tmp_path / "w.pt", tmp_path / "m.pt2"
    torch.save(DigitsCNN().state_dict(), weights)
    _save_program(DigitsCNN().eval(), program)
    assert not is_torchscript_archive(weights)
    assert not is_torchscript_archive(program)
    assert not is_torchscript_archive(tmp_path / "missing.pt")


class _TwoOutputs(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + 1, x - 1


def test_model_that_returns_no_tensor(tmp_path: Path) -> None:
    path = tmp_path / "m.pt2"
    _save_program(_TwoOutputs(), path)
    with pytest.raises(InvalidArgument, match="returns a tuple"):
        load_model(_spec(source="exported_program", name_or_path=str(path)))


def test_missing_program_files_are_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        load_model(_spec(source="exported_program", name_or_path=str(tmp_path / "nope.bin")))


def test_corrupt_program_files_are_invalid(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt2"
    path.write_bytes(b"\x00garbage" * 64)
    with pytest.raises(InvalidArgument, match="not a readable"):
        load_model(_spec(source="exported_program", name_or_path=str(path)))


def test_state_dict_file_is_not_a_program(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(DigitsCNN().state_dict(), path)
    with pytest.raises(InvalidArgument, match="not a readable"):
        load_model(_spec(source="exported_program", name_or_path=str(path)))


def test_a_probe_runs_on_one_cpu_thread_and_restores_the_count() -> None:
    from bitmesh.models.loading import probe_forward

    seen: list[int] = []

    class Recorder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.get_num_threads())
            return x.flatten(1)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        probe_forward(Recorder(), (3, 4, 4))
        assert seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
