"""HAWQ-V3's bit-allocation instances (ResNet18, ResNet50) as ``Problem``s.

Reads ``solver_svc/hawq_v3/<model>.json`` (HAWQ-V3's ILP.ipynb inputs and
its published configurations, MIT-licensed, carried in the package with its
citation; see that folder's README) and builds
HAWQ-V3's formulation exactly:

- two options per searched layer, ``"w4a4"`` and ``"w8a8"``;
- Omega = normalised Hutchinson trace * ||W - Q_b(W)||^2;
- size = parameters * b / 8 and BOPs = MACs * b * b / 1024 in the notebook's
  units (parameters in millions - for ResNet18 divided by 1024^2 - and MACs in
  millions; the notebook's ``bops / 16`` at 8 bits and ``/ 64`` at 4 bits);
  latency from the measured INT4/INT8 tables (T4);
- its ties; the first conv and the last FC stay at 8 bits outside the search.
  The reference gives no costs for them, so ``FixedCosts`` is zero: HAWQ-V3's
  limits are ratios between the all-4 and all-8 totals, which fixed costs
  shift on both sides alike, so the optimum does not depend on them.
- limits ``cost_all4 + r * (cost_all8 - cost_all4)`` (``hawq_limit``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitmesh.errors import InvalidArgument, NotFound
from solver_svc.latency import LatencyTable
from solver_svc.problem import LayerChoice, OptionCost, Problem

__all__ = [
    "AXIS_OF_KIND",
    "HawqReference",
    "default_reference_dir",
    "hawq_limit",
    "load_hawq",
]

#: Published configuration kind -> budget axis it limits.
AXIS_OF_KIND = {"modelsize": "size_bytes", "bops": "bops", "latency": "latency_ms"}
OPTION_OF_BITS = {4: "w4a4", 8: "w8a8"}


def default_reference_dir() -> Path:
    """``solver_svc/hawq_v3``: the package's own copy, so a plain clone or an
    installed wheel needs nothing beside it."""
    return Path(__file__).resolve().parent / "hawq_v3"


@dataclass(frozen=True)
class HawqReference:
    """One model's reference data and the problem built from it."""

    model: str
    problem: Problem
    layer_order: tuple[str, ...]
    published: dict[str, dict[str, str]]  # config name -> layer -> option key
    latency_table: LatencyTable
    raw: dict[str, Any]

    def all_at(self, bits: int) -> dict[str, str]:
        return {name: OPTION_OF_BITS[bits] for name in self.layer_order}


def _values(data: dict[str, Any], name: str) -> list[float]:
    return [float(v) for v in data[name]["values_used_in_ilp"]]


def load_hawq(model: str, root: str | Path | None = None) -> HawqReference:
    """Load ``<root>/<model>.json`` (``root`` defaults to ``default_reference_dir``)."""
    if model not in ("resnet18", "resnet50"):
        raise InvalidArgument(f"HAWQ-V3 reference models are resnet18 and resnet50, not {model!r}")
    path = Path(root or default_reference_dir()) / f"{model}.json"
    if not path.is_file():
        raise NotFound(f"HAWQ-V3 reference {str(path)!r} not found")
    data = json.loads(path.read_text())
    names = [str(n) for n in data["ilp_layer_order"]]
    trace = _values(data, "Hutchinson_trace")
    delta = {
        4: _values(data, "delta_weights_4bit_square"),
        8: _values(data, "delta_weights_8bit_square"),
    }
    params_m = _values(data, "parameters")
    macs_m = _values(data, "bops")
    latency = {4: _values(data, "latency_int4"), 8: _values(data, "latency_int8")}
    raw_params = data["parameters"]["values_as_written"]
    # Weight counts for the average-bits axis: ResNet18 wrote raw counts,
    # ResNet50 millions.
    counts = [round(float(p)) if float(p) >= 1000 else round(float(p) * 1e6) for p in raw_params]
    layers = []
    table: dict[tuple[str, str], float] = {}
    for i, name in enumerate(names):
        options = []
        for bits in (4, 8):
            key = OPTION_OF_BITS[bits]
            table[name, key] = latency[bits][i]
            options.append(
                OptionCost(
                    key=key,
                    omega=trace[i] * delta[bits][i],
                    size_bytes=params_m[i] * bits / 8,
                    bops=macs_m[i] * bits * bits / 1024,
                    latency_ms=latency[bits][i],
                    weight_bits=float(bits),
                    weight_format=f"int{bits}",
                    act_format=f"int{bits}",
                    granularity="per_channel",
                )
            )
        layers.append(LayerChoice(name=name, parameters=counts[i], options=tuple(options)))
    ties = tuple((str(t[2]), str(t[3])) for t in data["tied_variables_equal"])
    problem = Problem(layers=tuple(layers), ties=ties, name=f"hawq-v3-{model}")
    published = {
        config: {
            name: OPTION_OF_BITS[int(b)]
            for name, b in zip(names, entry["weight_bits_ilp_order"], strict=True)
        }
        for config, entry in data["published_bit_configs"].items()
    }
    latency_table = LatencyTable(
        name=f"hawq-v3-{model}-t4",
        device="NVIDIA T4 (measured by HAWQ-V3)",
        source=f"HAWQ-V3 ILP.ipynb latency_int4/latency_int8, {data['provenance']['repository']}",
        table=table,
    )
    return HawqReference(model, problem, tuple(names), published, latency_table, data)


def hawq_limit(ref: HawqReference, axis: str, ratio: float) -> float:
    """HAWQ-V3's limit: ``cost_all4 + ratio * (cost_all8 - cost_all4)`` on ``axis``."""
    if axis not in AXIS_OF_KIND.values():
        raise InvalidArgument(
            f"HAWQ-V3 limits are on {sorted(AXIS_OF_KIND.values())}, not {axis!r}"
        )
    low = sum(getattr(layer.options[0], axis) for layer in ref.problem.layers)
    high = sum(getattr(layer.options[1], axis) for layer in ref.problem.layers)
    return low + ratio * (high - low)
