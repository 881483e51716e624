"""`run --report` for edgebert artifacts: cycles, energy by component and memory level, utilisation.

In the manner of Timeloop/Accelergy's summaries: per block (embeddings, each layer block, an exit),
per pattern over a full-depth sentence, then per-sentence totals that follow each sentence's actual
exit layer at the compiled length it ran at, set beside full depth, DVFS, the embeddings held in DRAM instead of eNVM and the weights
streamed from DRAM instead of held in the weight SRAM; the memory map (what the weight SRAM holds,
what spilled, the cost of loading a task) and a sweep over the weight SRAM's size.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .config import RAW_ACTIVATION_BYTES, AcceleratorConfig
from .cost import MEMORY_LEVELS, Cost, op_cost
from .sentence import ChipWorkload, MemoryMap, run_sentence

UJ = 1e-6  # pJ -> uJ


def _summary(results: Sequence[Any]) -> dict[str, float]:
    return {"energy_uj": float(np.mean([r.energy_pj for r in results]) * UJ),
            "latency_us": float(np.mean([r.latency_s for r in results]) * 1e6),
            "cycles": float(np.mean([r.cycles for r in results]))}


SWEEP_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)  # weight SRAM sizes, as fractions of the task's weight bytes


@dataclasses.dataclass(frozen=True)
class _Sentences:
    """Each sentence costed on the workload of the compiled length it ran at."""

    workloads: Mapping[int, ChipWorkload]
    lengths: Sequence[int]
    exit_layers: Sequence[int]

    def run(self, config: AcceleratorConfig, capacity: float | None = None, layers: Sequence[int] | None = None,
            predicted: Sequence[int] | None = None, target: float | None = None,
            embedding_store: str = "envm") -> list[Any]:
        maps = {n: w.memory_map(config, capacity) for n, w in self.workloads.items()}
        layers = self.exit_layers if layers is None else layers
        predicted = [None] * len(layers) if predicted is None else [int(p) for p in predicted]
        return [run_sentence(self.workloads[n], config, int(layer), p, target, embedding_store, maps[n])
                for layer, n, p in zip(layers, self.lengths, predicted)]


def _by_pattern(workload: ChipWorkload, config: AcceleratorConfig, memory: MemoryMap) -> dict[str, dict[str, Any]]:
    """Cost per pattern over one full-depth sentence."""
    totals: dict[str, Cost] = {}
    names = [workload.embedding_block, *workload.layer_blocks, *workload.exit_blocks]
    for name in names:
        for region in workload.blocks.get(name, []):
            cost = op_cost(region["op"], config, memory.weights_of(name))
            totals[region["pattern"]] = totals.get(region["pattern"], Cost()) + cost
    return {k: v.to_dict(config) for k, v in sorted(totals.items())}


def _memory_map(memory: MemoryMap, config: AcceleratorConfig) -> dict[str, Any]:
    load = memory.load_cost(config)
    return {"weight_sram_bytes": memory.capacity, "task_weight_bytes": sum(memory.block_bytes.values()),
            "resident_bytes": memory.resident_bytes, "resident": list(memory.resident), "spilled": list(memory.spilled),
            "task_switch": {"energy_uj": load.total_energy * UJ,
                            "latency_us": load.cycles / config.nominal.frequency * 1e6}}


def _sweep(sentences: _Sentences, config: AcceleratorConfig, workload: ChipWorkload,
           need: float) -> list[dict[str, Any]]:
    """Energy and latency per sentence (actual exits) with weight SRAMs from none to the task's `need` bytes."""
    return [{"weight_sram_bytes": capacity, "spilled_blocks": len(workload.memory_map(config, capacity).spilled),
             **_summary(sentences.run(config, capacity))}
            for capacity in sorted({need * f for f in SWEEP_FRACTIONS} | {config.weight_sram})]


