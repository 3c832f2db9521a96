"""ONNX export of a quantization configuration as QuantizeLinear/DequantizeLinear.

The float model is exported by torch (:mod:`bitmesh.export.torch_to_onnx`),
each configured layer is rewritten as planned (:mod:`bitmesh.export.qdq_plan`
says how each format is represented, :mod:`bitmesh.export.qdq_rewrite` edits
the graph), and the file is written, checked with ``onnx.checker`` and opened
in onnxruntime. Where ONNX or onnxruntime cannot represent or run a format,
the file is still written and the report says so per layer.

The opset is by default the lowest that has every type used and that
onnxruntime runs: 18 (the exporter's floor) for INT8; 21 for INT4 and for
FP8 (the standard has FP8 from 19, but onnxruntime 1.31 moves an FP8
QuantizeLinear ahead of a Reshape it has no FP8 kernel for before 21); 23 for
FP4 E2M1; 25 for INT2; 28 for FP6. The IR version is the lowest for that
opset: onnxruntime rejects the newer one onnx would stamp.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from bitmesh.errors import InvalidArgument
from bitmesh.export.measure import stored_weight_bytes
from bitmesh.export.onnx_types import ir_version_for
from bitmesh.export.qdq_plan import USES_CLIP, LayerExport, LayerPlan, choose_opset, plan_layer
from bitmesh.export.qdq_rewrite import GraphEditor, rewrite_activation, rewrite_weight
from bitmesh.export.runtime import Optimization, open_session
from bitmesh.export.torch_to_onnx import export_float_graph
from bitmesh.formats import QuantOption, get_format
from bitmesh.models.layers import QUANTIZABLE_TYPES

__all__ = ["ExportReport", "export_onnx"]

logger = logging.getLogger(__name__)

#: Models above this size are written with their tensors in a side file
#: (protobuf caps one message at 2 GiB).
_EXTERNAL_DATA_BYTES = 1_800_000_000
_MAX_CHECKER_MESSAGE = 600


@dataclass(frozen=True)
class ExportReport:
    """What was written, and whether onnx's checker and onnxruntime accept it.

    ``onnxruntime_loadable``: a CPU session opened and ran one zero batch, at
    graph optimization level ``onnxruntime_optimization`` ("all", the
    default, or "basic" when onnxruntime's own QDQ fusion breaks the default;
    see :mod:`bitmesh.export.runtime`). ``onnxruntime_error`` is
    onnxruntime's message: why it cannot load or run the model, or why the
    default level failed.
    """

    path: str
    opset: int
    ir_version: int
    layers: tuple[LayerExport, ...]
    checker_ok: bool
    checker_error: str | None
    onnxruntime_loadable: bool
    onnxruntime_optimization: Optimization | None
    onnxruntime_error: str | None
    exporter: str
    #: Per configured layer, the bytes its weight takes in the file (codes,
    #: scales, zero points: ``measure.stored_weight_bytes``).
    weight_bytes: Mapping[str, float] = field(default_factory=dict)
    #: The whole file (its side data file included), in bytes.
    file_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``exported``/``unsupported_ops`` match what
        ``OnnxExportBlocked.to_dict`` gives for a failed export."""
        data = asdict(self)
        data["layers"] = [asdict(layer) for layer in self.layers]
        data["weight_bytes"] = dict(self.weight_bytes)
        data["exported"] = True
        data["unsupported_ops"] = []
        return data

    def layer(self, name: str) -> LayerExport:
        """The entry of one configured layer."""
        for entry in self.layers:
            if entry.layer == name:
                return entry
        raise InvalidArgument(f"layer {name!r} is not in this export's configuration")


def _layer_weights(model: nn.Module, config: Mapping[str, QuantOption]) -> dict[str, Tensor]:
    """Each configured layer's weight; InvalidArgument naming what is wrong."""
    modules = dict(model.named_modules())
    weights: dict[str, Tensor] = {}
    for name in config:
        module = modules.get(name)
        if not isinstance(module, QUANTIZABLE_TYPES):
            known = [n for n, m in modules.items() if isinstance(m, QUANTIZABLE_TYPES)]
            what = "no such layer" if module is None else f"a {type(module).__name__}"
            raise InvalidArgument(
                f"cannot export layer {name!r} ({what}): the configured layers must be the "
                f"model's Conv/Linear modules ({', '.join(known[:20]) or 'none'}); export the "
                "plain float model, not a wrapped fake-quantized one"
            )
        weight = module.weight
        assert isinstance(weight, Tensor)
        weights[name] = weight.detach()
    return weights


def _checked_clip(layer: str, clip: object) -> float:
    if clip is None:
        raise InvalidArgument(
            f"layer {layer!r} quantizes its input but activation_ranges has no clip for it; "
            "give the clip its activation quantizer uses (its running range)"
        )
    try:
        value = float(clip)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument(
            f"activation clip of layer {layer!r} must be a positive finite number, got {clip!r}"
        )
    return value


