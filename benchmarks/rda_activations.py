"""RDA on activation buffers: compression of the layer outputs against SST-2 dev accuracy.

The EdgeBERT accelerator keeps activations in SRAM as 16-bit fixed point with 10 fraction bits
(DESIGN.md section 4). Here every encoder layer's output (the buffer the next layer reads) is
converted to that format, stored the RDA way at each threshold (in units of the fixed-point LSB,
1/1024), and read back; the compression rate is over all those buffers and all 872 sentences.
Its ratio compressed/original is what scales the activation bytes (SRAM traffic and energy) in
the accelerator model: bytes = `rda.compressed_nbytes(fixed_point_activations, T, G)`.

    .venv/bin/python benchmarks/rda_activations.py [--thresholds 0 3 15 63 255]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from edgebert_tvm import rda
from edgebert_tvm.cli import write_json_atomic
from edgebert_tvm.data import builtin_split, read_tsv, task_for
from edgebert_tvm.evaluate import torch_all_exits
from edgebert_tvm.models.checkpoint import load

RESULTS = Path(__file__).parent / "results"
SEQ_LEN = 64
FRACTION_BITS = 10  # the accelerator's 16-bit activations


def store_layer_outputs(model, threshold: float, granularity: rda.Granularity, totals: dict[str, int]) -> None:
    """Make every layer's output go through a 16-bit fixed-point RDA buffer."""
    original = model.layer
    scale = float(1 << FRACTION_BITS)

    def layer(index: int, hidden: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        out = original(index, hidden, attn_bias)
        fixed = torch.clamp(torch.round(out * scale), -32768, 32767).to(torch.int16).numpy()
        encoded = rda.encode(fixed, threshold, granularity)
        totals["original_bits"] += encoded.original_bits
        totals["compressed_bits"] += encoded.compressed_bits
        return torch.from_numpy(rda.decode(encoded).astype(np.float32) / scale)

    model.layer = layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0, 3, 15, 63, 255])
    parser.add_argument("--granularity", default=rda.DEFAULT_GRANULARITY)
    args = parser.parse_args()
    granularity = rda.check_granularity(args.granularity)
    task = task_for("sst2")
    examples = read_tsv(builtin_split(task, "dev"), task)
    labels = np.array([e.label for e in examples])
    checkpoint = load("edgebert-sst2")
    model = checkpoint.model.eval()
    float_logits = torch_all_exits(model, checkpoint.tokenizer_dir / "tokenizer.json", examples, SEQ_LEN)
    rows = [{"threshold": None, "accuracy": float((float_logits[:, -1].argmax(-1) == labels).mean()),
             "compression_rate": 0.0, "note": "float32 activations"}]
    for threshold in args.thresholds:
        totals = {"original_bits": 0, "compressed_bits": 0}
        model = load("edgebert-sst2").model.eval()
        store_layer_outputs(model, threshold, granularity, totals)
        logits = torch_all_exits(model, checkpoint.tokenizer_dir / "tokenizer.json", examples, SEQ_LEN)
        rows.append({"threshold": threshold, "granularity": granularity,
                     "accuracy": float((logits[:, -1].argmax(-1) == labels).mean()),
                     "compression_rate": 1 - totals["compressed_bits"] / totals["original_bits"],
                     "bytes_per_activation": totals["compressed_bits"] / 8 / (totals["original_bits"] / 16)})
        print(f"threshold {threshold:g} LSB: activation compression {rows[-1]['compression_rate']:.2%}, "
              f"SST-2 dev accuracy {rows[-1]['accuracy']:.2%}", flush=True)
    print(f"\n{'threshold':>9} {'compression':>11} {'bytes/value':>11} {'accuracy':>9}")
    for r in rows:
        t = "float" if r["threshold"] is None else f"{r['threshold']:g}"
        print(f"{t:>9} {r['compression_rate']:>11.2%} {r.get('bytes_per_activation', 4.0):>11.3f} {r['accuracy']:>9.2%}")
    RESULTS.mkdir(exist_ok=True)
    write_json_atomic(RESULTS / "rda_activations.json", {"seq_len": SEQ_LEN, "fraction_bits": FRACTION_BITS, "rows": rows})
    print(f"wrote {RESULTS / 'rda_activations.json'}")


if __name__ == "__main__":
    main()
