"""A model's quantizable layers with their costs per option (ListLayers)."""

from __future__ import annotations

from dataclasses import dataclass

from bitmesh.costs import LayerCosts, option_costs
from bitmesh.formats import QuantOption
from bitmesh.models.layers import LayerProfile
from bitmesh.models.loading import ModelSpec
from bitmesh.models.sandbox import ModelTable, vet_model
from bitmesh.models.sandbox.table import describe


@dataclass(frozen=True)
class LayerTable:
    layers: list[LayerProfile]
    costs: dict[str, dict[str, LayerCosts]]  # layer -> option key -> costs
    total_parameters: int
    total_macs: int
    model_hash: str
    weight_parameters: int
    weight_coverage: float


def _described(spec: ModelSpec) -> ModelTable:
    """The model's table: from the sandbox for a program file (this process
    never loads it), else from the architecture built here."""
    vetted = vet_model(spec)
    return vetted if vetted is not None else describe(spec)


def layer_table(spec: ModelSpec, options: list[QuantOption]) -> LayerTable:
    """Find the model's quantizable layers and cost every option."""
    table = _described(spec)
    layers = list(table.layers)
    costs = {
        layer.name: {
            option.key: option_costs(
                layer.parameters,
                layer.macs,
                option,
                layer.output_channels,
                weight_shape=layer.weight_shape,
            )
            for option in options
        }
        for layer in layers
    }
    return LayerTable(
        layers=layers,
        costs=costs,
        total_parameters=table.total_parameters,
        total_macs=table.total_macs,
        model_hash=table.model_hash,
        weight_parameters=table.weight_parameters,
        weight_coverage=table.weight_coverage,
    )
