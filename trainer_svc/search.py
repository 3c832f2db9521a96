"""The one-shot search job: train the supernet and its policy together, then
serve the argmax configuration with the trained weights (no retraining)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from bitmesh.quant.qmodel import QuantSettings, quantize_model
from bitmesh.quant.range_estimators import RangeEstimator
from trainer_svc.evaluate import accuracy_and_loss, evaluate
from trainer_svc.fliqs import (
    Controller,
    ControllerSettings,
    SampledCost,
    SearchHook,
    build_decisions,
    search_spaces,
)
from trainer_svc.loop import LoopIO, train
from trainer_svc.outcome import Outcome, weights_bytes
from trainer_svc.prepare import prepare
from trainer_svc.specs import SearchSpec
from trainer_svc.workspace import Workspace, search_target, search_weight_bytes


def run_search(ws: Workspace, io: LoopIO) -> Outcome:
    spec = ws.request.spec
    assert isinstance(spec, SearchSpec)
    settings = ws.request.training
    data = prepare(ws, spec.reward_holdout)
    started = time.perf_counter()  # the job's work: loading (validate, prepare) is not
    model = ws.model
    names = ws.layer_names
    # Switchable clipping: one clip per activation format, all formats sharing
    # the weights; a running range per format, or a learned (LSQ) clip per
    # format initialised from the first batch it sees.
    quant = QuantSettings(
        estimator=RangeEstimator("minmax"),
        learn_clips=spec.learned_clips,
        switchable_clipping=spec.switchable_clipping,
    )
    layers = quantize_model(
        model, search_spaces(names, spec.formats, spec.weight_granularity), quant, data.example
    )
    decisions = build_decisions(names, spec.tie_groups, spec.separate_activation)
    target = search_target(ws.layers, spec)
    controller = Controller(
        len(decisions),
        len(spec.formats),
        ControllerSettings(
            learning_rate=spec.policy_learning_rate,
            baseline_momentum=spec.baseline_momentum,
            entropy_beta_max=spec.entropy_beta_max,
            warmup_steps=int(spec.warmup_fraction * settings.steps),
            total_steps=settings.steps,
            cost_beta=spec.cost_beta,
            target=target,
            one_sided=spec.one_sided,
            seed=settings.seed,
            counterfactual_cost=not spec.plain_baseline,
        ),
    )
    held_out = data.held_out

    def held_out_quality(step: int) -> float:
        # After the update, at the formats just trained, in training mode
        # (BatchNorm normalises with this batch's statistics, as the training
        # forward did), without gradients.
        assert held_out is not None
        x, y = held_out.get(step)
        with torch.no_grad():
            return -float(F.cross_entropy(model(x), y))

    hook = SearchHook(
        controller,
        decisions,
        layers,
        SampledCost(
            ws.layers,
            decisions,
            [f.bits for f in spec.formats],
            spec.axis,
            search_weight_bytes(ws.layers, spec),
        ),
        quality=held_out_quality if held_out is not None else None,
    )

    def evaluate_argmax() -> tuple[float, float]:
        # Mid-search evaluations show the policy's current favourite; the next
        # step samples (and sets) its own formats again.
        hook.apply(controller.argmax())
        accuracy, loss, _ = accuracy_and_loss(model, data.test, ws.device)
        return accuracy, loss

    result = train(model, data.batches, settings, io, hook=hook, evaluate=evaluate_argmax)
    io.report(0.97, {}, "evaluating")
    chosen = hook.finish()
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
        final_entropy=controller.mean_entropy(),
        policy=hook.policy(spec.formats),
        target=target,
        seconds=seconds,
    )
