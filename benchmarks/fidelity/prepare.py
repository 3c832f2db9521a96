"""One seed's starting point: the FP32 model and everything measured on it.

For every method and budget of a seed the same FP32 weights are quantized,
so the differences between methods are differences of allocation only. The
sensitivity comes from the sensitivity service's own domain code
(``sensitivity_svc.analysis.analyse``): Hutchinson weight traces, Omega per
option, and (for the activation-aware variant) activation traces. The
per-layer check quantizes one layer at a time, so Omega's ranking of the
layers can be compared with what quantizing them actually costs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitmesh.data.datasets import DatasetSpec, load_dataset
from bitmesh.formats import FormatKind, Granularity, get_format, parse_option
from bitmesh.models.loading import ModelSpec, load_model
from bitmesh.quant.fake_quant import fake_quantize, weight_error_sq
from bitmesh.quant.qmodel import QuantSettings, observing, wrap_with_config
from fidelity.protocol import OptionSet, Training
from fidelity.stats import spearman
from sensitivity_svc.analysis import SensitivitySettings, analyse
from trainer_svc.execute import execute
from trainer_svc.specs import CalibrationSpec, QatSpec, TrainingRequest, TrainingSettings

DATA = DatasetSpec(kind="digits")
INPUT_SHAPE = (1, 8, 8)
#: Formats of the per-layer check: one layer alone at this weight format.
CHECK_FORMATS = ("int2", "int3")


def model_spec(weights: str | None = None) -> ModelSpec:
    return ModelSpec(
        source="architecture",
        name_or_path="digits_cnn",
        input_shape=INPUT_SHAPE,
        weights_path=weights,
    )


def _batches(seed: int, training: Training) -> list[tuple[Tensor, Tensor]]:
    """Training batches for the traces, drawn with the seed."""
    data = load_dataset(DATA)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))  # type: ignore[arg-type]
    batches = []
    for b in range(training.trace_batches):
        index = order[b * training.trace_batch_size : (b + 1) * training.trace_batch_size]
        xs, ys = zip(*(data[int(i)] for i in index), strict=True)
        batches.append((torch.stack(xs), torch.stack(ys)))
    return batches


def _layer_inputs(
    model: nn.Module, names: list[str], batches: list[tuple[Tensor, Tensor]]
) -> dict[str, Tensor]:
    """Each layer's input on the trace batches (eval mode), concatenated."""
    modules = dict(model.named_modules())
    seen: dict[str, list[Tensor]] = {name: [] for name in names}
    handles = [
        modules[name].register_forward_pre_hook(
            lambda _m, args, name=name: seen[name].append(args[0].detach())
        )
        for name in names
    ]
    model.eval()
    with torch.no_grad():
        for inputs, _ in batches:
            model(inputs)
    for handle in handles:
        handle.remove()
    return {name: torch.cat(parts) for name, parts in seen.items()}


def activation_error(inputs: Tensor, fmt_name: str) -> float:
    """Mean per-sample ||Q(a) - a||^2 of a layer input at an activation format
    (per-tensor scale from the range, the unsigned grid after a ReLU, as QAT
    and calibration quantize it)."""
    fmt = get_format(fmt_name)
    if fmt.kind is FormatKind.INT and fmt.signed and bool((inputs >= 0).all()):
        fmt = get_format(f"uint{fmt.bits}")
    diff = fake_quantize(inputs, fmt) - inputs
    return float(diff.double().square().flatten(1).sum(1).mean())


def _calibrate(weights: str, config: dict[str, str], batches: int, seed: int) -> dict[str, float]:
    outcome = execute(
        TrainingRequest(
            "calibration",
            model_spec(weights),
            DATA,
            CalibrationSpec(
                config={k: parse_option(v) for k, v in config.items()},
                calibration_batches=batches,
            ),
            TrainingSettings(steps=1, seed=seed),
        )
    )
    return {"accuracy": outcome.evaluation.accuracy, "loss": outcome.evaluation.loss}


