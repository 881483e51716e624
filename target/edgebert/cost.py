"""Analytical cycles and energy of the EdgeBERT accelerator, per operation, block and sentence.

The chip's work is a list of operations (what the partitioned regions run). Each is costed in
the Timeloop/Accelergy manner: cycles from a loop nest over 16x16 tiles, energy as action counts
times per-action energies from the configuration, split by component (MAC array, special units)
and by memory level (SRAM buffers, ReRAM eNVM, DRAM).

What is modelled, and how:
- Dense layers (matmul + bias [+ GELU]): weights are stored in bitmask form (the AdaptivFloat-8
  codes of the nonzero weights and a 1-bit mask of all of them: `weight_bytes`), in the weight SRAM
  when the memory map put their block there (sentence.memory_map), else in DRAM. They are streamed
  from there in chunks of whole 16-column tiles that fit one bank of the double-buffered input
  buffer (and half the mask buffer) once expanded. The DMA of chunk i+1 overlaps the compute of
  chunk i; a chunk waits for its bank to be freed. A processing unit does one 16x16 tile times a 16-vector per
  cycle; `processing_units` PUs split the column tiles. Zero weights are clock-gated as in the
  reference PU: they cost no MAC energy but still take their cycle (no cycles are skipped).
- Activation x activation matmuls (attention): operands already in SRAM, dense.
- Special units (softmax with span multiply, LayerNorm, residual add, entropy): `vector_size`
  elements per cycle per pass over the data.
- Embedding lookup: the pruned AdaptivFloat rows (nonzeros + mask) read from ReRAM eNVM or DRAM.
- Activations: `config.activation_bytes` per value in every SRAM read, write and spill (2: 16-bit
  fixed point; fewer with RDA storage of the buffers, rda/activations.py).
Energies in the configuration hold at the nominal voltage; `scale_energy` applies V^2 for DVFS.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Iterable, Sequence

from .config import AcceleratorConfig, DvfsPoint

MASK_BITS = 1  # per weight
WEIGHT_BYTES = 1  # AdaptivFloat-8


@dataclasses.dataclass(frozen=True)
class Dense:
    rows: int
    inner: int
    cols: int
    nonzero: int  # nonzero weights of the inner x cols matrix
    gelu: bool = False


@dataclasses.dataclass(frozen=True)
class ActMatmul:
    batch: int
    rows: int
    inner: int
    cols: int


@dataclasses.dataclass(frozen=True)
class Softmax:
    rows: int
    cols: int


@dataclasses.dataclass(frozen=True)
class LayerNorm:
    rows: int
    cols: int


@dataclasses.dataclass(frozen=True)
class Add:
    elements: int


@dataclasses.dataclass(frozen=True)
class Entropy:
    labels: int


@dataclasses.dataclass(frozen=True)
class Embedding:
    tokens: int
    width: int
    density: float  # fraction of nonzero table entries (pruned embeddings)
    store: str = "envm"  # "envm" or "dram"


Op = Dense | ActMatmul | Softmax | LayerNorm | Add | Entropy | Embedding


@dataclasses.dataclass
class Cost:
    """Cycles (total, compute, memory), energy in pJ by component and memory level, MAC counts."""

    cycles: int = 0
    compute_cycles: int = 0
    memory_cycles: int = 0
    energy: Counter = dataclasses.field(default_factory=Counter)
    macs: int = 0  # MAC slots occupied (tiles x 256)
    useful_macs: int = 0  # MACs with a nonzero weight

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.cycles + other.cycles, self.compute_cycles + other.compute_cycles,
                    self.memory_cycles + other.memory_cycles, self.energy + other.energy,
                    self.macs + other.macs, self.useful_macs + other.useful_macs)

    def __mul__(self, times: int) -> "Cost":
        return Cost(self.cycles * times, self.compute_cycles * times, self.memory_cycles * times,
                    Counter({k: v * times for k, v in self.energy.items()}), self.macs * times, self.useful_macs * times)

    @property
    def total_energy(self) -> float:
        return float(sum(self.energy.values()))

    def utilisation(self, config: AcceleratorConfig) -> float:
        """Useful MACs over the MAC array's capacity during these cycles."""
        capacity = self.cycles * config.vector_size**2 * config.processing_units
        return self.useful_macs / capacity if capacity else 0.0

    def to_dict(self, config: AcceleratorConfig) -> dict:
        return {"cycles": self.cycles, "compute_cycles": self.compute_cycles, "memory_cycles": self.memory_cycles,
                "overlap_cycles": self.compute_cycles + self.memory_cycles - self.cycles,
                "energy_pj": dict(sorted(self.energy.items())), "total_energy_pj": self.total_energy,
                "macs": self.macs, "useful_macs": self.useful_macs, "utilisation": self.utilisation(config)}


