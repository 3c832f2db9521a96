"""Wrapped models: what a QuantLayer computes, switching, folding, state."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bitmesh.errors import FailedPrecondition, InvalidArgument
from bitmesh.formats import FORMATS, Granularity, QuantOption, parse_option
from bitmesh.models.digits_cnn import DigitsCNN
from bitmesh.quant.fake_quant import fake_quantize
from bitmesh.quant.qmodel import (
    LayerSpace,
    QuantLayer,
    QuantSettings,
    apply_config,
    effective_config,
    find_conv_bn_pairs,
    observing,
    plain_state_dict,
    quantize_model,
    quantizer_state,
    wrap_with_config,
)
from bitmesh.quant.range_estimators import RangeEstimator

pytestmark = pytest.mark.unit


@pytest.fixture
def model() -> DigitsCNN:
    torch.manual_seed(0)
    net = DigitsCNN()
    # Non-trivial BN statistics, so folding has something to fold.
    with torch.no_grad():
        for bn in (net.bn1, net.bn2, net.bn3):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return net


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_single_option_layer_matches_the_fake_quantizer_by_hand() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(6, 4)
    reference = copy.deepcopy(linear)
    option = parse_option("int4/int8")
    layer = QuantLayer(linear, LayerSpace.of_option(option), QuantSettings())
    x = torch.randn(5, 6)
    out = layer.train()(x)  # training mode: the range is the batch's max |x|
    clip = x.abs().max()
    xq = fake_quantize(x, FORMATS["int8"], clip=clip)
    wq = fake_quantize(
        reference.weight, FORMATS["int4"], granularity=Granularity.PER_CHANNEL, axis=0
    )
    torch.testing.assert_close(out, nn.functional.linear(xq, wq, reference.bias))
    assert layer.activation_clip() == pytest.approx(float(clip))


def test_switching_is_setting_an_index(model: DigitsCNN, batch: torch.Tensor) -> None:
    space = LayerSpace((FORMATS["int2"], FORMATS["int8"]), (FORMATS["int2"], FORMATS["int8"]))
    layers = quantize_model(model, {"conv2": space}, QuantSettings(), batch)
    model.train()
    layer = layers["conv2"]
    low = model(batch)
    layer.set_choice(1, 1)
    high = model(batch)
    assert not torch.allclose(low, high)
    assert layer.option.weight.name == "int8"
    with pytest.raises(InvalidArgument):
        layer.set_choice(2, 0)


def test_post_relu_inputs_get_the_unsigned_grid(model: DigitsCNN, batch: torch.Tensor) -> None:
    config = {name: parse_option("int4") for name in ("conv1", "conv2", "fc2")}
    untouched = copy.deepcopy(model)
    layers = wrap_with_config(model, config, QuantSettings(), batch)
    chosen = effective_config(layers)
    assert chosen["conv1"].activation.name == "int4"  # the normalised image is signed
    assert chosen["conv2"].activation.name == "uint4"  # after a ReLU
    assert chosen["fc2"].activation.name == "uint4"
    signed = wrap_with_config(untouched, config, QuantSettings(unsigned_activations=False), batch)
    assert effective_config(signed)["conv2"].activation.name == "int4"


def test_switchable_clipping_keeps_one_clip_per_format(batch: torch.Tensor) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 8)
    space = LayerSpace((FORMATS["int4"],), (FORMATS["int4"], FORMATS["e4m3"]))
    x = torch.randn(32, 64)
    layer = QuantLayer(linear, space, QuantSettings(learn_clips=True)).train()
    layer.set_choice(0, 0)
    layer(x).square().sum().backward()
    assert layer.act_clip is not None and layer.act_clip.grad is not None
    assert layer.act_clip.grad[0] != 0 and layer.act_clip.grad[1] == 0
    assert bool(layer.clip_ready[0]) and not bool(layer.clip_ready[1])
    shared = QuantLayer(nn.Linear(64, 8), space, QuantSettings(switchable_clipping=False))
    assert shared.act_range.shape == (1,)


def test_bn_folding_computes_conv_then_bn(model: DigitsCNN, batch: torch.Tensor) -> None:
    assert find_conv_bn_pairs(model) == {"conv1": "bn1", "conv2": "bn2", "conv3": "bn3"}
    reference = copy.deepcopy(model).eval()
    fp32 = QuantOption(weight=FORMATS["fp32"], activation=FORMATS["fp32"])
    config = {"conv1": fp32, "conv2": fp32, "conv3": fp32}
    layers = wrap_with_config(model, config, QuantSettings(fold_bn=True), batch)
    model.eval()
    assert isinstance(model.bn2, nn.Identity) and layers["conv2"].bn is not None
    torch.testing.assert_close(model(batch), reference(batch), rtol=1e-4, atol=1e-5)
    # The plain state dict puts the BN back under its own name.
    fresh = DigitsCNN()
    fresh.load_state_dict(plain_state_dict(model, layers))
    torch.testing.assert_close(fresh.eval()(batch), reference(batch), rtol=1e-4, atol=1e-5)


def test_plain_state_dict_loads_into_the_architecture(
    model: DigitsCNN, batch: torch.Tensor
) -> None:
    layers = wrap_with_config(model, {"fc1": parse_option("int8")}, QuantSettings(), batch)
    state = plain_state_dict(model, layers)
    assert "fc1.weight" in state and not any("act_range" in key for key in state)
    DigitsCNN().load_state_dict(state)  # strict: same keys as the architecture
    clips = quantizer_state(layers)
    assert set(clips) == {"fc1.activation_clip"}


def test_eval_before_any_range_is_refused(model: DigitsCNN, batch: torch.Tensor) -> None:
    layers = wrap_with_config(model, {"fc2": parse_option("int8")}, QuantSettings(), batch)
    model.eval()
    with pytest.raises(FailedPrecondition, match="no range yet"):
        model(batch)
    with observing(layers), torch.no_grad():
        model(batch)  # calibration: eval mode, ranges updated, BN untouched
    assert bool(layers["fc2"].act_seen[0])
    model(batch)


def test_observing_keeps_bn_statistics(model: DigitsCNN, batch: torch.Tensor) -> None:
    before = model.bn1.running_mean.clone()
    layers = wrap_with_config(
        model,
        {"conv1": parse_option("int8")},
        QuantSettings(estimator=RangeEstimator("percentile", percentile=99.0)),
        batch,
    )
    model.eval()
    with observing(layers), torch.no_grad():
        model(batch)
    torch.testing.assert_close(model.bn1.running_mean, before)


def test_apply_config_picks_formats_by_name(model: DigitsCNN, batch: torch.Tensor) -> None:
    space = LayerSpace(
        (FORMATS["int4"], FORMATS["e2m1"], FORMATS["int8"]),
        (FORMATS["int4"], FORMATS["e2m1"], FORMATS["int8"]),
    )
    layers = quantize_model(model, {"conv3": space, "fc1": space}, QuantSettings(), batch)
    apply_config(layers, {"conv3": parse_option("e2m1/int8"), "fc1": parse_option("int8/int8")})
    assert layers["conv3"].option.key == "e2m1/uint8"
    assert layers["fc1"].option.key == "int8/uint8"


def test_unknown_or_wrong_layers_are_refused(model: DigitsCNN, batch: torch.Tensor) -> None:
    with pytest.raises(InvalidArgument, match="no layer 'conv9'"):
        wrap_with_config(model, {"conv9": parse_option("int8")}, QuantSettings(), batch)
    with pytest.raises(InvalidArgument, match="not Conv/Linear"):
        wrap_with_config(model, {"bn1": parse_option("int8")}, QuantSettings(), batch)
    with pytest.raises(InvalidArgument, match="unsigned"):
        LayerSpace((FORMATS["uint4"],), (FORMATS["uint4"],))


def test_mse_clip_refresh_picks_a_format_specific_ratio() -> None:
    """A long-tailed input: 2-bit activations clip well below the maximum,
    8-bit ones keep it, and each format keeps its own ratio."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 32, generator=generator).abs() ** 3  # post-ReLU-like, heavy tail
    space = LayerSpace((FORMATS["int8"],), (FORMATS["int2"], FORMATS["int8"]))
    settings = QuantSettings(clip_refresh=4)
    layer = QuantLayer(nn.Linear(32, 4), space, settings, input_nonnegative=True).train()
    layer.set_choice(0, 0)
    layer(x)
    low = layer.activation_clip()
    layer.set_choice(0, 1)
    layer(x)
    high = layer.activation_clip()
    assert float(layer.clip_ratio[0]) < 1.0 and float(layer.clip_ratio[1]) == 1.0
    assert low < high == pytest.approx(float(x.max()))
    # The pick minimises the MSE over the candidate ratios.
    fmt = layer.activation_formats[0]
    errors = {
        r: float((fake_quantize(x, fmt, clip=x.max() * r) - x).square().mean())
        for r in settings.clip_ratios
    }
    assert float(layer.clip_ratio[0]) == min(errors, key=errors.__getitem__)


