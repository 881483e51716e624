"""The accelerator's configuration: sizes, bandwidths, per-action energies and DVFS points.

A configuration is a JSON file (the default, `edgebert.json` beside this module, cites a source
for every value). Each entry is `{"value": "NUMBER UNIT", "source": "..."}` so that a number never
travels without its unit; values are converted to base units (bytes, bytes per cycle, picojoules,
picojoules per byte, volts, hertz) here, once. Any problem is an `EdgeBertError` with one line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

from ...errors import EdgeBertError

DEFAULT_CONFIG = Path(__file__).with_name("edgebert.json")
RAW_ACTIVATION_BYTES = 2.0  # activations are 16-bit fixed point

UNITS: dict[str, dict[str, float]] = {
    "count": {"": 1.0},
    "bytes": {"B": 1.0, "KiB": 1024.0, "MiB": 1024.0**2},
    "bandwidth": {"B/cycle": 1.0},
    "energy": {"fJ": 1e-3, "pJ": 1.0, "nJ": 1e3},
    "energy_per_byte": {"fJ/B": 1e-3, "pJ/B": 1.0, "nJ/B": 1e3},
    "voltage": {"mV": 1e-3, "V": 1.0},
    "frequency": {"kHz": 1e3, "MHz": 1e6, "GHz": 1e9},
}

FIELDS: dict[str, str] = {
    "vector_size": "count",
    "processing_units": "count",
    "input_buffer": "bytes",
    "mask_buffer": "bytes",
    "aux_buffer": "bytes",
    "activation_sram": "bytes",
    "weight_sram": "bytes",
    "weight_sram_bandwidth": "bandwidth",
    "dram_bandwidth": "bandwidth",
    "envm_bandwidth": "bandwidth",
    "mac_energy": "energy",
    "sram_read_energy": "energy_per_byte",
    "sram_write_energy": "energy_per_byte",
    "weight_sram_read_energy": "energy_per_byte",
    "envm_read_energy": "energy_per_byte",
    "dram_read_energy": "energy_per_byte",
    "softmax_energy": "energy",
    "layernorm_energy": "energy",
    "add_energy": "energy",
    "gelu_energy": "energy",
    "entropy_energy": "energy",
}
DVFS_FIELD = "dvfs_points"
_QUANTITY = re.compile(r"^\s*([-+0-9.eE]+)\s*(\S*)\s*$")


@dataclasses.dataclass(frozen=True)
class DvfsPoint:
    voltage: float  # volts
    frequency: float  # hertz


@dataclasses.dataclass(frozen=True)
class AcceleratorConfig:
    """Base units: bytes, bytes/cycle, pJ, pJ/B. Energies hold at the nominal point, dvfs_points[0]."""

    vector_size: int
    processing_units: int
    input_buffer: float
    mask_buffer: float
    aux_buffer: float
    activation_sram: float
    weight_sram: float  # holds the task's encoder and exit weights (sentence.memory_map); 0: none
    weight_sram_bandwidth: float
    dram_bandwidth: float
    envm_bandwidth: float
    mac_energy: float
    sram_read_energy: float
    sram_write_energy: float
    weight_sram_read_energy: float  # also charged per byte written when a task's weights are loaded
    envm_read_energy: float
    dram_read_energy: float
    softmax_energy: float
    layernorm_energy: float
    add_energy: float
    gelu_energy: float
    entropy_energy: float
    dvfs_points: tuple[DvfsPoint, ...]
    activation_bytes: float = RAW_ACTIVATION_BYTES  # per stored activation; fewer with RDA (rda/activations.py)
    sources: dict[str, str] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def nominal(self) -> DvfsPoint:
        return self.dvfs_points[0]


def parse_quantity(text: Any, kind: str, where: str) -> float:
    """'64 KiB' -> 65536.0 for kind 'bytes'; a finite number >= 0 in one of the kind's units."""
    match = _QUANTITY.match(str(text)) if isinstance(text, (str, int, float)) else None
    if match is None:
        raise EdgeBertError(f"{where}: expected 'NUMBER UNIT', got {text!r}")
    number, unit = match.groups()
    units = UNITS[kind]
    if unit not in units:
        allowed = ", ".join(repr(u) for u in units)
        raise EdgeBertError(f"{where}: unknown unit {unit!r} (expected one of {allowed})")
    try:
        value = float(number)
    except ValueError:
        raise EdgeBertError(f"{where}: {number!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise EdgeBertError(f"{where}: must be a finite number >= 0, got {number}")
    return value * units[unit]


def _entry(raw: dict[str, Any], key: str, path: Path) -> tuple[Any, str]:
    if key not in raw:
        raise EdgeBertError(f"{path}: missing key {key!r}")
    entry = raw[key]
    if not isinstance(entry, dict) or "value" not in entry:
        raise EdgeBertError(f"{path}: {key} must be an object with a 'value' (and a 'source')")
    return entry["value"], str(entry.get("source", ""))


def _dvfs_points(value: Any, path: Path) -> tuple[DvfsPoint, ...]:
    where = f"{path}: {DVFS_FIELD}"
    if not isinstance(value, list) or not value:
        raise EdgeBertError(f"{where}: expected a non-empty list of [voltage, frequency] pairs")
    points = []
    for index, pair in enumerate(value):
        if not isinstance(pair, list) or len(pair) != 2:
            raise EdgeBertError(f"{where}[{index}]: expected [voltage, frequency], got {pair!r}")
        point = DvfsPoint(parse_quantity(pair[0], "voltage", f"{where}[{index}]"),
                          parse_quantity(pair[1], "frequency", f"{where}[{index}]"))
        if point.voltage <= 0 or point.frequency <= 0:
            raise EdgeBertError(f"{where}[{index}]: voltage and frequency must be > 0")
        points.append(point)
    if any(p.frequency > points[0].frequency or p.voltage > points[0].voltage for p in points[1:]):
        raise EdgeBertError(f"{where}: the first point is the nominal one and must have the highest voltage and frequency")
    return tuple(points)


def read_config_file(path: Path | str | None = None) -> dict[str, Any]:
    """The raw JSON object of a configuration file (default: the cited defaults)."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgeBertError(f"{path}: no such accelerator configuration file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise EdgeBertError(f"{path}: cannot read ({err})") from None
    except json.JSONDecodeError as err:
        raise EdgeBertError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise EdgeBertError(f"{path}: expected a JSON object of configuration entries")
    return raw


def parse_config(raw: dict[str, Any], path: Path | str) -> AcceleratorConfig:
    """Check every entry of a configuration object; `path` names it in error messages."""
    path = Path(path)
    unknown = sorted(set(raw) - set(FIELDS) - {DVFS_FIELD} - {k for k in raw if k.startswith("_")})
    if unknown:
        raise EdgeBertError(f"{path}: unknown key {unknown[0]!r}")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, kind in FIELDS.items():
        value, sources[key] = _entry(raw, key, path)
        values[key] = parse_quantity(value, kind, f"{path}: {key}")
    for key in ("vector_size", "processing_units"):
        if values[key] < 1 or values[key] != int(values[key]):
            raise EdgeBertError(f"{path}: {key} must be a positive integer, got {values[key]:g}")
        values[key] = int(values[key])
    for key in ("input_buffer", "mask_buffer", "weight_sram_bandwidth", "dram_bandwidth", "envm_bandwidth"):
        if values[key] <= 0:
            raise EdgeBertError(f"{path}: {key} must be > 0")
    tile = values["vector_size"] ** 2 * 9 / 8  # one weight tile: a code and a mask bit per weight
    if 0 < values["weight_sram"] < tile:
        raise EdgeBertError(f"{path}: weight_sram must be 0 (none) or hold one {values['vector_size']}x"
                            f"{values['vector_size']} weight tile ({tile:g} B), got {values['weight_sram']:g} B")
    value, sources[DVFS_FIELD] = _entry(raw, DVFS_FIELD, path)
    return AcceleratorConfig(**values, dvfs_points=_dvfs_points(value, path), sources=sources)


def load_config(path: Path | str | None = None) -> AcceleratorConfig:
    """Read and check a configuration file (default: the cited defaults shipped with the target)."""
    return parse_config(read_config_file(path), path if path is not None else DEFAULT_CONFIG)