def pipeline_cycles(loads: Sequence[int], computes: Sequence[int]) -> int:
    """Makespan of load -> compute over chunks with two buffer banks, chunks in non-increasing size.

    A two-stage flow shop: the last compute ends at max over j of (loads up to j) + (computes from j).
    The second bank means a load never waits: chunk i+1's load ends before chunk i's compute does
    whenever compute is the bottleneck, and loads run back to back otherwise.
    """
    best, loaded = 0, 0
    for j in range(len(loads)):
        loaded += loads[j]
        best = max(best, loaded + sum(computes[j:]))
    return best


def weight_bytes(op: Dense) -> float:
    """Stored bytes of a dense layer's weights: one AdaptivFloat-8 code per nonzero, a mask bit per weight."""
    return op.nonzero * WEIGHT_BYTES + op.inner * op.cols * MASK_BITS / 8


def dense_chunks(op: Dense, config: AcceleratorConfig) -> list[int]:
    """Column tiles per weight chunk: whole 16-column tiles that fit one input-buffer bank and half
    of the mask buffer (the mask buffer is double-buffered like the input buffer)."""
    n = config.vector_size
    tiles = math.ceil(op.cols / n)
    tile_bytes = op.inner * n * WEIGHT_BYTES
    mask_bytes = op.inner * n * MASK_BITS / 8
    per_chunk = max(1, min(int(config.input_buffer // tile_bytes), int((config.mask_buffer / 2) // mask_bytes)))
    return [per_chunk] * (tiles // per_chunk) + ([tiles % per_chunk] if tiles % per_chunk else [])


def _dense(op: Dense, config: AcceleratorConfig, weights: str) -> Cost:
    n, pus = config.vector_size, config.processing_units
    k_tiles = math.ceil(op.inner / n)
    chunks = dense_chunks(op, config)
    stored = weight_bytes(op) / (op.inner * op.cols)  # bytes per weight, the mask included
    chunk_bytes = [c * n * op.inner * stored for c in chunks]
    bandwidth, per_byte = ((config.weight_sram_bandwidth, config.weight_sram_read_energy) if weights == "weight_sram"
                           else (config.dram_bandwidth, config.dram_read_energy))
    loads = [math.ceil(b / bandwidth) for b in chunk_bytes]
    computes = [op.rows * math.ceil(c / pus) * k_tiles for c in chunks]
    tile_ops = op.rows * sum(chunks) * k_tiles
    expanded = sum(chunks) * n * op.inner * (WEIGHT_BYTES + MASK_BITS / 8)  # written into the input buffer
    act = config.activation_bytes
    energy = Counter({
        "mac": op.rows * op.nonzero * config.mac_energy,
        "sram": tile_ops * (n * n * (WEIGHT_BYTES + MASK_BITS / 8) + n * act) * config.sram_read_energy
        + (expanded + op.rows * op.cols * act) * config.sram_write_energy,
        weights: sum(chunk_bytes) * per_byte,
    })
    if op.gelu:  # applied as outputs leave the accumulators, overlapped with the next tiles
        energy["gelu"] = op.rows * op.cols * config.gelu_energy
    cost = Cost(pipeline_cycles(loads, computes), sum(computes), sum(loads), energy, tile_ops * n * n,
                op.rows * op.nonzero)
    return cost + _spill(op.rows * (op.inner + op.cols) * act, config)


def _spill(working_set: float, config: AcceleratorConfig) -> Cost:
    """Activations beyond the activation SRAM go to DRAM and back, serially."""
    excess = max(0.0, working_set - config.activation_sram)
    if not excess:
        return Cost()
    cycles = 2 * math.ceil(excess / config.dram_bandwidth)
    return Cost(cycles, 0, cycles, Counter({"dram": 2 * excess * config.dram_read_energy}))


def _act_matmul(op: ActMatmul, config: AcceleratorConfig) -> Cost:
    n, pus = config.vector_size, config.processing_units
    tile_ops = op.batch * op.rows * math.ceil(op.cols / n) * math.ceil(op.inner / n)
    cycles = op.batch * op.rows * math.ceil(math.ceil(op.cols / n) / pus) * math.ceil(op.inner / n)
    macs = op.batch * op.rows * op.inner * op.cols
    energy = Counter({
        "mac": macs * config.mac_energy,
        "sram": tile_ops * (n * n + n) * config.activation_bytes * config.sram_read_energy
        + op.batch * op.rows * op.cols * config.activation_bytes * config.sram_write_energy,
    })
    return Cost(cycles, cycles, 0, energy, tile_ops * n * n, macs)


def _special(elements: int, rows_passes: int, unit: str, per_element: float, config: AcceleratorConfig,
             reads: int = 1) -> Cost:
    """A special unit: `rows_passes` = passes x ceil(row / n) cycles; one write, `reads` reads per element."""
    traffic = elements * config.activation_bytes
    energy = Counter({unit: elements * per_element,
                      "sram": traffic * (reads * config.sram_read_energy + config.sram_write_energy)})
    return Cost(rows_passes, rows_passes, 0, energy)


def op_cost(op: Op, config: AcceleratorConfig, weights: str = "dram") -> Cost:
    """Cycles and energy of one operation at the nominal operating point; a dense layer's weights
    come from `weights`: "dram" or "weight_sram"."""
    n = config.vector_size
    if isinstance(op, Dense):
        return _dense(op, config, weights)
    if isinstance(op, ActMatmul):
        return _act_matmul(op, config)
    if isinstance(op, Softmax):  # max, exp + sum, normalise x span
        return _special(op.rows * op.cols, 3 * op.rows * math.ceil(op.cols / n), "softmax", config.softmax_energy, config)
    if isinstance(op, LayerNorm):  # statistics, then normalise x gamma + beta
        return _special(op.rows * op.cols, 2 * op.rows * math.ceil(op.cols / n), "layernorm",
                        config.layernorm_energy, config)
    if isinstance(op, Add):
        return _special(op.elements, math.ceil(op.elements / n), "add", config.add_energy, config, reads=2)
    if isinstance(op, Entropy):  # exp pass, then log + moment pass
        return _special(op.labels, 2 * math.ceil(op.labels / n), "entropy", config.entropy_energy, config)
    if isinstance(op, Embedding):
        stored = op.tokens * op.width * (op.density * WEIGHT_BYTES + MASK_BITS / 8)
        bandwidth, per_byte = ((config.envm_bandwidth, config.envm_read_energy) if op.store == "envm"
                               else (config.dram_bandwidth, config.dram_read_energy))
        cycles = math.ceil(stored / bandwidth)
        energy = Counter({op.store: stored * per_byte,
                          "sram": op.tokens * op.width * config.activation_bytes * config.sram_write_energy})
        return Cost(cycles, 0, cycles, energy)
    raise TypeError(f"unknown accelerator operation {op!r}")


def total_cost(ops: Iterable[Op], config: AcceleratorConfig) -> Cost:
    """Operations run one after another on the chip."""
    total = Cost()
    for op in ops:
        total = total + op_cost(op, config)
    return total


MEMORY_LEVELS = ("sram", "weight_sram", "envm", "dram")


def scale_energy(cost: Cost, point: DvfsPoint, config: AcceleratorConfig) -> float:
    """Dynamic energy at `point`: C V^2 per action, so the nominal energies times (V / V_nominal)^2."""
    return cost.total_energy * (point.voltage / config.nominal.voltage) ** 2


def seconds(cycles: int, point: DvfsPoint) -> float:
    return cycles / point.frequency
