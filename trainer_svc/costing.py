"""Costs of configurations on one model: totals, search-space bounds, targets.

Every layer counts (METHODS.md section 2): layers a configuration does not
name are FP32 (32-bit weights and activations). The size axis counts the
weights' scales too (block formats' block scales, zero points, tensor
scales) unless the search asks for ``weights_only`` sizes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bitmesh.costs import LayerCosts, SizeAccounting, budgeted_bytes, option_costs, total_costs
from bitmesh.errors import FailedPrecondition
from bitmesh.formats import FORMATS, Granularity, NumericFormat, QuantOption
from bitmesh.models.layers import LayerProfile

FP32_OPTION = QuantOption(weight=FORMATS["fp32"], activation=FORMATS["fp32"])


def config_costs(layers: Sequence[LayerProfile], config: Mapping[str, QuantOption]) -> LayerCosts:
    """Total costs of ``config`` over all of the model's layers."""
    return total_costs(
        option_costs(
            p.parameters,
            p.macs,
            config.get(p.name, FP32_OPTION),
            p.output_channels,
            weight_shape=p.weight_shape,
        )
        for p in layers
    )


def axis_value(
    costs: LayerCosts, axis: str, accounting: SizeAccounting = "weights_and_scales"
) -> float:
    """The number a search optimises: BOPs, or the weights' bytes (with their
    scales unless ``accounting`` is weights-only)."""
    return costs.bops if axis == "bops" else budgeted_bytes(costs, accounting)


def weight_bytes_table(
    layers: Sequence[LayerProfile],
    formats: Sequence[NumericFormat],
    granularity: Granularity = Granularity.PER_CHANNEL,
    accounting: SizeAccounting = "weights_and_scales",
) -> dict[str, list[float]]:
    """Per layer, the bytes its weight takes at each format (``[k]`` for
    ``formats[k]``): what the size axis adds up for a sampled configuration."""
    return {
        p.name: [
            budgeted_bytes(
                option_costs(
                    p.parameters,
                    p.macs,
                    QuantOption(weight=f, activation=f, granularity=granularity),
                    p.output_channels,
                    weight_shape=p.weight_shape,
                ),
                accounting,
            )
            for f in formats
        ]
        for p in layers
    }


def uniform_config(layers: Sequence[LayerProfile], option: QuantOption) -> dict[str, QuantOption]:
    return {p.name: option for p in layers}


def search_bounds(
    layers: Sequence[LayerProfile],
    bits: Sequence[int],
    axis: str,
    weight_bytes: dict[str, list[float]] | None = None,
) -> tuple[float, float]:
    """Smallest and largest cost any configuration of the search space has.

    BOPs grow with the bits, so every layer at the narrowest (widest)
    format gives the bound, whether weights and activations are searched
    together or apart. Sizes come from ``weight_bytes`` (per layer, per
    format, scales included: :func:`weight_bytes_table`) when given, else
    ``P * bits / 8``.
    """
    low, high = min(bits), max(bits)
    if axis == "bops":
        return (
            float(sum(p.macs * low * low for p in layers)),
            float(sum(p.macs * high * high for p in layers)),
        )
    if weight_bytes is not None:
        return (
            float(sum(min(weight_bytes[p.name]) for p in layers)),
            float(sum(max(weight_bytes[p.name]) for p in layers)),
        )
    return (
        float(sum(p.parameters * low / 8 for p in layers)),
        float(sum(p.parameters * high / 8 for p in layers)),
    )


def check_target_reachable(
    target: float, bounds: tuple[float, float], axis: str, one_sided: bool, formats: Sequence[str]
) -> None:
    """FAILED_PRECONDITION when no configuration of the space can meet ``target``."""
    low, high = bounds
    unit = "BOPs" if axis == "bops" else "bytes"
    if target < low:
        raise FailedPrecondition(
            f"cost target {target:.4g} {unit} is below the cheapest configuration of the search "
            f"space ({low:.4g} {unit}, every layer at its narrowest format of "
            f"{', '.join(formats)}): raise the target or add narrower formats"
        )
    if not one_sided and target > high:
        raise FailedPrecondition(
            f"cost target {target:.4g} {unit} is above the most expensive configuration of the "
            f"search space ({high:.4g} {unit}): lower the target, add wider formats, or make "
            "the cost term one-sided (a budget)"
        )