def _plans(
    config: Mapping[str, QuantOption],
    activation_ranges: Mapping[str, float],
    dequantize: frozenset[str],
) -> list[LayerPlan]:
    plans = []
    for layer, option in config.items():
        plan = plan_layer(layer, option, dequantize)
        if plan.entry.activation in USES_CLIP:
            given = activation_ranges.get(layer)
            block = option.activation.block
            if given is None and block is not None and not block.tensor_scale:
                given = 1.0  # MX and group scales come from the blocks: no range needed
            clip = _checked_clip(layer, given)
            plan = replace(plan, entry=replace(plan.entry, activation_clip=clip))
        plans.append(plan)
    return plans


def _save(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    if size > _EXTERNAL_DATA_BYTES:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{path.name}.data",
        )
    else:
        onnx.save_model(model, str(path))


def _checker_error(path: Path) -> str | None:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return " ".join(str(exc).split())[:_MAX_CHECKER_MESSAGE]
    return None


def _exporter_name() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        onnxscript = version("onnxscript")
    except PackageNotFoundError:
        onnxscript = "missing"
    return f"torch.onnx.export(dynamo=True), torch {torch.__version__}, onnxscript {onnxscript}"


def _check_input_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise InvalidArgument(
            "input_shape must be positive integers without the batch dimension, e.g. "
            f"(1, 8, 8); got {input_shape!r}"
        )
    return shape


def export_onnx(
    model: nn.Module,
    config: Mapping[str, QuantOption],
    activation_ranges: Mapping[str, float],
    input_shape: tuple[int, ...],
    path: str | Path,
    *,
    opset: int | None = None,
    dequantize_formats: Collection[str] = (),
) -> ExportReport:
    """Write ``model`` with ``config``'s quantization as QDQ ONNX to ``path``.

    ``model`` is the plain float model whose weights the fake quantizers see
    (layers named as in ``named_modules()``; fold BatchNorms into it first if
    training folded them). ``config`` gives each quantized layer its option
    (activation formats as applied, e.g. ``uint8`` after a ReLU);
    ``activation_ranges`` the clip of each layer's input quantizer;
    ``input_shape`` has no batch dimension (the exported batch is dynamic).
    ``opset`` defaults to the lowest that has every type used.
    ``dequantize_formats`` (format names) are written as dequantized weights
    and unrepresented activations even where ONNX has a type: pass
    ``onnx_types.ONNXRUNTIME_CPU_MISSING`` for a model onnxruntime can run.

    Raises InvalidArgument (unknown layer, missing or bad clip, bad shape,
    opset too old), OnnxExportBlocked (a FailedPrecondition naming the op
    with no ONNX form) or FailedPrecondition (the exported graph does not
    hold a layer's weight as the parameter). A file the checker or
    onnxruntime rejects is still written; the report says why.
    """
    shape = _check_input_shape(input_shape)
    dequantize = frozenset(get_format(name).name for name in dequantize_formats)
    weights = _layer_weights(model, config)
    plans = _plans(config, activation_ranges, dequantize)
    chosen = choose_opset(plans, opset)
    proto = export_float_graph(model, shape, chosen)
    graph = GraphEditor(proto.graph)
    for plan in plans:
        rewrite_weight(graph, plan, weights[plan.entry.layer])
        rewrite_activation(graph, plan, weights[plan.entry.layer])
    proto.ir_version = max(proto.ir_version, ir_version_for(chosen))
    _drop_provenance(proto)
    _record_formats(proto, plans)
    weight_bytes = stored_weight_bytes(proto, [p.entry.layer for p in plans])
    target = Path(path)
    _save(proto, target)
    file_bytes = sum(
        f.stat().st_size for f in (target, target.with_name(f"{target.name}.data")) if f.exists()
    )
    checker_error = _checker_error(target)
    runtime = open_session(target, shape)
    if runtime.error:
        logger.info("onnxruntime and %s: %s", target, runtime.error)
    return ExportReport(
        path=str(target),
        opset=chosen,
        ir_version=proto.ir_version,
        layers=tuple(p.entry for p in plans),
        checker_ok=checker_error is None,
        checker_error=checker_error,
        onnxruntime_loadable=runtime.ok,
        onnxruntime_optimization=runtime.optimization,
        onnxruntime_error=runtime.error,
        exporter=_exporter_name(),
        weight_bytes=weight_bytes,
        file_bytes=file_bytes,
    )


def _drop_provenance(proto: onnx.ModelProto) -> None:
    """Drop torch's per-node provenance (stack traces, module paths): half of
    a digits CNN file (27 KB of 55 KB), and the file's size is what the size
    budget is checked against."""
    for node in proto.graph.node:
        del node.metadata_props[:]


def _record_formats(proto: onnx.ModelProto, plans: list[LayerPlan]) -> None:
    """Each layer's format and how it was written, as model metadata
    (``bitmesh.quantization``, JSON): a dequantized weight's format is known
    from the file alone."""
    entries = {
        p.entry.layer: {
            "option": p.option.key,
            "weight": p.entry.weight,
            "weight_onnx_type": p.entry.weight_onnx_type,
            "activation": p.entry.activation,
        }
        for p in plans
    }
    prop = proto.metadata_props.add()
    prop.key = "bitmesh.quantization"
    prop.value = json.dumps(entries, sort_keys=True)
