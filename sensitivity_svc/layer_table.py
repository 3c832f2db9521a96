"""A model's quantizable layers with their costs per option (ListLayers)."""

from __future__ import annotations

from dataclasses import dataclass

from bitmesh.costs import LayerCosts, option_costs
from bitmesh.formats import QuantOption
from bitmesh.models.layer_cache import layers_of
from bitmesh.models.layers import LayerProfile, weight_coverage, weight_parameters
from bitmesh.models.loading import ModelSpec
from bitmesh.models.model_cache import load_model_for_reading, model_hash_of


@dataclass(frozen=True)
class LayerTable:
    layers: list[LayerProfile]
    costs: dict[str, dict[str, LayerCosts]]  # layer -> option key -> costs
    total_parameters: int
    total_macs: int
    model_hash: str
    weight_parameters: int
    weight_coverage: float


def layer_table(spec: ModelSpec, options: list[QuantOption]) -> LayerTable:
    """Load the model, find its quantizable layers and cost every option."""
    model = load_model_for_reading(spec)
    layers = layers_of(model, spec)
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
        total_parameters=sum(p.numel() for p in model.parameters()),
        total_macs=sum(layer.macs for layer in layers),
        model_hash=model_hash_of(spec, model),
        weight_parameters=weight_parameters(model),
        weight_coverage=weight_coverage(model, layers),
    )