def accelerator_report(workloads: Mapping[int, ChipWorkload], config: AcceleratorConfig, exit_layers: Sequence[int],
                       lengths: Sequence[int] | None = None, predicted_layers: Sequence[int] | None = None,
                       latency_target_s: float | None = None) -> dict:
    """The whole report as a JSON-ready dict: sentence i ran at compiled length `lengths[i]` (default:
    the longest); the tables per block and pattern are those of the longest length."""
    longest = max(workloads)
    workload = workloads[longest]
    sentences = _Sentences(workloads, [longest] * len(exit_layers) if lengths is None else list(lengths), exit_layers)
    full = workload.num_layers
    memory = workload.memory_map(config)
    full_cost = workload.sentence_cost(full, config, early_exit=False, memory=memory)
    target = latency_target_s if latency_target_s is not None else full_cost.cycles / config.nominal.frequency
    embeddings = workload.embedding_block
    blocks = {name: workload.block_cost(name, config, memory=memory).to_dict(config)
              for name in [embeddings, *dict.fromkeys(workload.layer_blocks), workload.exit_blocks[0]]}
    embedding_store = {store: workload.block_cost(embeddings, config, store, memory) for store in ("envm", "dram")}
    actual = sentences.run(config)
    full_depth = sentences.run(config, layers=[full] * len(exit_layers))
    dram = sentences.run(config, embedding_store="dram")
    weights_dram = sentences.run(config, capacity=0.0)
    report: dict[str, Any] = {
        "config": {"vector_size": config.vector_size, "processing_units": config.processing_units,
                   "nominal_voltage_v": config.nominal.voltage, "nominal_frequency_hz": config.nominal.frequency,
                   "activation_bytes": config.activation_bytes},
        "early_exit_compiled": workload.early_exit,
        "blocks": blocks,
        "patterns_full_depth": _by_pattern(workload, config, memory),
        "memory_map": _memory_map(memory, config),
        "weight_sram_sweep": _sweep(sentences, config, workload, sum(memory.block_bytes.values())),
        "full_depth_sentence": full_cost.to_dict(config),
        "embeddings": {store: {"energy_uj": c.total_energy * UJ, "latency_us": c.cycles / config.nominal.frequency * 1e6,
                               "cycles": c.cycles} for store, c in embedding_store.items()},
        "sentences": len(exit_layers),
        "average_exit_layer": float(np.mean(exit_layers)) if len(exit_layers) else None,
        "per_sentence": {"full_depth": _summary(full_depth), "early_exit": _summary(actual),
                         "early_exit_dram_embeddings": _summary(dram), "early_exit_dram_weights": _summary(weights_dram)},
        "latency_target_us": target * 1e6,
        "rows": [{"exit_layer": r.exit_layer, "length": n, "cycles": r.cycles, "energy_uj": r.energy_pj * UJ,
                  "latency_us": r.latency_s * 1e6} for r, n in zip(actual, sentences.lengths)],
    }
    if config.activation_bytes != RAW_ACTIVATION_BYTES:  # RDA buffers: the same sentences with plain 16-bit ones
        plain = dataclasses.replace(config, activation_bytes=RAW_ACTIVATION_BYTES)
        report["per_sentence"]["early_exit_16bit_activations"] = _summary(sentences.run(plain))
    if predicted_layers is not None:
        dvfs = sentences.run(config, predicted=predicted_layers, target=target)
        report["per_sentence"]["early_exit_dvfs"] = {**_summary(dvfs),
                                                     "met_target": float(np.mean([r.met_target for r in dvfs]))}
        for row, r, p in zip(report["rows"], dvfs, predicted_layers):
            row.update({"predicted_layer": int(p), "dvfs_voltage_v": r.point.voltage,
                        "dvfs_frequency_hz": r.point.frequency, "dvfs_energy_uj": r.energy_pj * UJ,
                        "dvfs_latency_us": r.latency_s * 1e6, "met_target": r.met_target})
    return report


def _component_columns(blocks: dict[str, dict[str, Any]]) -> list[str]:
    seen = Counter()
    for block in blocks.values():
        seen.update(block["energy_pj"].keys())
    compute = sorted(k for k in seen if k not in MEMORY_LEVELS)
    return compute + [k for k in MEMORY_LEVELS if k in seen]


