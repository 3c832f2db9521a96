"""Attention projections as quantizable layers: same results as torch's
attention, torchvision's state-dict keys, and the in/out projections wrapped,
switched, trained and exported like any Linear."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from bitmesh.export.onnx_qdq import export_onnx
from bitmesh.formats import parse_option
from bitmesh.models.attention import ProjectedAttention, adapt_attention
from bitmesh.models.layers import discover_layers
from bitmesh.quant.qmodel import (
    LayerSpace,
    QuantSettings,
    effective_config,
    observing,
    plain_state_dict,
    quantize_model,
    quantizer_state,
    wrap_with_config,
)

pytestmark = pytest.mark.unit

SHAPE = (3, 16, 16)
IN_PROJ = "encoder.layers.encoder_layer_0.self_attention.in_proj"
OUT_PROJ = "encoder.layers.encoder_layer_0.self_attention.out_proj"


def _tiny_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = VisionTransformer(
        image_size=16,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=5,
    )
    nn.init.normal_(model.heads.head.weight, std=0.2)  # torchvision zero-initialises it
    return model.eval()


@pytest.mark.parametrize("batch_first", [True, False])
def test_projected_attention_computes_what_torch_does(batch_first: bool) -> None:
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    ours = ProjectedAttention(copy.deepcopy(reference)).eval()
    x = torch.randn(3, 5, 16)  # batch 3, length 5
    memory = torch.randn(3, 7, 16)
    if not batch_first:
        x, memory = x.transpose(0, 1).contiguous(), memory.transpose(0, 1).contiguous()
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[:, -2:] = True
    cases = [
        ((x, x, x), {}),
        ((x, x, x), {"attn_mask": torch.ones(5, 5, dtype=torch.bool).triu(1)}),
        ((x, memory, memory), {"key_padding_mask": padding}),
        ((x, x, x), {"need_weights": False}),
    ]
    for args, kwargs in cases:
        with torch.no_grad():
            want_out, want_weights = reference(*args, **kwargs)
            got_out, got_weights = ours(*args, **kwargs)
        torch.testing.assert_close(got_out, want_out, atol=1e-5, rtol=1e-5)
        if want_weights is None:
            assert got_weights is None
        else:
            torch.testing.assert_close(got_weights, want_weights, atol=1e-5, rtol=1e-5)


def test_vit_in_and_out_projections_are_layers_with_their_macs() -> None:
    plain = _tiny_vit()
    adapted = adapt_attention(copy.deepcopy(plain))
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), plain(x), atol=1e-5, rtol=1e-5)
    layers = {layer.name: layer for layer in discover_layers(adapted, SHAPE)}
    tokens = (16 // 8) ** 2 + 1  # 4 patches and the class token
    assert layers[IN_PROJ].weight_shape == (96, 32)  # q, k and v: one tied layer
    assert layers[IN_PROJ].macs == tokens * 32 * 96
    assert layers[OUT_PROJ].macs == tokens * 32 * 32
    assert [name for name in layers if name.endswith(("in_proj", "out_proj"))] == [
        IN_PROJ,
        OUT_PROJ,
        IN_PROJ.replace("_0", "_1"),
        OUT_PROJ.replace("_0", "_1"),
    ]


def test_state_dict_keeps_torchvision_keys_both_ways() -> None:
    plain = _tiny_vit()
    adapted = adapt_attention(_tiny_vit(seed=1))
    assert set(adapted.state_dict()) == set(plain.state_dict())
    adapted.load_state_dict(plain.state_dict())
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), plain(x), atol=1e-5, rtol=1e-5)
    # Weights saved from a wrapped model load into a plain torchvision ViT.
    option = parse_option("int8/int8")
    layers = wrap_with_config(adapted, {IN_PROJ: option, OUT_PROJ: option}, QuantSettings(), x)
    fresh = _tiny_vit(seed=2)
    fresh.load_state_dict(plain_state_dict(adapted, layers), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), plain(x), atol=1e-5, rtol=1e-5)


def test_projections_switch_formats_and_train() -> None:
    """The one-shot search's supernet: switching the in-projection's format
    changes the output, and QAT's straight-through gradients reach it (block
    formats included)."""
    model = adapt_attention(_tiny_vit())
    x = torch.randn(8, *SHAPE)
    space = LayerSpace(
        tuple(parse_option(f"{w}/int8").weight for w in ("int8", "int2", "int4_g32")),
        (parse_option("int8/int8").activation, parse_option("int8/mxfp8_e4m3").activation),
    )
    layers = quantize_model(model, {IN_PROJ: space, OUT_PROJ: space}, QuantSettings(), x)
    model.train()
    outputs = []
    for w_index, a_index in ((0, 0), (1, 0), (2, 1)):
        layers[IN_PROJ].set_choice(w_index, a_index)
        model.zero_grad()
        out = model(x)
        out.square().mean().backward()
        grad = layers[IN_PROJ].inner.weight.grad
        assert grad is not None and bool(grad.abs().sum() > 0)
        outputs.append(out.detach())
    assert not torch.allclose(outputs[0], outputs[1])
    assert not torch.allclose(outputs[0], outputs[2])


def test_vit_exports_its_projections_quantized(tmp_path: Path) -> None:
    model = adapt_attention(_tiny_vit())
    names = [layer.name for layer in discover_layers(model, SHAPE)]
    wrapped = copy.deepcopy(model)
    torch.manual_seed(3)
    x = torch.randn(64, *SHAPE)
    layers = wrap_with_config(
        wrapped, {n: parse_option("int8/int8") for n in names}, QuantSettings(), x
    )
    wrapped.eval()
    with observing(layers), torch.no_grad():
        wrapped(x)
    ranges = {
        key.removesuffix(".activation_clip"): float(value)
        for key, value in quantizer_state(layers).items()
    }
    path = tmp_path / "vit.onnx"
    report = export_onnx(model, effective_config(layers), ranges, SHAPE, path)
    assert report.checker_ok, report.checker_error
    dequantized = {
        node.output[0]
        for node in onnx.load(str(path)).graph.node
        if node.op_type == "DequantizeLinear"
    }
    assert {f"{IN_PROJ}.weight", f"{OUT_PROJ}.weight"} <= dequantized
    # onnxruntime 1.31's QDQ fusion at its default level miscomputes a
    # quantized MatMul on a 3-D input (any Linear in a transformer, before
    # this change too); at the basic level the graph runs as written.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        torch_logits = wrapped(x).numpy()
    agreement = float(np.mean(onnx_logits.argmax(1) == torch_logits.argmax(1)))
    assert agreement >= 0.99
    assert np.abs(onnx_logits - torch_logits).max() < 1e-3


def test_sensitivity_prices_the_projections() -> None:
    from sensitivity_svc.analysis import SensitivitySettings, analyse

    model = adapt_attention(_tiny_vit())
    torch.manual_seed(4)
    batch = (torch.randn(16, *SHAPE), torch.randint(0, 5, (16,)))
    settings = SensitivitySettings(max_samples=4, min_samples=2, sketch_size=2, workers=1)
    profiles = [p for p in discover_layers(model, SHAPE) if p.name in (IN_PROJ, OUT_PROJ)]
    report = analyse(model, [batch], profiles, ["int8/int8", "int2/int8"], settings)
    by_name = {layer.name: layer for layer in report.layers}
    for name in (IN_PROJ, OUT_PROJ):
        layer = by_name[name]
        assert layer.samples >= 2 and np.isfinite(layer.trace)
        int8, int2 = (p.weight_error_sq for p in layer.perturbations)
        assert 0 < int8 < int2  # Omega = normalised trace x these
        assert layer.perturbations[0].costs.bops == layer.macs * 64
