"""Post-training calibration: the fast baseline with no training at all.

Weights are quantized with their own max |w| (nothing to calibrate); the
activation ranges are measured on ``calibration_batches`` training batches
with the model in eval mode, so BatchNorm statistics stay as trained.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch

from bitmesh.quant.qmodel import QuantSettings, effective_config, observing, wrap_with_config
from trainer_svc.evaluate import evaluate
from trainer_svc.loop import TRAIN_PROGRESS, LoopIO
from trainer_svc.outcome import Outcome, weights_bytes
from trainer_svc.prepare import prepare
from trainer_svc.specs import CalibrationSpec
from trainer_svc.workspace import Workspace, job_config


def run_calibration(ws: Workspace, io: LoopIO) -> Outcome:
    spec = ws.request.spec
    assert isinstance(spec, CalibrationSpec)
    config = job_config(ws)
    data = prepare(ws)
    started = time.perf_counter()  # the job's work: loading (validate, prepare) is not
    model = ws.model.eval()
    layers = wrap_with_config(
        model, config, QuantSettings(estimator=spec.activation_range), data.example
    )
    model.eval()
    total = spec.calibration_batches
    history = []
    with observing(layers), torch.no_grad():
        for index in range(total):
            io.check_cancelled()
            model(data.batches.get(index)[0])
            point = {"step": float(index + 1)}
            history.append(point)
            io.report(TRAIN_PROGRESS * (index + 1) / total, point, "calibrating")
    chosen = effective_config(layers)
    evaluation = evaluate(model, data.test, ws.device, ws.layers, chosen)
    seconds = time.perf_counter() - started
    return Outcome(
        config=chosen,
        evaluation=evaluation,
        history=history,
        steps_done=total,
        weights=None if _unchanged_file(ws, layers) else weights_bytes(model, layers, chosen),
        seconds=seconds,
    )


def _unchanged_file(ws: Workspace, layers: Mapping[str, object]) -> bool:
    """Nothing was quantized and the model has a file of its own (weights or
    a program), so that file is the result's weights (``Outcome.weights``).
    A randomly initialised architecture has none: its weights are stored."""
    model = ws.request.model
    return not layers and (model.weights_path is not None or model.source != "architecture")
