"""Open an ONNX file in onnxruntime (CPU) and say why not when it cannot.

onnxruntime refuses a model at load time for an IR version it does not know
and at session creation for an op/type it has no kernel for (e.g.
QuantizeLinear to FLOAT4E2M1); other gaps show only when the model runs. An
exported model counts as runnable when a session opens *and* one zero batch
runs; otherwise onnxruntime's own message is kept for the report.

One gap is onnxruntime's, not the model's (measured on 1.31.1): its QDQ
fusion at the default (extended) optimization level turns DequantizeLinear ->
Gemm -> [Relu] -> QuantizeLinear with FP8 or INT2 codes into a QGemm, which
only has 8-bit integer kernels, and the session fails to build. The same
model runs at the ``basic`` level, so that level is tried next and the
report says which level worked and why the default did not.

Another gap is silent: at the default level, onnxruntime 1.31 was reported
to miscompute a quantized MatMul (DequantizeLinear feeding MatMul) whose
activation input has rank > 2, as every Linear in a transformer has (0.20
logit error on a two-Linear model). The session builds and runs, so the
retry above never fires. A graph with such a MatMul
(:func:`rank3_quantized_matmuls`, read from the file's shapes without its
weights) therefore opens at ``basic`` directly, where the QDQ graph runs as
written, and the check says so. Every other graph keeps the default level,
so verification still exercises onnxruntime's fused integer kernels.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["Optimization", "RuntimeCheck", "open_session", "rank3_quantized_matmuls"]

#: onnxruntime's messages carry a long C++ source location; keep them readable.
_MAX_MESSAGE = 1500

Optimization = Literal["all", "basic"]


@dataclass(frozen=True)
class RuntimeCheck:
    """A session (or None), the graph optimization level it runs at, and
    onnxruntime's reason when there is no session or the default level failed."""

    session: Any
    optimization: Optimization | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.session is not None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _trial_shape(session: Any, input_shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """One sample of the input (None when a non-batch dim is symbolic and unknown)."""
    if input_shape is not None:
        return (1, *input_shape)
    declared = session.get_inputs()[0].shape[1:]
    if not all(isinstance(d, int) for d in declared):
        return None
    return (1, *declared)


def _try(path: Path, level: Optimization, input_shape: tuple[int, ...] | None, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the reason is returned instead
    if level == "basic":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own Fail/NotImplemented/... types
        raise _Refused(f"onnxruntime cannot load the model: {_short(exc)}") from exc
    shape = _trial_shape(session, input_shape)
    if shape is not None:
        feed = {session.get_inputs()[0].name: np.zeros(shape, dtype=np.float32)}
        try:
            session.run(None, feed)
        except Exception as exc:
            raise _Refused(f"onnxruntime cannot run the model: {_short(exc)}") from exc
    return session


def rank3_quantized_matmuls(path: str | Path) -> list[str]:
    """The MatMul nodes fed by a DequantizeLinear whose first input has rank > 2.

    Reads the graph only (no external weight data) and infers shapes; a
    tensor whose rank is still unknown does not count, and a file onnx
    cannot parse has none (onnxruntime then gives the reason)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not an ONNX file onnx can parse: onnxruntime will say why
        return []
    # onnx raises several types on graphs it cannot infer: ranks stay as stored.
    with contextlib.suppress(Exception):
        model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    ranks: dict[str, int] = {init.name: len(init.dims) for init in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            ranks[info.name] = len(tensor.shape.dim)
    producers = {output: node.op_type for node in graph.node for output in node.output}
    found = []
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2:
            continue
        quantized = any(producers.get(name) == "DequantizeLinear" for name in node.input[:2])
        if quantized and ranks.get(node.input[0], 0) > 2:
            found.append(node.name or node.output[0])
    return found


class _Refused(Exception):
    """onnxruntime said no; the message is the reason for the report."""


def open_session(
    path: str | Path, input_shape: tuple[int, ...] | None = None, *, threads: int = 1
) -> RuntimeCheck:
    """A CPU session for ``path`` that has run one zero batch, or onnxruntime's reason.

    The default optimization level is tried first, then ``basic``; a graph
    with a quantized MatMul on a rank > 2 input opens at ``basic`` at once
    (see the module docstring). ``input_shape`` (no batch dimension) sizes
    the trial batch when the model's input has symbolic dimensions besides
    the batch.
    """
    target = Path(path)
    gap = rank3_quantized_matmuls(target)
    if gap:
        try:
            session = _try(target, "basic", input_shape, threads)
        except _Refused as refused:
            return RuntimeCheck(None, None, str(refused))
        shown = ", ".join(gap[:3]) + (f" and {len(gap) - 3} more" if len(gap) > 3 else "")
        return RuntimeCheck(
            session,
            "basic",
            "run at graph_optimization_level=ORT_ENABLE_BASIC: onnxruntime's default-level "
            f"QDQ fusion miscomputes a quantized MatMul on an input of rank > 2 ({shown})",
        )
    try:
        return RuntimeCheck(_try(target, "all", input_shape, threads), "all", None)
    except _Refused as refused:
        default_error = str(refused)
    try:
        session = _try(target, "basic", input_shape, threads)
    except _Refused:
        return RuntimeCheck(None, None, default_error)
    return RuntimeCheck(
        session,
        "basic",
        f"runs only with graph_optimization_level=ORT_ENABLE_BASIC; at the default level: "
        f"{default_error}",
    )
