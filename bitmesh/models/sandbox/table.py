"""What the sandbox answers about a model file: plain data, no torch objects.

The sandbox's reply crosses a process boundary from code bitmesh does not
trust, so it is JSON of numbers and names (never a pickle: unpickling it in
the service would run whatever the child wrote). :func:`describe` builds it
in the child from the loaded model; :meth:`ModelTable.from_json` rebuilds it
in the service, checking every field's type, so a confused or compromised
child can at worst give a wrong table, not run code in the service.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from bitmesh.models.spec import ModelSpec

if TYPE_CHECKING:  # torch-free at import: the trainer's and proxy's edges import this
    from collections.abc import Sequence

    from torch import nn

    from bitmesh.formats import QuantOption
    from bitmesh.models.layers import LayerProfile

__all__ = [
    "ModelTable",
    "describe",
    "errors_from_json",
    "layer_weight_errors",
    "spec_from_json",
    "spec_to_json",
    "weight_errors",
]

#: Most options one weight-errors request may price (the solver's own
#: ceiling per layer, BITMESH_SOLVER_MAX_OPTIONS_PER_LAYER's default).
MAX_ERROR_OPTIONS = 256


@dataclass(frozen=True)
class ModelTable:
    """A model's quantizable layers and totals (ListLayers' table, without costs)."""

    layers: tuple[LayerProfile, ...]
    total_parameters: int
    model_hash: str
    weight_parameters: int

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def weight_coverage(self) -> float:
        covered = sum(layer.parameters for layer in self.layers)
        return covered / self.weight_parameters if self.weight_parameters else 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": [asdict(layer) for layer in self.layers],
            "total_parameters": self.total_parameters,
            "model_hash": self.model_hash,
            "weight_parameters": self.weight_parameters,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelTable:
        """Rebuild a table, raising ValueError on anything that is not one."""
        from bitmesh.models.layers import LayerProfile

        layers = []
        for item in data["layers"]:
            layer = LayerProfile(
                name=_typed(item["name"], str),
                kind=_typed(item["kind"], str),
                parameters=_typed(item["parameters"], int),
                weight_shape=tuple(_typed(d, int) for d in item["weight_shape"]),
                output_channels=_typed(item["output_channels"], int),
                macs=_typed(item["macs"], int),
                bias_parameters=_typed(item["bias_parameters"], int),
            )
            layers.append(layer)
        return cls(
            layers=tuple(layers),
            total_parameters=_typed(data["total_parameters"], int),
            model_hash=_typed(data["model_hash"], str),
            weight_parameters=_typed(data["weight_parameters"], int),
        )


def _typed(value: Any, kind: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else "number"
        raise ValueError(f"expected {name}, got {type(value).__name__}")
    return value


def spec_to_json(spec: ModelSpec) -> dict[str, Any]:
    return {
        "source": spec.source,
        "name_or_path": spec.name_or_path,
        "input_shape": list(spec.input_shape),
        "weights_path": spec.weights_path,
        "num_classes": spec.num_classes,
    }


def spec_from_json(data: dict[str, Any]) -> ModelSpec:
    return ModelSpec(
        source=data["source"],
        name_or_path=data["name_or_path"],
        input_shape=tuple(data["input_shape"]),
        weights_path=data["weights_path"],
        num_classes=data["num_classes"],
    )


def describe(spec: ModelSpec) -> ModelTable:
    """Load the model (checked, probed) and discover its layers: the child's
    work for a program file, the service's own for an architecture (trusted
    torchvision code; ``sensitivity_svc.layer_table``)."""
    from bitmesh.models.layer_cache import layers_of
    from bitmesh.models.layers import weight_parameters
    from bitmesh.models.model_cache import load_model_for_reading, model_hash_of

    model = load_model_for_reading(spec)
    layers = layers_of(model, spec)
    return ModelTable(
        layers=tuple(layers),
        total_parameters=sum(p.numel() for p in model.parameters()),
        model_hash=model_hash_of(spec, model),
        weight_parameters=weight_parameters(model),
    )


def weight_errors(
    spec: ModelSpec, layers: Sequence[LayerProfile], options: Sequence[QuantOption]
) -> list[list[float]]:
    """:func:`layer_weight_errors` of ``spec``'s model, loaded for reading: the
    child's work for a program file (its weights are read only by loading it)."""
    from bitmesh.models.model_cache import load_model_for_reading

    return layer_weight_errors(load_model_for_reading(spec), layers, options)


def layer_weight_errors(
    model: nn.Module, layers: Sequence[LayerProfile], options: Sequence[QuantOption]
) -> list[list[float]]:
    """Per layer of ``layers`` (in order) and option, ||Q_f(W_l) - W_l||^2 of
    ``model``'s weight: the uniform-sensitivity Omega of proxy NAS's budget
    problem, computed alike in the child (a program) and in the service (an
    architecture, trusted code)."""
    import torch

    from bitmesh.quant.fake_quant import weight_error_sq

    errors = []
    for layer in layers:
        try:
            weight = model.get_submodule(layer.name).weight
        except AttributeError:  # discovered by dispatch: named by its weight parameter
            weight = model.get_parameter(f"{layer.name}.weight")
        assert isinstance(weight, torch.Tensor)
        errors.append([weight_error_sq(weight, o.weight, o.granularity) for o in options])
    return errors


def errors_from_json(data: Any, layers: int, options: int) -> list[list[float]]:
    """Rebuild a weight-errors table of ``layers`` rows of ``options`` numbers,
    raising ValueError on anything else (a negative or NaN error included)."""
    if not isinstance(data, list) or len(data) != layers:
        raise ValueError(f"expected {layers} rows of weight errors")
    rows = []
    for row in data:
        if not isinstance(row, list) or len(row) != options:
            raise ValueError(f"expected {options} weight errors per layer")
        values = [float(_typed(v, (int, float))) for v in row]
        if not all(v >= 0.0 for v in values):  # False for NaN too
            raise ValueError("a weight error is negative or NaN")
        rows.append(values)
    return rows
