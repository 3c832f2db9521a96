"""What a request asks for: budgets, the objective and the cost axes.

Axis names are the field names of the totals, so a budget, an objective and a
frontier axis all speak the same words. ``omega`` as a budget bounds the total
perturbation (for the reverse objectives: minimise a cost under an Omega
bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Literal

from bitmesh.errors import InvalidArgument

__all__ = ["AXES", "OBJECTIVES", "Axis", "Budgets", "Objective"]

Axis = Literal["size_bytes", "bops", "latency_ms", "avg_weight_bits", "omega"]
Objective = Literal["omega", "size_bytes", "bops", "latency_ms", "avg_weight_bits"]

#: Every axis a budget can bound, in the order budgets are reported.
AXES: tuple[str, ...] = ("size_bytes", "bops", "latency_ms", "avg_weight_bits", "omega")
OBJECTIVES: tuple[str, ...] = ("omega", "size_bytes", "bops", "latency_ms", "avg_weight_bits")


@dataclass(frozen=True)
class Budgets:
    """Upper limits; ``None`` leaves an axis free. Totals include fixed costs."""

    size_bytes: float | None = None
    bops: float | None = None
    latency_ms: float | None = None
    avg_weight_bits: float | None = None
    omega: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidArgument(f"budget {f.name} must be a number, got {value!r}")
            if math.isnan(value) or math.isinf(value):
                raise InvalidArgument(f"budget {f.name} must be finite, got {value!r}")
            if f.name != "omega" and value < 0:
                raise InvalidArgument(f"budget {f.name} must be >= 0, got {value!r}")
            object.__setattr__(self, f.name, float(value))

    def items(self) -> tuple[tuple[str, float], ...]:
        """The set budgets as ``(axis, limit)`` pairs in ``AXES`` order."""
        out = []
        for axis in AXES:
            value = getattr(self, axis)
            if value is not None:
                out.append((axis, float(value)))
        return tuple(out)

    def get(self, axis: str) -> float | None:
        check_axis(axis)
        value: float | None = getattr(self, axis)
        return value

    def with_limit(self, axis: str, limit: float | None) -> Budgets:
        check_axis(axis)
        return replace(self, **{axis: limit})

    def to_json(self) -> dict[str, float]:
        return dict(self.items())

    @classmethod
    def from_json(cls, data: dict[str, float]) -> Budgets:
        unknown = sorted(set(data) - set(AXES))
        if unknown:
            raise InvalidArgument(f"unknown budget axes {unknown}; known: {list(AXES)}")
        return cls(**data)


def check_axis(axis: str) -> None:
    if axis not in AXES:
        raise InvalidArgument(f"unknown cost axis {axis!r}; known: {list(AXES)}")


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise InvalidArgument(f"unknown objective {objective!r}; known: {list(OBJECTIVES)}")
