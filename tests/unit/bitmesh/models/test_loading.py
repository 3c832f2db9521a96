"""load_model: every source, safe weights loading, and every bad-input path."""

from __future__ import annotations

import logging
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


@pytest.mark.filterwarnings("ignore:'torch.load' received a zip file")
def test_program_given_as_weights_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.ts"
    torch.jit.script(DigitsCNN().eval()).save(str(path))
    with pytest.raises(InvalidArgument, match="TorchScript archive") as info:
        load_state_dict_file(str(path))
    assert "weights_only=False" not in info.value.message


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


def test_exported_program_round_trip(tmp_path: Path) -> None:
    source = _trained_like_digits()
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(source, (torch.zeros(1, *DIGITS),)), path)
    loaded = load_model(_spec(source="exported_program", name_or_path=str(path)))
    x = torch.randn(1, *DIGITS)
    torch.testing.assert_close(loaded(x), source(x))


def test_exported_program_with_wrong_input_shape(tmp_path: Path) -> None:
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(DigitsCNN().eval(), (torch.zeros(1, *DIGITS),)), path)
    with pytest.raises(InvalidArgument, match=r"input shape \(1, 16, 16\) does not fit"):
        load_model(
            _spec(source="exported_program", name_or_path=str(path), input_shape=(1, 16, 16))
        )


def test_torchscript_round_trip_logs_deprecation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = _trained_like_digits()
    path = tmp_path / "m.ts"
    torch.jit.script(source).save(str(path))
    with caplog.at_level(logging.WARNING, logger="bitmesh.models.loading"):
        loaded = load_model(_spec(source="torchscript", name_or_path=str(path)))
    assert "deprecated" in caplog.text
    assert not loaded.training
    x = torch.randn(3, *DIGITS)
    torch.testing.assert_close(loaded(x), source(x))


def test_torchscript_with_wrong_input_shape(tmp_path: Path) -> None:
    path = tmp_path / "m.ts"
    torch.jit.script(DigitsCNN().eval()).save(str(path))
    with pytest.raises(InvalidArgument, match=r"input shape \(3, 8, 8\) does not fit.*channels"):
        load_model(_spec(source="torchscript", name_or_path=str(path), input_shape=(3, 8, 8)))


def test_torchscript_with_wrong_num_classes(tmp_path: Path) -> None:
    path = tmp_path / "m.ts"
    torch.jit.script(DigitsCNN().eval()).save(str(path))
    with pytest.raises(InvalidArgument, match="num_classes=4"):
        load_model(_spec(source="torchscript", name_or_path=str(path), num_classes=4))


class _TwoOutputs(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


def test_model_that_returns_no_tensor(tmp_path: Path) -> None:
    path = tmp_path / "m.ts"
    torch.jit.script(_TwoOutputs()).save(str(path))
    with pytest.raises(InvalidArgument, match="returns a tuple"):
        load_model(_spec(source="torchscript", name_or_path=str(path)))


@pytest.mark.parametrize("source", ["exported_program", "torchscript"])
def test_missing_program_files_are_not_found(tmp_path: Path, source: str) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        load_model(_spec(source=source, name_or_path=str(tmp_path / "nope.bin")))


@pytest.mark.parametrize("source", ["exported_program", "torchscript"])
def test_corrupt_program_files_are_invalid(tmp_path: Path, source: str) -> None:
    path = tmp_path / "bad.pt2"
    path.write_bytes(b"\x00garbage" * 64)
    with pytest.raises(InvalidArgument, match="not a readable"):
        load_model(_spec(source=source, name_or_path=str(path)))


def test_state_dict_file_is_not_a_program(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(DigitsCNN().state_dict(), path)
    for source in ("exported_program", "torchscript"):
        with pytest.raises(InvalidArgument, match="not a readable"):
            load_model(_spec(source=source, name_or_path=str(path)))
