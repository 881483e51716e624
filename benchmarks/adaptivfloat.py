"""AdaptivFloat-8 weights against float32 weights: weight bytes, SST-2 dev accuracy, latency.

The default checkpoint compiled twice at its sequence length (64), once with float32 weights and
once with `--weights adaptivfloat8` (3 exponent bits, the accelerator's format); both artifacts are
written and loaded back, evaluated on all of SST-2 dev (final classifier), and timed in one process,
interleaved, batch 1, on the same real dev sentences. Reports medians and the ratio.

    nice -n 5 .venv/bin/python benchmarks/adaptivfloat.py --json benchmarks/results/adaptivfloat.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import tvm

sys.path.insert(0, str(Path(__file__).parent))

from harness import INPUT_ORDER, machine, median, set_threads, time_interleaved  # noqa: E402

from edgebert_tvm.artifact import Artifact, write_artifact  # noqa: E402
from edgebert_tvm.compiler import CompileOptions, compile_model  # noqa: E402
from edgebert_tvm.data import builtin_split, read_tsv, task_for  # noqa: E402
from edgebert_tvm.evaluate import artifact_all_exits  # noqa: E402
from edgebert_tvm.inputs import encode, load_tokenizer  # noqa: E402
from edgebert_tvm.lengths import fit  # noqa: E402
from edgebert_tvm.models.checkpoint import load  # noqa: E402

VARIANTS = {"fp32": None, "adaptivfloat8": "adaptivfloat8"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="edgebert-sst2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=40, help="interleaved timed calls per variant")
    parser.add_argument("--json", default="benchmarks/results/adaptivfloat.json")
    args = parser.parse_args()
    set_threads(args.threads)
    print(f"machine: {machine(args.threads)}", flush=True)

    checkpoint = load(args.model)
    seq_len = checkpoint.model.edgebert.seq_len or 128
    task = task_for("sst2")
    dev = read_tsv(builtin_split(task, "dev"), task)
    labels = np.array([e.label for e in dev])
    encoded = encode(load_tokenizer(checkpoint.tokenizer_dir / "tokenizer.json", seq_len), [e.text for e in dev])
    sentences = {k: fit(v, seq_len) for k, v in encoded.items()}  # timed through `main`, at the cap

    results, runners = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, weights in VARIANTS.items():
            options = CompileOptions(seq_len=seq_len, num_cores=args.threads, weight_format=weights)
            compiled = compile_model(checkpoint, options)
            write_artifact(checkpoint, compiled, Path(tmp) / name)
            artifact = Artifact.load(Path(tmp) / name)
            logits = artifact_all_exits(artifact, dev)
            results[name] = {"constant_bytes": artifact.metadata["constant_bytes"],
                             "unscheduled_functions": artifact.metadata["unscheduled_functions"],
                             "accuracy": float((logits[:, -1].argmax(-1) == labels).mean() * 100)}
            vm = artifact.vm
            rows = [[tvm.runtime.tensor(sentences[k][i:i + 1]) for k in INPUT_ORDER] for i in range(args.rounds)]
            calls = iter(range(10**9))
            runners[name] = lambda vm=vm, rows=rows, calls=calls: vm["main"](*rows[next(calls) % len(rows)])
        times = time_interleaved(runners, args.rounds)
    for name in VARIANTS:
        results[name]["median_ms"] = median(times[name])
    fp32, af8 = results["fp32"], results["adaptivfloat8"]
    summary = {"model": args.model, "seq_len": seq_len, "threads": args.threads, "rounds": args.rounds,
               "dev_examples": len(dev), "variants": results,
               "weight_bytes_ratio": fp32["constant_bytes"] / af8["constant_bytes"],
               "accuracy_delta_points": af8["accuracy"] - fp32["accuracy"],
               "latency_ratio_af8_over_fp32": af8["median_ms"] / fp32["median_ms"]}
    print(f"{'':14} {'bytes':>12} {'accuracy':>9} {'median ms':>10}")
    for name, r in results.items():
        print(f"{name:14} {r['constant_bytes']:12d} {r['accuracy']:8.2f}% {r['median_ms']:10.2f}")
    print(f"weights {summary['weight_bytes_ratio']:.2f}x smaller, accuracy {summary['accuracy_delta_points']:+.2f} "
          f"points, latency ratio (af8 / fp32) {summary['latency_ratio_af8_over_fp32']:.2f}")
    Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
