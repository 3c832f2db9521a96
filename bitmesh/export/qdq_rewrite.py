"""Rewrite an exported float ONNX graph so planned layers are quantized in it.

- Weight: the initializer (named like the parameter, ``conv1.weight``, and
  checked equal to it) is replaced by the quantized codes plus a
  DequantizeLinear whose *output* takes the original name, so every consumer
  (Conv, Gemm, a Transpose before a MatMul, a Shape) reads the dequantized
  weight unchanged. Scale and codes come from bitmesh's ``compute_scale`` and
  ``fake_quantize``, so the dequantized weight equals the fake-quantized
  torch weight bit for bit. Per-channel scales are on axis 0 (output
  channels: the torch layout the initializer keeps).
- Input activation: QuantizeLinear (+ Clip) + DequantizeLinear, or a Cast
  pair, in front of each op that multiplies by the weight, zero point 0 and
  scale ``clip / max`` as bitmesh's activation quantizer computes it.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import Tensor

from bitmesh.errors import FailedPrecondition
from bitmesh.export.blocked_inputs import blocked_input_nodes
from bitmesh.export.blocked_weights import blocked_form_of, blocked_nodes
from bitmesh.export.onnx_types import OnnxQuantType
from bitmesh.export.qdq_plan import LayerPlan
from bitmesh.formats import Granularity, NumericFormat
from bitmesh.quant.fake_quant import compute_scale, fake_quantize, quant_range

__all__ = ["GraphEditor", "rewrite_activation", "rewrite_weight", "weight_codes"]

#: Ops that pass a weight through unchanged on its way to the op that uses it.
_PASS_THROUGH = frozenset({"Identity", "Transpose", "Reshape", "Cast", "CastLike", "Unsqueeze"})
#: Ops that multiply an input by a layer's weight; the other input is the activation.
_COMPUTE = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


class GraphEditor:
    """Name bookkeeping over an ONNX graph being edited in place."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.taken: set[str] = {t.name for t in graph.initializer}
        self.taken.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
        for node in graph.node:
            self.taken.update(node.output)
            self.taken.add(node.name)

    def fresh(self, base: str) -> str:
        """``base``, or ``base_1``, ``base_2``... whichever is still free."""
        name, index = base, 1
        while name in self.taken:
            name, index = f"{base}_{index}", index + 1
        self.taken.add(name)
        return name

    def initializer(self, name: str) -> onnx.TensorProto | None:
        for tensor in self.graph.initializer:
            if tensor.name == name:
                return tensor
        return None

    def add_initializer(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def consumers(self, value: str) -> list[tuple[onnx.NodeProto, int]]:
        return [
            (node, index)
            for node in self.graph.node
            for index, name in enumerate(node.input)
            if name == value
        ]

    def insert_before(self, anchor: onnx.NodeProto | None, nodes: list[onnx.NodeProto]) -> None:
        """Insert ``nodes`` before ``anchor`` (at the top when None): topological order holds."""
        position = 0 if anchor is None else list(self.graph.node).index(anchor)
        for offset, node in enumerate(nodes):
            self.graph.node.insert(position + offset, node)


def weight_codes(
    weight: Tensor, fmt: NumericFormat, granularity: Granularity, qtype: OnnxQuantType
) -> tuple[np.ndarray, np.ndarray]:
    """(codes in the ONNX type, float32 scale of shape () or (C,)) for axis 0.

    The codes are bitmesh's own rounding in the scaled domain: ``fake_quantize``
    of ``w / s`` with clip ``max`` has scale exactly 1, so it returns the grid
    values ``Q(clamp(w / s))`` that ``fake_quantize(w)`` multiplies by ``s``.
    """
    with torch.no_grad():
        w = weight.detach().to(torch.float32).cpu()
        scale = compute_scale(w, fmt, granularity=granularity, axis=0)
        codes = fake_quantize(w / scale, fmt, clip=quant_range(fmt)[1])
    flat = scale.reshape(-1) if granularity is Granularity.PER_CHANNEL else scale.reshape(())
    return codes.numpy().astype(qtype.numpy_dtype), flat.numpy().astype(np.float32)


def _weight_initializer(graph: GraphEditor, layer: str, weight: Tensor) -> onnx.TensorProto:
    name = f"{layer}.weight"
    tensor = graph.initializer(name)
    if tensor is None:
        raise FailedPrecondition(
            f"the exported graph has no initializer named {name}, so layer {layer!r} cannot be "
            "quantized in it (the exporter renamed or folded it)"
        )
    if tensor.data_type != onnx.TensorProto.FLOAT:
        raise FailedPrecondition(f"{name} is exported as a non-float32 tensor; export in float32")
    if not np.array_equal(numpy_helper.to_array(tensor), weight.to(torch.float32).cpu().numpy()):
        raise FailedPrecondition(
            f"the exported {name} differs from the model's parameter (the exporter transformed "
            "it, e.g. folded a BatchNorm into it), so it cannot be quantized faithfully"
        )
    return tensor


def rewrite_weight(graph: GraphEditor, plan: LayerPlan, weight: Tensor) -> None:
    """Quantize one layer's weight initializer as ``plan`` says."""
    layer, option = plan.entry.layer, plan.option
    tensor = _weight_initializer(graph, layer, weight)
    if plan.entry.weight == "float":
        return
    name = tensor.name
    if plan.entry.weight == "blocked":
        form = blocked_form_of(option.weight)
        assert form is not None
        graph.graph.initializer.remove(tensor)
        graph.insert_before(None, blocked_nodes(graph, layer, option.weight, form, weight, name))
        return
    if plan.entry.weight == "dequantized":
        with torch.no_grad():
            values = fake_quantize(
                weight.detach().to(torch.float32).cpu(),
                option.weight,
                granularity=option.granularity,
                axis=0,
            )
        tensor.CopyFrom(numpy_helper.from_array(values.numpy(), name))
        return
    qtype = plan.weight_type
    assert qtype is not None
    codes, scale = weight_codes(weight, option.weight, option.granularity, qtype)
    graph.graph.initializer.remove(tensor)
    inputs = [
        graph.add_initializer(f"{layer}.weight_quantized", codes),
        graph.add_initializer(f"{layer}.weight_scale", scale),
        graph.add_initializer(
            f"{layer}.weight_zero_point", np.zeros(scale.shape, dtype=qtype.numpy_dtype)
        ),
    ]
    node = helper.make_node(
        "DequantizeLinear", inputs, [name], name=graph.fresh(f"{layer}.weight_dequantize")
    )
    if option.granularity is Granularity.PER_CHANNEL:
        node.attribute.append(helper.make_attribute("axis", 0))
    graph.insert_before(None, [node])


def _compute_uses(graph: GraphEditor, weight_name: str) -> list[tuple[onnx.NodeProto, int]]:
    """(op, index of its activation input) for every op that multiplies by the weight."""
    uses: list[tuple[onnx.NodeProto, int]] = []
    frontier, seen = [weight_name], {weight_name}
    while frontier:
        value = frontier.pop()
        for node, index in graph.consumers(value):
            if node.op_type in _COMPUTE and index in (0, 1):
                uses.append((node, 1 - index))
            elif node.op_type in _PASS_THROUGH and index == 0:
                for output in node.output:
                    if output not in seen:
                        seen.add(output)
                        frontier.append(output)
    return uses


def _cast_nodes(
    graph: GraphEditor, layer: str, fmt: NumericFormat, qtype: OnnxQuantType, source: str
) -> tuple[list[onnx.NodeProto], str]:
    narrow = graph.fresh(f"{layer}.input_{fmt.name}")
    back = graph.fresh(f"{layer}.input_cast")
    nodes = [
        helper.make_node(
            "Cast",
            [source],
            [narrow],
            to=qtype.tensor_type,
            name=graph.fresh(f"{layer}.input_cast_to"),
        ),
        helper.make_node(
            "Cast",
            [narrow],
            [back],
            to=onnx.TensorProto.FLOAT,
            name=graph.fresh(f"{layer}.input_cast_back"),
        ),
    ]
    return nodes, back


def _qdq_nodes(
    graph: GraphEditor, plan: LayerPlan, qtype: OnnxQuantType, source: str
) -> tuple[list[onnx.NodeProto], str]:
    layer, fmt, clip = plan.entry.layer, plan.option.activation, plan.entry.activation_clip
    assert clip is not None
    with torch.no_grad():
        scale = compute_scale(torch.zeros(()), fmt, clip=clip).numpy().astype(np.float32)
    params = [
        graph.add_initializer(f"{layer}.input_scale", scale),
        graph.add_initializer(f"{layer}.input_zero_point", np.zeros((), dtype=qtype.numpy_dtype)),
    ]
    codes = graph.fresh(f"{layer}.input_quantized")
    nodes = [
        helper.make_node(
            "QuantizeLinear",
            [source, *params],
            [codes],
            name=graph.fresh(f"{layer}.input_quantize"),
        )
    ]
    if plan.entry.activation == "qdq_clipped":
        lo, hi = quant_range(fmt)
        bounds = [
            graph.add_initializer(f"{layer}.input_code_min", np.array(lo, qtype.numpy_dtype)),
            graph.add_initializer(f"{layer}.input_code_max", np.array(hi, qtype.numpy_dtype)),
        ]
        clipped = graph.fresh(f"{layer}.input_quantized_clipped")
        nodes.append(
            helper.make_node(
                "Clip", [codes, *bounds], [clipped], name=graph.fresh(f"{layer}.input_clip")
            )
        )
        codes = clipped
    output = graph.fresh(f"{layer}.input_dequantized")
    nodes.append(
        helper.make_node(
            "DequantizeLinear",
            [codes, *params],
            [output],
            name=graph.fresh(f"{layer}.input_dequantize"),
        )
    )
    return nodes, output


def _rank_of(graph: GraphEditor, value: str, node: onnx.NodeProto, weight: Tensor) -> int:
    """The rank of a compute op's activation input: a convolution's is its
    weight's, a Gemm's 2, a MatMul's from the graph's shape information."""
    if node.op_type in ("Conv", "ConvTranspose"):
        return int(weight.dim())
    if node.op_type == "Gemm":
        return 2
    for info in (*graph.graph.value_info, *graph.graph.input, *graph.graph.output):
        if info.name == value and info.type.tensor_type.HasField("shape"):
            return len(info.type.tensor_type.shape.dim)
    raise FailedPrecondition(
        f"the rank of {value!r} (the input of a MatMul) is unknown in the exported graph, so its "
        "block quantization cannot be written"
    )


def _blocked_input(
    graph: GraphEditor, plan: LayerPlan, node: onnx.NodeProto, index: int, weight: Tensor
) -> tuple[list[onnx.NodeProto], str]:
    source = node.input[index]
    groups = next((a.i for a in node.attribute if a.name == "group"), 1)
    conv = node.op_type in ("Conv", "ConvTranspose")
    clip = plan.entry.activation_clip
    assert clip is not None
    return blocked_input_nodes(
        graph,
        graph.fresh(f"{plan.entry.layer}.input_{plan.option.activation.name}"),
        plan.option.activation,
        clip,
        source,
        channel_axis=1 if conv else -1,
        rank=_rank_of(graph, source, node, weight),
        channels=int(weight.shape[1]) * (groups if conv else 1),
    )


def rewrite_activation(graph: GraphEditor, plan: LayerPlan, weight: Tensor | None = None) -> None:
    """Quantize the input of every op that multiplies by the layer's weight
    (``weight``, the layer's, tells a block format its channels)."""
    if plan.entry.activation in ("float", "not_represented"):
        return
    layer = plan.entry.layer
    uses = _compute_uses(graph, f"{layer}.weight")
    if not uses:
        raise FailedPrecondition(
            f"cannot find the op that multiplies by {layer}.weight in the exported graph, so the "
            f"input of layer {layer!r} cannot be quantized there"
        )
    if plan.entry.activation == "blocked":
        assert weight is not None
        for node, index in uses:
            nodes, output = _blocked_input(graph, plan, node, index, weight)
            graph.insert_before(node, nodes)
            node.input[index] = output
        return
    qtype = plan.activation_type
    assert qtype is not None
    for node, index in uses:
        if plan.entry.activation == "cast":
            nodes, output = _cast_nodes(
                graph, layer, plan.option.activation, qtype, node.input[index]
            )
        else:
            nodes, output = _qdq_nodes(graph, plan, qtype, node.input[index])
        graph.insert_before(node, nodes)
        node.input[index] = output
