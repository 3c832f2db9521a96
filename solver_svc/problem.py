"""The bit-allocation problem as frozen value objects, validated on construction.

A problem is what the ILP of METHODS.md section 4 needs and nothing more: the
searched layers, each with its candidate options and, per option, the
perturbation Omega and the costs; the costs of layers outside the search; ties
(layers that must take the same option key, e.g. a residual branch and its
shortcut) and pins (a layer limited to some keys).

Why validate here, once: every engine downstream works on float arrays and
would turn a NaN into a silently wrong optimum. Omega may be negative
(METHODS.md section 3 keeps the sign of a negative trace); costs may not.

The plain-dict round trip (``to_json``/``from_json``) and ``content_hash`` let
the service store a problem by id in the artifact store so that what-if
queries need not resend the tables.

Size budgets count what the weights store: ``size_bytes`` (the element codes)
plus ``scale_bytes`` (every scale, zero point and tensor scale), and the
average-weight-bits budget likewise, unless ``size_accounting`` is
``"weights_only"`` (HAWQ-V3's convention, which the published sizes follow).
A block format's scales are a twelfth of an MXFP4 model's bytes, so a budget
that left them out would accept files larger than it allows.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bitmesh.costs import SizeAccounting, check_size_accounting
from bitmesh.errors import InvalidArgument

__all__ = [
    "FixedCosts",
    "LayerChoice",
    "OptionCost",
    "Problem",
]

# Size caps are the service's (``solver_svc/limits.py``, settings), checked on
# the request's counts before these objects are built.


def _finite(where: str, name: str, value: float, *, nonnegative: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{where}: {name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidArgument(f"{where}: {name} must be finite, got {value!r}")
    if nonnegative and number < 0:
        raise InvalidArgument(f"{where}: {name} must be >= 0, got {value!r}")
    return number


def _count(where: str, name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{where}: {name} must be an integer >= 0, got {value!r}")


@dataclass(frozen=True)
class OptionCost:
    """One candidate option of one layer and what it costs there.

    ``key`` names the option within its layer (e.g. ``"int4/int8/channel"``);
    ties compare keys, so tied layers must use the same keys. The format
    strings are descriptive only (the solver never parses them).
    ``weight_bits`` is the bits per weight used by the average-weight-bits
    budget (the element bits; the scale share comes from ``scale_bytes``).
    ``scale_bytes`` counts toward the size and average-bits budgets unless the
    problem's ``size_accounting`` is ``"weights_only"``; totals state it apart.
    """

    key: str
    omega: float
    size_bytes: float
    bops: float
    latency_ms: float = 0.0
    weight_bits: float = 0.0
    weight_format: str = ""
    act_format: str = ""
    granularity: str = ""
    scale_bytes: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise InvalidArgument(f"option key must be a non-empty string, got {self.key!r}")
        where = f"option {self.key!r}"
        _finite(where, "omega", self.omega, nonnegative=False)
        for name in ("size_bytes", "bops", "latency_ms", "weight_bits", "scale_bytes"):
            _finite(where, name, getattr(self, name), nonnegative=True)


@dataclass(frozen=True)
class LayerChoice:
    """A searched layer: its name, weight count (for average bits) and options."""

    name: str
    parameters: int
    options: tuple[OptionCost, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidArgument(f"layer name must be a non-empty string, got {self.name!r}")
        _count(f"layer {self.name!r}", "parameters", self.parameters)
        if not isinstance(self.options, tuple):
            object.__setattr__(self, "options", tuple(self.options))
        if not self.options:
            raise InvalidArgument(f"layer {self.name!r} has no options; give it at least one")
        keys = [o.key for o in self.options]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise InvalidArgument(f"layer {self.name!r} repeats option keys {dup}")

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(o.key for o in self.options)


@dataclass(frozen=True)
class FixedCosts:
    """Layers outside the search (HAWQ-V3's first conv and last FC at 8 bits).

    They count toward every total; ``weight_bits`` is the average bits of their
    ``parameters`` weights, for the average-weight-bits budget.
    """

    size_bytes: float = 0.0
    bops: float = 0.0
    latency_ms: float = 0.0
    scale_bytes: float = 0.0
    parameters: int = 0
    weight_bits: float = 0.0

    def __post_init__(self) -> None:
        for name in ("size_bytes", "bops", "latency_ms", "scale_bytes", "weight_bits"):
            _finite("fixed costs", name, getattr(self, name), nonnegative=True)
        _count("fixed costs", "parameters", self.parameters)


@dataclass(frozen=True)
class Problem:
    """Layers with options, fixed costs, ties and pins (see the module doc).

    ``pins`` is a tuple of ``(layer, allowed_keys)`` pairs so the object stays
    hashable; ``ties`` that share a layer are merged into one group.
    ``size_accounting`` says what the size and average-bits budgets count
    (see the module doc).
    """

    layers: tuple[LayerChoice, ...]
    fixed: FixedCosts = field(default_factory=FixedCosts)
    ties: tuple[tuple[str, ...], ...] = ()
    pins: tuple[tuple[str, tuple[str, ...]], ...] = ()
    name: str = ""
    size_accounting: SizeAccounting = "weights_and_scales"

    def __post_init__(self) -> None:
        check_size_accounting(self.size_accounting)
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "ties", tuple(tuple(t) for t in self.ties))
        object.__setattr__(self, "pins", tuple((p[0], tuple(p[1])) for p in self.pins))
        self._validate()

    def _validate(self) -> None:
        if not self.layers:
            raise InvalidArgument("the problem has no layers; give at least one searched layer")
        by_name: dict[str, LayerChoice] = {}
        for layer in self.layers:
            if layer.name in by_name:
                raise InvalidArgument(f"layer name {layer.name!r} appears twice")
            by_name[layer.name] = layer
        for tie in self.ties:
            if len(tie) < 2:
                raise InvalidArgument(f"tie {list(tie)} must name at least two layers")
            for name in tie:
                if name not in by_name:
                    raise InvalidArgument(f"tie {list(tie)} names unknown layer {name!r}")
            first = by_name[tie[0]]
            for name in tie[1:]:
                if set(by_name[name].keys) != set(first.keys):
                    raise InvalidArgument(
                        f"tie {list(tie)}: layers {first.name!r} and {name!r} have different "
                        f"option sets ({sorted(first.keys)} vs {sorted(by_name[name].keys)}); "
                        "tied layers must offer the same option keys"
                    )
        seen_pins: set[str] = set()
        for layer_name, keys in self.pins:
            if layer_name not in by_name:
                raise InvalidArgument(f"pin names unknown layer {layer_name!r}")
            if layer_name in seen_pins:
                raise InvalidArgument(f"layer {layer_name!r} is pinned twice; give one pin")
            seen_pins.add(layer_name)
            if not keys:
                raise InvalidArgument(f"pin of layer {layer_name!r} allows no option")
            unknown = sorted(set(keys) - set(by_name[layer_name].keys))
            if unknown:
                raise InvalidArgument(
                    f"pin of layer {layer_name!r} names unknown option keys {unknown}"
                )

    # -- serialisation -------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A plain dict (JSON types only) that ``from_json`` turns back into an
        equal problem."""
        return {
            "name": self.name,
            "size_accounting": self.size_accounting,
            "layers": [
                {
                    "name": layer.name,
                    "parameters": layer.parameters,
                    "options": [
                        {
                            "key": o.key,
                            "omega": o.omega,
                            "size_bytes": o.size_bytes,
                            "bops": o.bops,
                            "latency_ms": o.latency_ms,
                            "weight_bits": o.weight_bits,
                            "weight_format": o.weight_format,
                            "act_format": o.act_format,
                            "granularity": o.granularity,
                            "scale_bytes": o.scale_bytes,
                        }
                        for o in layer.options
                    ],
                }
                for layer in self.layers
            ],
            "fixed": {
                "size_bytes": self.fixed.size_bytes,
                "bops": self.fixed.bops,
                "latency_ms": self.fixed.latency_ms,
                "scale_bytes": self.fixed.scale_bytes,
                "parameters": self.fixed.parameters,
                "weight_bits": self.fixed.weight_bits,
            },
            "ties": [list(t) for t in self.ties],
            "pins": [{"layer": name, "keys": list(keys)} for name, keys in self.pins],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Problem:
        """Inverse of ``to_json``; malformed input raises InvalidArgument."""
        try:
            layers = tuple(
                LayerChoice(
                    name=layer["name"],
                    parameters=int(layer.get("parameters", 0)),
                    options=tuple(OptionCost(**dict(o)) for o in layer["options"]),
                )
                for layer in data["layers"]
            )
            fixed_data = dict(data.get("fixed", {}))
            if "parameters" in fixed_data:
                fixed_data["parameters"] = int(fixed_data["parameters"])
            fixed = FixedCosts(**fixed_data)
            ties = tuple(tuple(t) for t in data.get("ties", ()))
            pins = tuple((p["layer"], tuple(p["keys"])) for p in data.get("pins", ()))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"malformed problem JSON: {exc!r}") from exc
        return cls(
            layers=layers,
            fixed=fixed,
            ties=ties,
            pins=pins,
            name=data.get("name", ""),
            size_accounting=data.get("size_accounting", "weights_and_scales"),
        )

    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON: equal problems get equal ids."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()

    # -- helpers -------------------------------------------------------------

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def pin_map(self) -> dict[str, tuple[str, ...]]:
        return dict(self.pins)

    @staticmethod
    def pins_from(mapping: Mapping[str, Iterable[str]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Build the ``pins`` field from a ``{layer: keys}`` mapping."""
        return tuple((name, tuple(keys)) for name, keys in mapping.items())
