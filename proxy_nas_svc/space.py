"""The search space: which training knobs a search varies, and over what.

The knobs are those of HAWQ-V3's training script that LCPAQ searches
(METHODS.md section 7). Each is categorical or a range; a categorical's
choices are strings (as the proto sends them) and are checked against the
knob's type here, at submission, so a trial never fails on a typo.

Knobs that only matter together with another one are "contradictory" alone:
``alpha`` and ``temperature`` need ``distillation`` in the space with ``true``
among its choices, ``range_momentum`` needs an ``ema`` or ``percentile``
estimator, ``range_percentile`` the ``percentile`` one. Searching them alone
would spend trials on a knob that changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bitmesh.errors import InvalidArgument

ParamValue = str | float | int | bool
KnobType = Literal["bool", "float", "int", "choice"]


@dataclass(frozen=True)
class Knob:
    """One searchable training knob: its type and the values it may take."""

    name: str
    type: KnobType
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False  # the low end itself is not allowed
    high_open: bool = False
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.type == "choice":
            return f"one of {', '.join(self.choices)}"
        if self.type == "bool":
            return "true or false"
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        return f"a number in {left}{self.low:g}, {self.high:g}{right}"

    def contains(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below


KNOBS: dict[str, Knob] = {
    k.name: k
    for k in (
        Knob("granularity", "choice", choices=("per_channel", "per_tensor")),
        Knob("fold_bn", "bool"),
        Knob("distillation", "bool"),
        Knob("alpha", "float", 0.0, 1.0),
        Knob("temperature", "float", 0.0, 100.0, low_open=True),
        Knob("activation_range", "choice", choices=("minmax", "ema", "percentile")),
        Knob("range_momentum", "float", 0.0, 1.0, high_open=True),
        Knob("range_percentile", "float", 0.0, 100.0, low_open=True),
        Knob("learning_rate", "float", 0.0, 10.0, low_open=True),
        Knob("weight_decay", "float", 0.0, 1.0, high_open=True),
        Knob("schedule", "choice", choices=("constant", "cosine", "step")),
    )
}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class Categorical:
    choices: tuple[str, ...]


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int


Domain = Categorical | FloatRange | IntRange


@dataclass(frozen=True)
class Hyperparameter:
    name: str
    domain: Domain


def parse_value(knob: Knob, text: str) -> ParamValue:
    """A categorical choice as the knob's type (InvalidArgument if it is not one)."""
    clean = text.strip().lower()
    if knob.type == "bool":
        if clean in _TRUE:
            return True
        if clean in _FALSE:
            return False
    elif knob.type == "choice":
        if clean in knob.choices:
            return clean
    else:
        try:
            number = float(clean)
        except ValueError:
            number = math.nan
        if knob.contains(number):
            return int(number) if knob.type == "int" else number
    raise InvalidArgument(f"{text!r} is not a value of {knob.name}: it takes {knob.describe()}")


def _check_range(knob: Knob, domain: FloatRange | IntRange) -> None:
    name = knob.name
    if knob.type not in ("float", "int"):
        raise InvalidArgument(
            f"{name} takes {knob.describe()}: give it as a categorical, not a range"
        )
    if not (math.isfinite(domain.low) and math.isfinite(domain.high)):
        raise InvalidArgument(f"the range of {name} must have finite ends")
    if domain.low > domain.high:
        raise InvalidArgument(
            f"the range of {name} has low {domain.low:g} > high {domain.high:g}: swap them"
        )
    for end in (domain.low, domain.high):
        if not knob.contains(end):
            raise InvalidArgument(
                f"the range of {name} [{domain.low:g}, {domain.high:g}] leaves its domain: "
                f"{name} takes {knob.describe()}"
            )
    if isinstance(domain, FloatRange) and domain.log and domain.low <= 0:
        raise InvalidArgument(f"a log range of {name} needs low > 0, got {domain.low:g}")


