"""analyse(): request checks with clear errors, and the digits end-to-end table."""

from __future__ import annotations

import math
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitmesh.costs import option_costs
from bitmesh.data.datasets import DatasetSpec, load_dataset, make_loader
from bitmesh.errors import Cancelled, FailedPrecondition, InvalidArgument, ResourceExhausted
from bitmesh.formats import parse_option
from bitmesh.models.digits_cnn import DigitsCNN
from bitmesh.models.layers import discover_layers
from bitmesh.quant.fake_quant import weight_error_sq
from sensitivity_svc.analysis import SensitivitySettings, analyse, estimate_memory
from sensitivity_svc.hutchinson import LayerTrace
from sensitivity_svc.report import SensitivityReport

pytestmark = pytest.mark.unit

OPTIONS = ["int4/int8", "int8", "e4m3", "e2m1/e4m3", "int2/int8:pt"]


def _digits_batches(count: int = 2, size: int = 128) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = load_dataset(DatasetSpec(kind="digits", split="train")).tensors  # type: ignore[attr-defined]
    return [(x[i * size : (i + 1) * size], y[i * size : (i + 1) * size]) for i in range(count)]


@pytest.fixture(scope="module")
def trained_digits() -> DigitsCNN:
    """A DigitsCNN trained for a few epochs (about 5 s): real curvature."""
    torch.manual_seed(0)
    model = DigitsCNN()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = make_loader(load_dataset(DatasetSpec(kind="digits", split="train")), 64, True, 0)
    for _ in range(6):
        for x, y in loader:
            optimiser.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimiser.step()
    model.eval()
    x, y = load_dataset(DatasetSpec(kind="digits", split="test")).tensors  # type: ignore[attr-defined]
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    assert accuracy > 0.9, f"the digits CNN did not train ({accuracy:.2f})"
    return model


def test_digits_end_to_end_table(trained_digits: DigitsCNN) -> None:
    batches = _digits_batches(4, 256)
    seen: list[tuple[str, LayerTrace]] = []
    report = analyse(
        trained_digits,
        batches,
        None,
        OPTIONS,
        SensitivitySettings(activation_sensitivity=True),
        progress=lambda stage, e: seen.append((stage, e)),
    )
    assert report.seconds > 0  # its time is measured by benchmarks/bench_timing.py
    assert [entry.name for entry in report.layers] == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert report.options == tuple(parse_option(o).key for o in OPTIONS)
    assert report.estimator.num_batches == 4 and report.estimator.batch_sizes == (256,) * 4
    profiles = {p.name: p for p in discover_layers(trained_digits, (1, 8, 8))}
    weights = dict(trained_digits.named_parameters())
    for entry in report.layers:
        weight = weights[f"{entry.name}.weight"]
        assert entry.parameters == weight.numel() == profiles[entry.name].parameters
        assert entry.trace > 0, "a trained classifier's layer blocks have positive curvature"
        assert entry.relative_se <= 0.05 or entry.samples >= 200
        assert entry.samples % 4 == 0
        assert entry.normalized_trace == pytest.approx(entry.trace / weight.numel())
        assert entry.activation_trace is not None and entry.activation_trace > 0
        for p in entry.perturbations:
            option = parse_option(p.option_key)
            error = weight_error_sq(weight.detach(), option.weight, option.granularity)
            assert p.omega == pytest.approx(entry.normalized_trace * error, rel=1e-12)
            profile = profiles[entry.name]
            assert p.costs == option_costs(
                profile.parameters, profile.macs, option, profile.output_channels
            )
        omegas = {p.option_key: p.omega for p in entry.perturbations}
        assert omegas["int8/int8"] < omegas["int4/int8"] < omegas["int2/int8:pt"]
    assert {stage for stage, _ in seen} == {"weights", "activations"}
    finals = [e for stage, e in seen if stage == "weights" and e.done]
    assert [e.name for e in sorted(finals, key=lambda e: e.name)] == sorted(profiles)
    assert SensitivityReport.from_dict(report.to_dict()) == report
    assert trained_digits.training is False


def test_unknown_format_and_repeated_options_are_invalid(trained_digits: DigitsCNN) -> None:
    batches = _digits_batches(1, 32)
    with pytest.raises(InvalidArgument, match="unknown numeric format 'int99'"):
        analyse(trained_digits, batches, None, ["int4", "int99/int8"])
    with pytest.raises(InvalidArgument, match="repeated"):
        analyse(trained_digits, batches, None, ["int4/int4", "int4"])


