"""Run an exported ONNX model in onnxruntime and compare it with the torch model.

The comparison is on predictions (argmax of the logits) over a dataset, the
test split in practice: the fraction of samples where the two agree, each
one's accuracy, and the largest absolute logit difference. Logits differ by
float summation order anyway (and, for coarse formats, a value that lands on
a rounding boundary can flip to the next code), so agreement of predictions
is the criterion; the logit difference is reported to show how close it is.

When onnxruntime cannot load or run the model (a type without a kernel, an
IR version it does not know) the report says so with onnxruntime's message
instead of failing: that is a finding about the runtime, not an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from bitmesh.data.datasets import make_loader
from bitmesh.errors import InvalidArgument, NotFound
from bitmesh.export.runtime import Optimization, open_session

__all__ = ["VerifyReport", "verify_onnx"]


@dataclass(frozen=True)
class VerifyReport:
    """ONNX vs torch on one dataset; the ONNX fields are None when onnxruntime
    could not run the model (``onnxruntime_error`` says why)."""

    path: str
    samples: int
    torch_accuracy: float
    onnxruntime_ok: bool
    onnxruntime_optimization: Optimization | None
    onnxruntime_error: str | None
    agreement: float | None
    onnx_accuracy: float | None
    max_abs_logit_diff: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _torch_logits(reference: Callable[[Tensor], Tensor], x: Tensor) -> np.ndarray:
    with torch.no_grad():
        out = reference(x)
    if not isinstance(out, Tensor) or out.dim() != 2:
        raise InvalidArgument(
            "the reference must return a (batch, classes) tensor of logits, got "
            f"{type(out).__name__}{tuple(out.shape) if isinstance(out, Tensor) else ''}"
        )
    return out.detach().to(torch.float32).cpu().numpy()


def _set_eval(reference: Callable[[Tensor], Tensor]) -> bool | None:
    """Eval mode for a module (activation quantizers must not update their
    ranges while being compared); returns the mode to restore."""
    if not isinstance(reference, nn.Module):
        return None
    was_training = reference.training
    reference.eval()
    return was_training


def verify_onnx(
    path: str | Path,
    reference: Callable[[Tensor], Tensor],
    dataset: Dataset[Any],
    batch_size: int = 256,
) -> VerifyReport:
    """Compare the ONNX model at ``path`` with ``reference`` (the fake-quantized
    torch model, or any function from a batch to logits) on ``dataset``'s
    (sample, label) pairs. A module reference runs in eval mode and gets its
    mode back. Raises NotFound for a missing file and InvalidArgument for an
    empty dataset or a reference that does not return logits.
    """
    target = Path(path)
    if not target.is_file():
        raise NotFound(f"ONNX model {str(target)!r} does not exist")
    loader = make_loader(dataset, batch_size)
    runtime = open_session(target)
    restore = _set_eval(reference)
    samples = torch_correct = onnx_correct = agree = 0
    max_diff = 0.0
    error = runtime.error
    session = runtime.session
    try:
        for x, y in loader:
            labels = y.cpu().numpy()
            torch_out = _torch_logits(reference, x)
            samples += len(labels)
            torch_correct += int((torch_out.argmax(1) == labels).sum())
            if session is None:
                continue
            try:
                onnx_out = session.run(None, {session.get_inputs()[0].name: x.cpu().numpy()})[0]
            except Exception as exc:  # onnxruntime's own error types
                session, error = None, f"onnxruntime cannot run the model: {exc}"
                continue
            onnx_correct += int((onnx_out.argmax(1) == labels).sum())
            agree += int((onnx_out.argmax(1) == torch_out.argmax(1)).sum())
            max_diff = max(max_diff, float(np.abs(onnx_out - torch_out).max()))
    finally:
        if isinstance(reference, nn.Module) and restore is not None:
            reference.train(restore)
    if samples == 0:
        raise InvalidArgument("the dataset to verify on is empty")
    ran = session is not None
    return VerifyReport(
        path=str(target),
        samples=samples,
        torch_accuracy=torch_correct / samples,
        onnxruntime_ok=ran,
        onnxruntime_optimization=runtime.optimization if ran else None,
        onnxruntime_error=error,
        agreement=agree / samples if ran else None,
        onnx_accuracy=onnx_correct / samples if ran else None,
        max_abs_logit_diff=max_diff if ran else None,
    )