def _choices_of(space: Mapping[str, Hyperparameter], name: str) -> set[ParamValue] | None:
    """The values ``name`` may take in ``space`` (None: not searched)."""
    hp = space.get(name)
    if hp is None:
        return None
    if isinstance(hp.domain, Categorical):
        return {parse_value(KNOBS[name], c) for c in hp.domain.choices}
    return set()  # a numeric range: only used for numeric knobs


def _check_dependencies(space: Mapping[str, Hyperparameter]) -> None:
    distillation = _choices_of(space, "distillation")
    for name in ("alpha", "temperature"):
        if name in space and not (distillation and True in distillation):
            raise InvalidArgument(
                f"{name} only matters with distillation on: add distillation to the space "
                "with true among its choices, or drop it"
            )
    estimators = _choices_of(space, "activation_range")
    if "range_momentum" in space and not (estimators and estimators & {"ema", "percentile"}):
        raise InvalidArgument(
            "range_momentum only matters for the ema or percentile estimator: add "
            "activation_range with one of them, or drop it"
        )
    if "range_percentile" in space and not (estimators and "percentile" in estimators):
        raise InvalidArgument(
            "range_percentile only matters for the percentile estimator: add "
            "activation_range with percentile among its choices, or drop it"
        )


def validate_space(space: Sequence[Hyperparameter]) -> dict[str, Hyperparameter]:
    """The space by knob name, or InvalidArgument saying what to fix."""
    if not space:
        raise InvalidArgument(
            f"the search space is empty: give at least one knob of {', '.join(KNOBS)}"
        )
    by_name: dict[str, Hyperparameter] = {}
    for hp in space:
        knob = KNOBS.get(hp.name)
        if knob is None:
            raise InvalidArgument(
                f"unknown knob {hp.name!r} in the search space; use {', '.join(KNOBS)}"
            )
        if hp.name in by_name:
            raise InvalidArgument(f"knob {hp.name} appears twice in the search space")
        if isinstance(hp.domain, Categorical):
            if not hp.domain.choices:
                raise InvalidArgument(f"the categorical {hp.name} has no choices")
            values = [parse_value(knob, c) for c in hp.domain.choices]
            if len(set(values)) != len(values):
                raise InvalidArgument(f"the categorical {hp.name} repeats a choice")
        else:
            _check_range(knob, hp.domain)
        by_name[hp.name] = hp
    _check_dependencies(by_name)
    return by_name


def space_size(space: Mapping[str, Hyperparameter]) -> int | None:
    """How many distinct configurations the space holds (None: a float range)."""
    size = 1
    for hp in space.values():
        domain = hp.domain
        if isinstance(domain, Categorical):
            size *= len(domain.choices)
        elif isinstance(domain, IntRange):
            size *= domain.high - domain.low + 1
        elif domain.low == domain.high:
            continue
        else:
            return None
    return size


def space_to_dict(space: Mapping[str, Hyperparameter]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for hp in space.values():
        d = hp.domain
        if isinstance(d, Categorical):
            out.append({"name": hp.name, "categorical": list(d.choices)})
        elif isinstance(d, FloatRange):
            out.append({"name": hp.name, "float": [d.low, d.high, d.log]})
        else:
            out.append({"name": hp.name, "int": [d.low, d.high]})
    return out


def space_from_dict(data: Sequence[Mapping[str, Any]]) -> dict[str, Hyperparameter]:
    items: list[Hyperparameter] = []
    for entry in data:
        name = str(entry["name"])
        domain: Domain
        if "categorical" in entry:
            domain = Categorical(tuple(str(c) for c in entry["categorical"]))
        elif "float" in entry:
            low, high, log = entry["float"]
            domain = FloatRange(float(low), float(high), bool(log))
        else:
            low, high = entry["int"]
            domain = IntRange(int(low), int(high))
        items.append(Hyperparameter(name, domain))
    return validate_space(items)
