"""Latency profiles: where a problem's per-option latency costs come from.

Two kinds, both data rather than code (a new device is a new JSON file under
``solver_svc/profiles/``):

- ``LatencyTable``: latencies measured on a device, per layer and option key
  (as HAWQ-V3's INT4/INT8 tables measured on a T4), loaded from JSON
  (``{"name", "device", "source", "layers": {layer: {key: ms}}}``) or CSV
  (columns ``layer,option,latency_ms``).
- ``RooflineProfile``: a device's peak operations per second for each compute
  format and its memory bandwidth, with the vendor data sheet cited in the
  file. A layer's latency is ``max(ops / peak, bytes / bandwidth)`` with
  ``ops = ops_per_mac * MACs`` and ``bytes`` the weights (plus activations when
  given): a lower bound that ranks formats, not a measurement.

The compute format of a (weight, activation) pair is the narrowest listed
format of the same family (integer when both are integer, else floating point)
at least as wide as the wider of the two; a device without one (FP8 on a T4)
falls back to the narrowest wider floating-point entry it lists.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from bitmesh.errors import InvalidArgument, NotFound, ResourceExhausted
from bitmesh.formats import BLOCK_FORMATS
from solver_svc.problem import LayerChoice, OptionCost, Problem

__all__ = [
    "PROFILE_DIR",
    "LatencyProfile",
    "LatencyTable",
    "ProfileInfo",
    "RooflineProfile",
    "format_bits",
    "list_profiles",
    "load_profile",
    "load_table_csv",
    "with_latency",
]

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
_NATIVE_BITS = {"fp8": 8, "fp16": 16, "bf16": 16, "fp32": 32, "tf32": 32, "fp64": 64}


def format_bits(name: str) -> tuple[str, int]:
    """``("int" | "float", bits)`` of a format name: ``int4``, ``uint8``,
    ``e4m3``, ``fp16``, ``bf16``, ``fp32``... A block-scaled format computes in
    its element format (``mxfp4`` and ``nvfp4`` as ``e2m1``, ``int4_g128`` as
    ``int4``, ``mxint8`` as ``int8``)."""
    text = name.strip().lower()
    if text in BLOCK_FORMATS:
        return format_bits(BLOCK_FORMATS[text].element.name)
    if m := re.fullmatch(r"u?int(\d+)", text):
        return "int", int(m.group(1))
    if m := re.fullmatch(r"(?:fp\d*_?)?e(\d+)m(\d+)(?:fn)?", text):
        return "float", 1 + int(m.group(1)) + int(m.group(2))
    if text in _NATIVE_BITS:
        return "float", _NATIVE_BITS[text]
    raise InvalidArgument(
        f"unknown numeric format {name!r}; use intN/uintN, eXmY, fp16, bf16 or fp32"
    )


@dataclass(frozen=True)
class ProfileInfo:
    name: str
    kind: str  # "roofline" | "table"
    source: str


@dataclass(frozen=True)
class RooflineProfile:
    """A device's peaks (see the module doc)."""

    name: str
    device: str
    source: str
    peak_ops_per_s: Mapping[str, float]
    memory_bandwidth_bytes_per_s: float
    ops_per_mac: float = 2.0

    kind = "roofline"

    def __post_init__(self) -> None:
        if not self.source:
            raise InvalidArgument(f"profile {self.name!r} must cite its source")
        if not self.peak_ops_per_s:
            raise InvalidArgument(f"profile {self.name!r} lists no peak rates")
        for fmt, peak in self.peak_ops_per_s.items():
            format_bits(fmt)
            if not (isinstance(peak, int | float) and math.isfinite(peak) and peak > 0):
                raise InvalidArgument(f"profile {self.name!r}: peak of {fmt} must be > 0")
        bw = self.memory_bandwidth_bytes_per_s
        if not (math.isfinite(bw) and bw > 0):
            raise InvalidArgument(f"profile {self.name!r}: memory bandwidth must be > 0")

    def compute_format(self, weight_format: str, act_format: str) -> str:
        """The listed format a (weight, activation) pair runs in (module doc)."""
        kw, bw = format_bits(weight_format)
        ka, ba = format_bits(act_format)
        family = "int" if kw == ka == "int" else "float"
        width = max(bw, ba)
        listed = [(format_bits(f), f) for f in self.peak_ops_per_s]
        for fam in (family, "float"):
            fits = sorted((bits, f) for (k, bits), f in listed if k == fam and bits >= width)
            if fits:
                return fits[0][1]
        raise InvalidArgument(
            f"profile {self.name!r} has no compute format for {weight_format} x {act_format}"
        )

    def latency_ms(
        self,
        macs: float,
        weight_format: str,
        act_format: str,
        weight_bytes: float,
        act_bytes: float = 0.0,
    ) -> float:
        peak = float(self.peak_ops_per_s[self.compute_format(weight_format, act_format)])
        compute_s = self.ops_per_mac * macs / peak
        memory_s = (weight_bytes + act_bytes) / self.memory_bandwidth_bytes_per_s
        return 1e3 * max(compute_s, memory_s)

    def info(self) -> ProfileInfo:
        return ProfileInfo(self.name, self.kind, self.source)