def _batch_loss(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> float:
    with torch.no_grad():
        losses = [F.cross_entropy(model(x), y, reduction="sum") for x, y in batches]
    return float(sum(losses)) / sum(len(y) for _, y in batches)


def measured_increases(
    weights: str, names: list[str], keys: Sequence[str], batches: list[tuple[Tensor, Tensor]]
) -> dict[str, dict[str, float]]:
    """Training-loss increase of each layer alone at each option, calibrated
    on the same training batches: the objective of the ``lcpaq_measured``
    variant (the test split is never used to choose)."""
    base = load_model(model_spec(weights)).eval()
    reference = _batch_loss(base, batches)
    out: dict[str, dict[str, float]] = {}
    for name in names:
        out[name] = {}
        for key in keys:
            model = copy.deepcopy(base)  # the file is read once, not per option
            layers = wrap_with_config(
                model, {name: parse_option(key)}, QuantSettings(), batches[0][0][:2]
            )
            model.eval()
            with observing(layers), torch.no_grad():
                for inputs, _ in batches:
                    model(inputs)
            out[name][key] = _batch_loss(model, batches) - reference
    return out


def prepare_seed(
    seed: int, training: Training, folder: Path, option_sets: Sequence[OptionSet]
) -> dict[str, Any]:
    """Train FP32, measure the sensitivity (Omega of every option of every
    set; per-tensor Omega too for the first set) and run the per-layer check."""
    fp32 = execute(
        TrainingRequest(
            "qat",
            model_spec(),
            DATA,
            QatSpec(),
            TrainingSettings(steps=training.fp32_steps, learning_rate=training.fp32_lr, seed=seed),
        )
    )
    weights = folder / f"fp32-seed{seed}.pt"
    weights.write_bytes(fp32.weights)
    model = load_model(model_spec(str(weights)))
    batches = _batches(seed, training)
    keys = list(dict.fromkeys(k for option_set in option_sets for k in option_set.option_keys()))
    report = analyse(
        model,
        batches,
        None,
        keys,
        SensitivitySettings(
            target_relative_se=0.1,
            max_samples=60,
            min_samples=8,
            seed=seed,
            workers=1,
            activation_sensitivity=True,
        ),
    )
    names = [entry.name for entry in report.layers]
    inputs = _layer_inputs(model, names, batches)
    activation_formats = sorted({a for s in option_sets for a in s.activations})
    modules = dict(model.named_modules())
    layers = []
    for entry in report.layers:
        sample = inputs[entry.name]
        weight = modules[entry.name].weight.detach()  # type: ignore[union-attr]
        per_weight = entry.trace / entry.parameters
        layers.append(
            {
                "name": entry.name,
                "parameters": entry.parameters,
                "macs": entry.macs,
                "trace": entry.trace,
                "activation_trace": entry.activation_trace,
                "activation_dim": int(sample[0].numel()),
                "activation_error": {f: activation_error(sample, f) for f in activation_formats},
                "per_tensor_omega": {
                    key: per_weight
                    * weight_error_sq(weight, parse_option(key).weight, Granularity.PER_TENSOR)
                    for key in option_sets[0].option_keys()
                },
                "check_omega": {
                    fmt: per_weight
                    * weight_error_sq(weight, get_format(fmt), Granularity.PER_CHANNEL)
                    for fmt in CHECK_FORMATS
                },
                "options": {
                    p.option_key: {
                        "omega": p.omega,
                        "weight_error_sq": p.weight_error_sq,
                        "costs": asdict(p.costs),
                    }
                    for p in entry.perturbations
                },
            }
        )
    measured = measured_increases(str(weights), names, option_sets[0].option_keys(), batches)
    for layer in layers:
        layer["measured_increase"] = measured[layer["name"]]
    fp32_loss = fp32.evaluation.loss
    check: dict[str, Any] = {}
    for fmt in CHECK_FORMATS:
        rows = []
        for layer in layers:
            measured = _calibrate(
                str(weights), {layer["name"]: f"{fmt}/fp32"}, training.calibration_batches, seed
            )
            omega = layer["check_omega"][fmt]
            rows.append(
                {
                    "layer": layer["name"],
                    "loss_increase": measured["loss"] - fp32_loss,
                    "omega": omega,
                }
            )
        check[fmt] = {
            "rows": rows,
            "spearman": spearman([r["omega"] for r in rows], [r["loss_increase"] for r in rows]),
        }
    return {
        "seed": seed,
        "weights": str(weights),
        "fp32": {"accuracy": fp32.evaluation.accuracy, "loss": fp32_loss},
        "layers": layers,
        "layer_check": check,
        "seconds": {"fp32": fp32.seconds, "sensitivity": report.seconds},
    }