def format_report(report: dict[str, Any]) -> str:
    """Plain-text tables: per block and per pattern, then per sentence."""
    lines = []
    sections = [("block", report["blocks"]), ("pattern (full depth)", report["patterns_full_depth"])]
    for title, rows in sections:
        columns = _component_columns(rows)
        widths = {c: max(12, len(c) + 5) for c in columns}
        header = f"{title:<28}{'cycles':>12}{'compute':>12}{'memory':>12}{'util':>7}" + "".join(
            f"{c + ' nJ':>{widths[c]}}" for c in columns) + f"{'total nJ':>12}"
        lines += [header, "-" * len(header)]
        for name, cost in rows.items():
            lines.append(f"{name:<28}{cost['cycles']:>12,}{cost['compute_cycles']:>12,}{cost['memory_cycles']:>12,}"
                         f"{cost['utilisation']:>7.1%}" + "".join(f"{cost['energy_pj'].get(c, 0) / 1e3:>{widths[c]}.1f}"
                                                                 for c in columns)
                         + f"{cost['total_energy_pj'] / 1e3:>12.1f}")
        lines.append("")
    mmap = report["memory_map"]
    load = mmap["task_switch"]
    lines.append(f"weight SRAM {mmap['weight_sram_bytes'] / 2**20:.2f} MiB holds {mmap['resident_bytes'] / 2**20:.2f} of the "
                 f"task's {mmap['task_weight_bytes'] / 2**20:.2f} MiB; spilled to DRAM: "
                 f"{', '.join(mmap['spilled']) or 'nothing'}; loading the task: {load['energy_uj']:.2f} uJ, "
                 f"{load['latency_us']:.1f} us")
    lines.append("weight SRAM sweep (per sentence, actual exits): " + "; ".join(
        f"{row['weight_sram_bytes'] / 2**20:.2f} MiB {row['energy_uj']:.2f} uJ {row['latency_us']:.1f} us"
        for row in report["weight_sram_sweep"]))
    emb = report["embeddings"]
    lines.append(f"embeddings per sentence: eNVM {emb['envm']['energy_uj']:.3f} uJ, {emb['envm']['latency_us']:.2f} us"
                 f" | DRAM {emb['dram']['energy_uj']:.3f} uJ, {emb['dram']['latency_us']:.2f} us")
    if report["config"]["activation_bytes"] != RAW_ACTIVATION_BYTES:
        lines.append(f"activation buffers in RDA storage: {report['config']['activation_bytes']:.3f} bytes per value "
                     f"(16-bit fixed point: {RAW_ACTIVATION_BYTES:g})")
    lines.append(f"per sentence over {report['sentences']} input(s), average exit layer "
                 f"{report['average_exit_layer']:.2f}; latency target {report['latency_target_us']:.1f} us")
    for name, s in report["per_sentence"].items():
        extra = f"  met target {s['met_target']:.1%}" if "met_target" in s else ""
        lines.append(f"  {name:<28}{s['energy_uj']:>10.2f} uJ{s['latency_us']:>10.1f} us{s['cycles']:>14,.0f} cycles{extra}")
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: Path, title: str) -> None:
    """Energy per sentence by configuration (bars) and energy by component per block (stacked)."""
    import matplotlib  # optional at run time: only a plot needs it, and it costs a second to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, sweep) = plt.subplots(1, 3, figsize=(17, 4.5))
    runs = report["per_sentence"]
    left.bar(list(runs), [s["energy_uj"] for s in runs.values()], color="tab:blue")
    left.set_ylabel("energy per sentence (uJ)")
    left.set_title("per sentence")
    left.tick_params(axis="x", rotation=20)
    blocks = report["blocks"]
    columns = _component_columns(blocks)
    bottom = np.zeros(len(blocks))
    for column in columns:
        values = np.array([b["energy_pj"].get(column, 0.0) / 1e3 for b in blocks.values()])
        right.bar(list(blocks), values, bottom=bottom, label=column)
        bottom += values
    right.set_ylabel("energy per call (nJ)")
    right.tick_params(axis="x", rotation=30)
    right.set_title("by block and component")
    right.legend(fontsize=8)
    rows = report["weight_sram_sweep"]
    sweep.plot([r["weight_sram_bytes"] / 2**20 for r in rows], [r["energy_uj"] for r in rows], "o-")
    sweep.axvline(report["memory_map"]["weight_sram_bytes"] / 2**20, color="gray", linestyle=":", label="configured")
    sweep.set_xlabel("weight SRAM (MiB)")
    sweep.set_ylabel("energy per sentence (uJ)")
    sweep.set_title("weight SRAM size (the rest from DRAM)")
    sweep.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
