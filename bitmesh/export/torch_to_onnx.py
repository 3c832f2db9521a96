"""Export a float torch model to an ONNX graph, or say which op blocked it.

torch's own exporter does the work: the ``torch.export``-based one
(``dynamo=True``, backed by onnxscript), which torch recommends; the older
TorchScript exporter is deprecated and slated for removal. Two settings
matter for what comes next (:mod:`bitmesh.export.onnx_qdq` swaps each
quantized layer's weight initializer for quantized codes):

- ``optimize=False``: onnxscript's optimizer folds BatchNorm into the
  preceding convolution *under the convolution's weight name*, which would
  make the initializer differ from the parameter that was fake-quantized.
  onnxruntime folds constants itself when it loads the model.
- a dynamic batch dimension, so the model runs on any batch size.

When the exporter has no ONNX form for an op it names the op in its error
("No ONNX function found for <OpOverload(op='aten.cummax', ...)>"); that name
is pulled out so the user learns which op to replace.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import onnx
import torch
from torch import nn

from bitmesh.errors import FailedPrecondition

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "OnnxExportBlocked",
    "export_float_graph",
    "unsupported_ops_of",
]

logger = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: Name of the exported dynamic batch dimension.
_BATCH_DIM = "batch"
#: Batch size of the example input: 2, since torch.export specialises a
#: dimension of size 1 to a constant.
_EXAMPLE_BATCH = 2

_OP_PATTERNS = (
    # torch.export-based exporter (torch >= 2.5)
    re.compile(r"No ONNX function found for <OpOverload\(op='([^']+)'"),
    # TorchScript exporter (in case a future torch falls back to it)
    re.compile(r"Exporting the operator '([^']+)' to ONNX opset version \d+ is not supported"),
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MAX_REASON = 600


class OnnxExportBlocked(FailedPrecondition):
    """The model cannot be exported to ONNX; ``unsupported_ops`` names the
    ops with no ONNX form (empty when the failure was something else, e.g.
    control flow ``torch.export`` cannot capture)."""

    def __init__(self, message: str, unsupported_ops: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.unsupported_ops = unsupported_ops

    def to_dict(self) -> dict[str, object]:
        """What a job report records when the export failed."""
        return {
            "exported": False,
            "unsupported_ops": list(self.unsupported_ops),
            "reason": self.message,
        }


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def unsupported_ops_of(exc: BaseException) -> tuple[str, ...]:
    """Names of the ops an exporter error says have no ONNX form, in order."""
    found: list[str] = []
    for link in _chain(exc):
        for pattern in _OP_PATTERNS:
            for name in pattern.findall(str(link)):
                if name not in found:
                    found.append(name)
    return tuple(found)


def _summary(exc: BaseException) -> str:
    """The exporter's own one-paragraph summary (it prints pages otherwise)."""
    text = _ANSI.sub("", str(exc))
    _, marker, rest = text.partition("## Exception summary")
    if marker:
        text = rest.split("(Refer to the full stack trace", 1)[0]
    text = " ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    text = text or type(exc).__name__
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _set_mode(model: nn.Module, training: bool) -> bool:
    """Switch modes where the module allows it (exported programs refuse)."""
    try:
        model.train(training)
    except NotImplementedError:
        return False
    return True


def _name_batch_dim(model: onnx.ModelProto) -> None:
    """Call the dynamic batch dimension "batch" (torch names it "s77" or so)."""
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_param"):
            dims[0].dim_param = _BATCH_DIM


def export_float_graph(
    model: nn.Module, input_shape: tuple[int, ...], opset: int
) -> onnx.ModelProto:
    """``model`` in eval mode as an ONNX graph with input ``"input"`` (batch
    dimension dynamic) and output ``"logits"``; initializers keep the
    parameters' names (``"conv1.weight"``). The model's mode is restored.

    Raises OnnxExportBlocked (a FailedPrecondition) naming the op(s) without
    an ONNX form, or FailedPrecondition when onnxscript is missing.
    """
    example = torch.zeros((_EXAMPLE_BATCH, *input_shape))
    was_training = model.training
    switched = _set_mode(model, False)
    try:
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            optimize=False,
            verbose=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
        )
    except ImportError as exc:
        raise FailedPrecondition(
            f"ONNX export needs onnxscript, which torch's exporter imports ({exc}); "
            "install it (pip install onnxscript==0.7.2)"
        ) from exc
    except Exception as exc:  # the exporter raises many types, all meaning "cannot export"
        ops = unsupported_ops_of(exc)
        if ops:
            message = (
                f"the model cannot be exported to ONNX: no ONNX form for {', '.join(ops)}; "
                "replace that op (or train without ONNX export)"
            )
        else:
            message = f"the model cannot be exported to ONNX: {_summary(exc)}"
        raise OnnxExportBlocked(message, ops) from exc
    finally:
        if switched:
            model.train(was_training)
    if program is None:  # only when writing to a file, which is not done here
        raise FailedPrecondition("torch.onnx.export returned no program")
    proto = program.model_proto
    _name_batch_dim(proto)
    logger.debug("exported %s to ONNX opset %d", type(model).__name__, opset)
    return proto