def test_labels_that_do_not_fit_the_outputs_are_invalid(trained_digits: DigitsCNN) -> None:
    x, y = _digits_batches(1, 32)[0]
    with pytest.raises(
        InvalidArgument, match=r"labels range from \d to 12 but the model has 10 outputs"
    ):
        analyse(trained_digits, [(x, y.clone().index_fill_(0, torch.tensor([3]), 12))], None, [])
    with pytest.raises(InvalidArgument, match="labels range from -1"):
        analyse(trained_digits, [(x, y.clone().index_fill_(0, torch.tensor([0]), -1))], None, [])
    with pytest.raises(InvalidArgument, match="float targets"):
        analyse(trained_digits, [(x, torch.rand(32, 3))], None, [], loss_fn=F.mse_loss)
    with pytest.raises(InvalidArgument, match="32 inputs but targets"):
        analyse(trained_digits, [(x, y[:5])], None, [])


def test_non_finite_loss_is_a_failed_precondition() -> None:
    model = DigitsCNN()
    with torch.no_grad():
        model.fc2.weight[0, 0] = math.nan
    with pytest.raises(FailedPrecondition, match="the loss is nan on batch 0"):
        analyse(model, _digits_batches(1, 16), None, ["int8"])
    inputs, labels = _digits_batches(1, 16)[0]
    inputs = inputs.clone()
    inputs[3, 0, 0, 0] = math.inf
    with pytest.raises(FailedPrecondition, match="non-finite"):
        analyse(DigitsCNN(), [(inputs, labels)], None, ["int8"])


def test_model_without_quantizable_layers_is_invalid() -> None:
    model = nn.Sequential(nn.Flatten(), nn.ReLU())
    x = torch.randn(4, 10)
    y = torch.randint(0, 10, (4,))
    with pytest.raises(InvalidArgument, match="no quantizable"):
        analyse(model, [(x, y)], None, ["int8"])
    with pytest.raises(InvalidArgument, match="no quantizable"):
        analyse(DigitsCNN(), _digits_batches(1, 8), [], ["int8"])


def test_too_large_a_request_is_resource_exhausted_with_numbers() -> None:
    model = DigitsCNN()
    batches = _digits_batches(1, 64)
    weights = [model.conv1.weight, model.conv2.weight, model.conv3.weight]
    weights += [model.fc1.weight, model.fc2.weight]
    need = estimate_memory(model, batches, weights, SensitivitySettings())
    # DigitsCNN on one 1x8x8 sample: 16x8x8 x3 (conv1, bn1, relu) + ... floats.
    assert need.activation_bytes_per_sample > 16 * 8 * 8 * 4 * 3
    assert need.activations == int(3.0 * need.activation_bytes_per_sample * 64)
    limit = need.parameters + need.sketch + need.activations // 4
    with pytest.raises(ResourceExhausted) as caught:
        analyse(model, batches, None, ["int8"], SensitivitySettings(memory_limit_bytes=limit))
    message = caught.value.message
    assert "KiB" in message and "batch of 64" in message
    # A quarter of the activations' room: a quarter of the batch fits.
    assert "use batches of at most 16 samples" in message
    with pytest.raises(ResourceExhausted, match="weights and sketch alone do not fit"):
        analyse(model, batches, None, ["int8"], SensitivitySettings(memory_limit_bytes=1000))


def test_more_batches_than_samples_and_bad_settings_are_invalid() -> None:
    batches = _digits_batches(3, 8)
    with pytest.raises(InvalidArgument, match="3 batches but at most 2"):
        analyse(
            DigitsCNN(), batches, None, ["int8"], SensitivitySettings(max_samples=2, min_samples=2)
        )
    with pytest.raises(InvalidArgument, match="target_relative_se"):
        analyse(DigitsCNN(), batches, None, ["int8"], SensitivitySettings(target_relative_se=-1))
    with pytest.raises(InvalidArgument, match="pair"):
        analyse(DigitsCNN(), [(batches[0][0],)], None, ["int8"])  # type: ignore[list-item]


def test_cancel_raises_cancelled() -> None:
    flag = threading.Event()
    flag.set()
    with pytest.raises(Cancelled):
        analyse(DigitsCNN(), _digits_batches(1, 16), None, ["int8"], cancel=flag)


def test_given_layers_are_analysed_in_order() -> None:
    model = DigitsCNN()
    profiles = discover_layers(model, (1, 8, 8))
    chosen = [profiles[3], profiles[0]]
    report = analyse(
        model, _digits_batches(1, 32), chosen, ["int8"], SensitivitySettings(max_samples=20)
    )
    assert [entry.name for entry in report.layers] == ["fc1", "conv1"]
    assert all(entry.activation_trace is None for entry in report.layers)
