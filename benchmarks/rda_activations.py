"""RDA on the accelerator's activation buffers: compression, SST-2 dev accuracy and energy per sentence.

Every encoder layer's output (the buffer the next layer reads) is converted to the chip's 16-bit
fixed point (10 fraction bits), stored the RDA way at each threshold (in units of the LSB, 1/1024)
and read back; compression is over all those buffers and all 872 sentences. The measured bytes
per value then go into the accelerator model of the default checkpoint compiled for
`--target edgebert` (the same as `compile --target edgebert --rda-activations T`), so the energy
column is the cost model's SRAM traffic at those bytes, for a full-depth sentence.

    .venv/bin/python benchmarks/rda_activations.py [--thresholds 0 3 15 63 255 511]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from edgebert_tvm import rda
from edgebert_tvm.fileio import write_json_atomic
from edgebert_tvm.compiler import CompileOptions, compile_model
from edgebert_tvm.data import builtin_split, read_tsv, task_for
from edgebert_tvm.models.inference import torch_all_exits
from edgebert_tvm.models.checkpoint import load
from edgebert_tvm.rda.activations import FRACTION_BITS, measure
from edgebert_tvm.target.edgebert.config import load_config
from edgebert_tvm.target.edgebert.sentence import chip_workloads

RESULTS = Path(__file__).parent / "results"
SEQ_LEN = 64


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    points = [r for r in rows if r["threshold"] is not None]
    x = [100 * r["compression_rate"] for r in points]
    left.plot(x, [100 * r["accuracy"] for r in points], "o-")
    left.axhline(100 * rows[0]["accuracy"], color="gray", linestyle="--", label="float32 activations")
    left.set_xlabel("activation compression rate (%)")
    left.set_ylabel("SST-2 dev accuracy (%)")
    left.legend()
    right.plot(x, [r["energy_uj"] for r in points], "o-", label="total")
    right.plot(x, [r["sram_energy_uj"] for r in points], "s-", label="SRAM")
    right.set_xlabel("activation compression rate (%)")
    right.set_ylabel("energy per full-depth sentence (uJ)")
    right.legend()
    for r, xi in zip(points, x):
        left.annotate(f"{r['threshold']:g}", (xi, 100 * r["accuracy"]), fontsize=8)
    fig.suptitle("RDA activation buffers, edgebert-sst2 on the edgebert accelerator model")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0, 3, 15, 63, 255, 511])
    parser.add_argument("--granularity", default=rda.DEFAULT_GRANULARITY)
    args = parser.parse_args()
    granularity = rda.check_granularity(args.granularity)
    task = task_for("sst2")
    examples = read_tsv(builtin_split(task, "dev"), task)
    labels = np.array([e.label for e in examples])
    checkpoint = load("edgebert-sst2")
    model = checkpoint.model.eval()
    tokenizer = checkpoint.tokenizer_dir / "tokenizer.json"
    compiled = compile_model(checkpoint, CompileOptions(target="edgebert", seq_len=SEQ_LEN, lengths=(SEQ_LEN,)))
    workload = chip_workloads(compiled.accelerator, "edgebert-sst2")[SEQ_LEN]
    config = load_config(None)

    def energy(activation_bytes: float) -> tuple[float, float]:
        cost = workload.sentence_cost(workload.num_layers, dataclasses.replace(config, activation_bytes=activation_bytes))
        return cost.total_energy * 1e-6, cost.energy["sram"] * 1e-6

    float_logits = torch_all_exits(model, tokenizer, examples, SEQ_LEN)
    total, sram = energy(config.activation_bytes)
    rows = [{"threshold": None, "accuracy": float((float_logits[:, -1].argmax(-1) == labels).mean()),
             "compression_rate": 0.0, "bytes_per_value": config.activation_bytes, "energy_uj": total,
             "sram_energy_uj": sram, "note": "float32 activations in PyTorch; 16-bit buffers in the energy model"}]
    for threshold in args.thresholds:
        storage, logits = measure(model, tokenizer, examples, SEQ_LEN, threshold, granularity)
        total, sram = energy(storage.bytes_per_value)
        rows.append({**storage.to_dict(), "accuracy": float((logits[:, -1].argmax(-1) == labels).mean()),
                     "energy_uj": total, "sram_energy_uj": sram})
        print(f"threshold {threshold:g} LSB: compression {storage.compression_rate:.2%}, "
              f"accuracy {rows[-1]['accuracy']:.2%}, energy {total:.2f} uJ", flush=True)
    base = rows[0]["energy_uj"]
    print(f"\n{'threshold':>9} {'compression':>11} {'bytes/value':>11} {'accuracy':>9} {'energy uJ':>10} "
          f"{'SRAM uJ':>8} {'energy ratio':>12}")
    for r in rows:
        t = "16-bit" if r["threshold"] is None else f"{r['threshold']:g}"
        print(f"{t:>9} {r['compression_rate']:>11.2%} {r['bytes_per_value']:>11.3f} {r['accuracy']:>9.2%} "
              f"{r['energy_uj']:>10.2f} {r['sram_energy_uj']:>8.2f} {r['energy_uj'] / base:>12.4f}")
    RESULTS.mkdir(exist_ok=True)
    write_json_atomic(RESULTS / "rda_activations.json", {"seq_len": SEQ_LEN, "fraction_bits": FRACTION_BITS,
                                                         "granularity": granularity, "rows": rows})
    plot(rows, RESULTS / "rda_activations.png")
    print(f"wrote {RESULTS / 'rda_activations.json'} and .png")


if __name__ == "__main__":
    main()
