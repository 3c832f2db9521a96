"""Quantization-aware training at a fixed configuration (METHODS.md section 6).

The student is the model with its layers fake-quantized per the
configuration; with distillation on, the teacher is a frozen copy of the
full-precision model as loaded (so QAT should start from trained weights:
``ModelRef.weights``).
"""

from __future__ import annotations

import copy
import time

from bitmesh.quant.qmodel import QuantSettings, effective_config, wrap_with_config
from trainer_svc.evaluate import accuracy_and_loss, evaluate
from trainer_svc.loop import LoopIO, train
from trainer_svc.outcome import Outcome, weights_bytes
from trainer_svc.prepare import prepare
from trainer_svc.specs import QatSpec
from trainer_svc.workspace import Workspace, job_config


def run_qat(ws: Workspace, io: LoopIO) -> Outcome:
    spec = ws.request.spec
    assert isinstance(spec, QatSpec)
    config = job_config(ws)
    data = prepare(ws)
    started = time.perf_counter()  # the job's work: loading (validate, prepare) is not
    model = ws.model
    teacher = copy.deepcopy(model).eval() if spec.distillation.enabled else None
    settings = QuantSettings(estimator=spec.activation_range, fold_bn=spec.fold_bn)
    layers = wrap_with_config(model, config, settings, data.example)
    result = train(
        model,
        data.batches,
        ws.request.training,
        io,
        teacher=teacher,
        distillation=spec.distillation,
        evaluate=lambda: accuracy_and_loss(model, data.test, ws.device)[:2],
    )
    io.report(0.97, {}, "evaluating")
    chosen = effective_config(layers)
    evaluation = evaluate(model, data.test, ws.device, ws.layers, chosen)
    # Storing checkpoints is artifact traffic, not the job's work.
    seconds = time.perf_counter() - started - result.checkpoint_seconds
    return Outcome(
        config=chosen,
        evaluation=evaluation,
        history=result.history,
        steps_done=result.steps_done,
        weights=weights_bytes(model, layers, chosen),
        resumed_from=result.resumed_from,
        seconds=seconds,
    )