@pytest.mark.parametrize("name", ["uint4", "int4", "e2m1", "e4m3"])
def test_learned_clip_gradients_match_autograd_of_the_fake_quantizer(name: str) -> None:
    from bitmesh.quant.fake_quant import quant_range
    from bitmesh.quant.qmodel import _grad_scaled, _LearnedClipQuant

    fmt = FORMATS[name]
    generator = torch.Generator().manual_seed(2)
    x = (torch.randn(8, 64, generator=generator) * 2).requires_grad_(True)
    upstream = torch.randn(8, 64, generator=generator)
    scale = 0.03
    clip = torch.tensor(1.7, requires_grad=True)
    reference = fake_quantize(x, fmt, clip=_grad_scaled(clip, scale))
    reference.backward(upstream)
    expected = (x.grad.clone(), clip.grad.clone())  # type: ignore[union-attr]
    x.grad, clip.grad = None, None
    fused = _LearnedClipQuant.apply(x, clip, fmt, scale)
    torch.testing.assert_close(fused, reference.detach())
    fused.backward(upstream)
    torch.testing.assert_close(x.grad, expected[0])
    torch.testing.assert_close(clip.grad, expected[1], rtol=1e-4, atol=1e-6)
    assert quant_range(fmt)[1] > 0


def test_plain_state_dict_without_copies_shares_whole_tensors_only(
    model: DigitsCNN, batch: torch.Tensor
) -> None:
    layers = wrap_with_config(model, {"fc1": parse_option("int8")}, QuantSettings(), batch)
    copied = plain_state_dict(model, layers)
    shared = plain_state_dict(model, layers, copy=False)
    assert copied.keys() == shared.keys()
    own = layers["fc1"].inner.weight
    assert shared["fc1.weight"].data_ptr() == own.data_ptr()
    assert copied["fc1.weight"].data_ptr() != own.data_ptr()
    # A view into a larger storage is cloned: torch.save would write all of it.
    big = torch.zeros(4, 10)
    model.fc2.bias = nn.Parameter(big[1])
    view = plain_state_dict(model, layers, copy=False)["fc2.bias"]
    assert view.data_ptr() != big[1].data_ptr()
    assert view.untyped_storage().nbytes() == view.numel() * view.element_size()
