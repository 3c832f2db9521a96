"""The answer to a solve, a frontier point or a what-if query."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Solution", "Status", "Totals"]

Status = Literal["optimal", "feasible", "infeasible"]


@dataclass(frozen=True)
class Totals:
    """Whole-model totals of a configuration, fixed layers included.

    ``size_bytes`` is the element codes, ``scale_bytes`` every scale, zero
    point and tensor scale; ``size_accounting`` says which of them the size
    budget counted, and :attr:`budgeted_bytes` is that number.
    """

    size_bytes: float
    bops: float
    latency_ms: float
    scale_bytes: float = 0.0
    size_accounting: str = "weights_and_scales"

    @property
    def total_bytes(self) -> float:
        """Codes plus scales: what the weights of a deployed file take."""
        return self.size_bytes + self.scale_bytes

    @property
    def budgeted_bytes(self) -> float:
        """What the size budget compared: all bytes, or the codes only."""
        if self.size_accounting == "weights_only":
            return self.size_bytes
        return self.total_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "size_bytes": self.size_bytes,
            "bops": self.bops,
            "latency_ms": self.latency_ms,
            "scale_bytes": self.scale_bytes,
            "size_accounting": self.size_accounting,
        }


@dataclass(frozen=True)
class Solution:
    """A configuration and what it costs.

    ``avg_weight_bits`` and ``axis_value("size_bytes")`` count the scales
    unless ``totals.size_accounting`` is ``"weights_only"``.

    ``status`` is ``"optimal"`` when proven (within the 1e-9 relative tolerance
    documented in ``solver_svc.tolerance``), ``"feasible"`` when a time limit
    stopped the search (``gap`` is then the relative distance to the best
    bound). ``answered_from`` says whether a stored frontier answered a what-if
    query or a solve did. ``lower_bound`` is the proven bound on the objective.
    """

    status: Status
    gap: float
    assignment: Mapping[str, str]
    total_omega: float
    totals: Totals
    avg_weight_bits: float
    seconds: float
    engine: str
    answered_from: Literal["solve", "frontier"] = "solve"
    objective: str = "omega"
    objective_value: float = 0.0
    lower_bound: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def axis_value(self, axis: str) -> float:
        """The total on one axis (``omega``, ``avg_weight_bits`` or a cost)."""
        if axis == "omega":
            return self.total_omega
        if axis == "avg_weight_bits":
            return self.avg_weight_bits
        if axis == "size_bytes":
            return self.totals.budgeted_bytes
        value: float = getattr(self.totals, axis)
        return value

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "gap": self.gap,
            "assignment": dict(self.assignment),
            "total_omega": self.total_omega,
            "totals": self.totals.to_json(),
            "avg_weight_bits": self.avg_weight_bits,
            "seconds": self.seconds,
            "engine": self.engine,
            "answered_from": self.answered_from,
            "objective": self.objective,
            "objective_value": self.objective_value,
            "lower_bound": self.lower_bound,
        }
