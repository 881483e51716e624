"""Per-sentence cycles and energy on the accelerator, following each sentence's exit layer, the
memory map of its weights, and DVFS.

The compiled artifact records, per block function, the regions the chip runs (`workload`), at each
compiled length (a sentence is costed at the length it ran at, as the host runs it): a sentence that exits after layer L costs the embeddings, layers 1..L and exits 1..L, plus one
entropy evaluation per exit taken when early exit is compiled in. DVFS (EdgeBERT MICRO'21): the
entropy predictor turns layer 1's exit entropy into a predicted exit layer before the rest runs;
the policy picks the lowest-voltage operating point whose frequency still finishes the predicted
layers within the latency target. The sentence then really runs to its actual exit layer at that
point, so a misprediction can miss the target (counted).

Memory map (EdgeBERT MICRO'21: embeddings in ReRAM eNVM, the task's parameters on chip): the
weight SRAM is loaded with a task's weights once, when the chip switches to that task, and holds
whole blocks in the order a sentence first runs them (the embeddings' projection if any, layer 1,
exit 1, layer 2, ...) while they fit; a block that does not fit spills: its weights stream from
DRAM at every use.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Any

from ...errors import EdgeBertError
from .config import AcceleratorConfig, DvfsPoint
from .cost import (ActMatmul, Add, Cost, Dense, Embedding, Entropy, LayerNorm, Op, Softmax, op_cost, scale_energy,
                   seconds, weight_bytes)

OP_TYPES = {cls.__name__: cls for cls in (Dense, ActMatmul, Softmax, LayerNorm, Add, Entropy, Embedding)}


def op_to_dict(op: Op) -> dict[str, Any]:
    return {"type": type(op).__name__, **dataclasses.asdict(op)}


def op_from_dict(data: dict[str, Any]) -> Op:
    fields = dict(data)
    return OP_TYPES[fields.pop("type")](**fields)


@dataclasses.dataclass(frozen=True)
class MemoryMap:
    """The blocks whose weights the weight SRAM holds (`resident`) and those streamed from DRAM."""

    capacity: float  # bytes of weight SRAM
    block_bytes: dict[str, float]  # stored weight bytes per block, in first-use order
    resident: tuple[str, ...]

    @property
    def spilled(self) -> tuple[str, ...]:
        return tuple(name for name, size in self.block_bytes.items() if size and name not in self.resident)

    @property
    def resident_bytes(self) -> float:
        return sum(self.block_bytes[name] for name in self.resident)

    def weights_of(self, block: str) -> str:
        return "weight_sram" if block in self.resident else "dram"

    def load_cost(self, config: AcceleratorConfig) -> Cost:
        """Switching to this task: its resident weights read from DRAM and written into the weight SRAM."""
        cycles = math.ceil(self.resident_bytes / config.dram_bandwidth)
        return Cost(cycles, 0, cycles, Counter({"dram": self.resident_bytes * config.dram_read_energy,
                                                "weight_sram": self.resident_bytes * config.weight_sram_read_energy}))


@dataclasses.dataclass
class ChipWorkload:
    """What the artifact runs on the chip: regions per block, and the block of each layer and exit."""

    blocks: dict[str, list[dict[str, Any]]]  # block -> [{"region", "pattern", "op": Op}]
    layer_blocks: list[str]  # layer i (0-based) -> its block function (ALBERT: all "layer_0")
    exit_blocks: list[str]
    num_labels: int
    early_exit: bool
    embedding_block: str = "embeddings"

    def to_dict(self) -> dict[str, Any]:
        blocks = {name: [{**r, "op": op_to_dict(r["op"])} for r in regions] for name, regions in self.blocks.items()}
        return {"blocks": blocks, "layer_blocks": self.layer_blocks, "exit_blocks": self.exit_blocks,
                "num_labels": self.num_labels, "early_exit": self.early_exit, "embedding_block": self.embedding_block}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ChipWorkload":
        blocks = {name: [{**r, "op": op_from_dict(r["op"])} for r in regions] for name, regions in data["blocks"].items()}
        return cls(blocks, list(data["layer_blocks"]), list(data["exit_blocks"]), int(data["num_labels"]),
                   bool(data["early_exit"]), str(data["embedding_block"]))

    @property
    def num_layers(self) -> int:
        return len(self.layer_blocks)

    def block_ops(self, name: str, embedding_store: str = "envm") -> list[Op]:
        ops = [r["op"] for r in self.blocks.get(name, [])]
        return [dataclasses.replace(op, store=embedding_store) if isinstance(op, Embedding) else op for op in ops]

    def memory_map(self, config: AcceleratorConfig, capacity: float | None = None) -> MemoryMap:
        """Whole blocks into the weight SRAM (`capacity`, default the configuration's) in first-use order."""
        capacity = config.weight_sram if capacity is None else capacity
        order = [self.embedding_block, *(name for pair in zip(self.layer_blocks, self.exit_blocks) for name in pair)]
        block_bytes = {name: sum(weight_bytes(op) for op in self.block_ops(name) if isinstance(op, Dense))
                       for name in dict.fromkeys(order)}
        resident, used = [], 0.0
        for name, size in block_bytes.items():
            if size and used + size <= capacity:
                resident.append(name)
                used += size
        return MemoryMap(capacity, block_bytes, tuple(resident))

    def block_cost(self, name: str, config: AcceleratorConfig, embedding_store: str = "envm",
                   memory: MemoryMap | None = None) -> Cost:
        """One call of block `name`; its dense weights from where `memory` (default: the configuration's) puts them."""
        weights = (memory or self.memory_map(config)).weights_of(name)
        total = Cost()
        for op in self.block_ops(name, embedding_store):
            total = total + op_cost(op, config, weights)
        return total

    def sentence_cost(self, exit_layer: int, config: AcceleratorConfig, embedding_store: str = "envm",
                      early_exit: bool | None = None, memory: MemoryMap | None = None) -> Cost:
        """Embeddings + layers 1..exit_layer + their exits (+ the entropy unit at each exit checked)."""
        early_exit = self.early_exit if early_exit is None else early_exit
        memory = memory or self.memory_map(config)
        total = self.block_cost(self.embedding_block, config, embedding_store, memory)
        for index in range(exit_layer):
            total = total + self.block_cost(self.layer_blocks[index], config, memory=memory)
            total = total + self.block_cost(self.exit_blocks[index], config, memory=memory)
            if early_exit and index < self.num_layers - 1:
                total = total + op_cost(Entropy(self.num_labels), config)
        return total


def chip_workloads(accelerator: dict[str, Any], where: str) -> dict[int, ChipWorkload]:
    """The workload at each compiled length from an artifact's `accelerator` metadata."""
    if "workloads" not in accelerator:
        raise EdgeBertError(f"{where}: the accelerator workload is from an older edgebert-tvm; compile the model again")
    return {int(length): ChipWorkload.from_dict(data) for length, data in accelerator["workloads"].items()}


def dvfs_point(predicted_cycles: int, latency_target: float, config: AcceleratorConfig) -> DvfsPoint:
    """Lowest-energy point (lowest voltage) that runs `predicted_cycles` within the target; else nominal."""
    feasible = [p for p in config.dvfs_points if seconds(predicted_cycles, p) <= latency_target]
    return min(feasible, key=lambda p: p.voltage) if feasible else config.nominal


@dataclasses.dataclass
class SentenceResult:
    exit_layer: int
    cycles: int
    energy_pj: float  # at the operating point used
    latency_s: float
    point: DvfsPoint
    met_target: bool | None


def run_sentence(workload: ChipWorkload, config: AcceleratorConfig, exit_layer: int, predicted_layer: int | None = None,
                 latency_target: float | None = None, embedding_store: str = "envm",
                 memory: MemoryMap | None = None) -> SentenceResult:
    """One sentence: at nominal, or with DVFS chosen from the predicted exit layer."""
    memory = memory or workload.memory_map(config)
    cost = workload.sentence_cost(exit_layer, config, embedding_store, memory=memory)
    point = config.nominal
    if predicted_layer is not None and latency_target is not None:
        predicted = workload.sentence_cost(predicted_layer, config, embedding_store, memory=memory)
        point = dvfs_point(predicted.cycles, latency_target, config)
    latency = seconds(cost.cycles, point)
    met = None if latency_target is None else latency <= latency_target * (1 + 1e-12)
    return SentenceResult(exit_layer, cost.cycles, scale_energy(cost, point, config), latency, point, met)