@dataclass(frozen=True)
class LatencyTable:
    """Measured latencies per ``(layer, option key)`` in milliseconds."""

    name: str
    device: str
    source: str
    table: Mapping[tuple[str, str], float]

    kind = "table"

    def __post_init__(self) -> None:
        for (layer, key), ms in self.table.items():
            if not (isinstance(ms, int | float) and math.isfinite(ms) and ms >= 0):
                raise InvalidArgument(
                    f"latency table {self.name!r}: {layer}/{key} must be a finite number >= 0, "
                    f"got {ms!r}"
                )

    def latency_ms(self, layer: str, key: str) -> float:
        try:
            return float(self.table[layer, key])
        except KeyError:
            raise InvalidArgument(
                f"latency table {self.name!r} has no entry for layer {layer!r} option {key!r}"
            ) from None

    def info(self) -> ProfileInfo:
        return ProfileInfo(self.name, self.kind, self.source)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LatencyTable:
        try:
            table = {
                (str(layer), str(key)): float(ms)
                for layer, options in data["layers"].items()
                for key, ms in options.items()
            }
            return cls(
                name=str(data["name"]),
                device=str(data.get("device", "")),
                source=str(data.get("source", "")),
                table=table,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidArgument(f"malformed latency table: {exc!r}") from exc

    def to_json(self) -> dict[str, Any]:
        layers: dict[str, dict[str, float]] = {}
        for (layer, key), ms in self.table.items():
            layers.setdefault(layer, {})[key] = ms
        return {
            "name": self.name,
            "kind": "table",
            "device": self.device,
            "source": self.source,
            "layers": layers,
        }


LatencyProfile = RooflineProfile | LatencyTable


def load_table_csv(
    path: str | Path, *, name: str = "", device: str = "", source: str = ""
) -> LatencyTable:
    """A measured table from CSV with columns ``layer,option,latency_ms``."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"latency table {str(path)!r} does not exist")
    table: dict[tuple[str, str], float] = {}
    with path.open(newline="", errors="replace") as handle:
        reader = csv.DictReader(handle)
        missing = {"layer", "option", "latency_ms"} - set(reader.fieldnames or ())
        if missing:
            raise InvalidArgument(f"latency CSV {str(path)!r} lacks columns {sorted(missing)}")
        for row in reader:
            try:
                table[row["layer"], row["option"]] = float(row["latency_ms"])
            except (TypeError, ValueError):
                # The cell's text is not echoed: the caller may not own the file.
                raise InvalidArgument(
                    f"latency CSV {str(path)!r}, line {reader.line_num}: latency_ms is not a number"
                ) from None
    return LatencyTable(
        name=name or path.stem, device=device, source=source or str(path), table=table
    )


def _from_data(data: Mapping[str, Any]) -> LatencyProfile:
    kind = data.get("kind")
    if kind == "table":
        return LatencyTable.from_json(data)
    if kind == "roofline":
        try:
            return RooflineProfile(
                name=str(data["name"]),
                device=str(data.get("device", "")),
                source=str(data["source"]),
                peak_ops_per_s={str(k): float(v) for k, v in data["peak_ops_per_s"].items()},
                memory_bandwidth_bytes_per_s=float(data["memory_bandwidth_bytes_per_s"]),
                ops_per_mac=float(data.get("ops_per_mac", 2.0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidArgument(f"malformed roofline profile: {exc!r}") from exc
    raise InvalidArgument(f"profile kind must be 'roofline' or 'table', got {kind!r}")


def load_profile(name_or_path: str | Path, *, max_bytes: int | None = None) -> LatencyProfile:
    """A profile by name (a file in ``PROFILE_DIR``) or by path (JSON or CSV).

    ``max_bytes`` bounds the file a caller names (``BITMESH_SOLVER_MAX_PROFILE_BYTES``
    on the service): the size is checked before a byte is read, and the read
    itself stops one byte past the cap, so a file that grows meanwhile is
    refused too.
    """
    text = str(name_or_path)
    path = Path(text)
    if not path.suffix:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", text):
            raise InvalidArgument(f"profile name {text!r} may use letters, digits, '-', '_', '.'")
        path = PROFILE_DIR / f"{text}.json"
    if not path.is_file():
        known = [p.name for p in list_profiles()]
        raise NotFound(f"latency profile {text!r} not found; known profiles: {known}")
    stat = path.stat()
    if max_bytes is not None:
        _check_profile_size(text, stat.st_size, max_bytes)
    return _parse_profile(str(path.resolve()), stat.st_mtime_ns, stat.st_size, max_bytes)


def _check_profile_size(name: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ResourceExhausted(
            f"latency profile {name!r} has over {max_bytes:,} bytes, the cap "
            "(BITMESH_SOLVER_MAX_PROFILE_BYTES); send a smaller profile or ask the operator "
            "to raise the cap"
        )


@lru_cache(maxsize=64)
def _parse_profile(
    path_text: str, mtime_ns: int, size: int, max_bytes: int | None = None
) -> LatencyProfile:
    """The parsed profile file, remembered by path, mtime and size: listing
    the profiles (a health-style call tools make often) read and parsed every
    file on every call; an edited file is read again (new mtime or size).
    Profiles are frozen, so one object can serve every caller."""
    path = Path(path_text)
    if path.suffix.lower() == ".csv":
        return load_table_csv(path)
    with path.open("rb") as handle:
        raw = handle.read(-1 if max_bytes is None else max_bytes + 1)
    if max_bytes is not None:
        _check_profile_size(path_text, len(raw), max_bytes)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidArgument(f"latency profile {str(path)!r} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"latency profile {str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidArgument(f"latency profile {str(path)!r} must hold a JSON object")
    return _from_data(data)


def list_profiles() -> list[ProfileInfo]:
    """The profiles shipped in ``PROFILE_DIR``, by name."""
    out = []
    for path in sorted(PROFILE_DIR.glob("*.json")):
        out.append(load_profile(path).info())
    return out


def _option_macs(layer: LayerChoice, option: OptionCost) -> float:
    if not (option.weight_format and option.act_format):
        raise InvalidArgument(
            f"layer {layer.name!r} option {option.key!r}: a roofline needs weight_format and "
            "act_format (or pass macs per layer)"
        )
    _, bw = format_bits(option.weight_format)
    _, ba = format_bits(option.act_format)
    return option.bops / (bw * ba)


def with_latency(
    problem: Problem,
    profile: LatencyProfile,
    *,
    macs: Mapping[str, float] | None = None,
    act_elements: Mapping[str, float] | None = None,
) -> Problem:
    """A copy of ``problem`` whose options' ``latency_ms`` come from ``profile``.

    For a roofline, a layer's MACs default to ``bops / (b_w * b_a)`` (the cost
    model's definition of BOPs), its weight bytes are the option's
    ``size_bytes`` plus ``scale_bytes`` (the scales are read too) and
    activation bytes ``act_elements * b_a / 8`` when given.
    """
    layers = []
    for layer in problem.layers:
        options = []
        for option in layer.options:
            if isinstance(profile, LatencyTable):
                ms = profile.latency_ms(layer.name, option.key)
            else:
                layer_macs = (macs or {}).get(layer.name)
                if layer_macs is None:
                    layer_macs = _option_macs(layer, option)
                act_bytes = 0.0
                if act_elements and layer.name in act_elements:
                    act_bytes = act_elements[layer.name] * format_bits(option.act_format)[1] / 8
                ms = profile.latency_ms(
                    layer_macs,
                    option.weight_format,
                    option.act_format,
                    option.size_bytes + option.scale_bytes,
                    act_bytes,
                )
            options.append(replace(option, latency_ms=ms))
        layers.append(replace(layer, options=tuple(options)))
    return replace(problem, layers=tuple(layers))
