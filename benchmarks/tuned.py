"""Tuned against default schedules against ONNX Runtime, interleaved in one process.

For each model, the records of an `edgebert-tvmc tune` run (its trial budget is read from the run's
`tuning_report.json` and reported with the numbers) are applied at compile; the tuned build, the
default build and ONNX Runtime then run the same inputs with the same thread count, checked
against PyTorch, timed in interleaved rounds. Prints medians and ratios; writes JSON.

    edgebert-tvmc tune albert-base --seq-len 128 --num-cores 2 --trials 64 --time-budget 25 -o build/tune-runs/albert-base-s128
    edgebert-tvmc tune edgebert-sst2 --seq-len 64 --num-cores 2 --trials 64 --time-budget 12 -o build/tune-runs/edgebert-sst2-s64
    .venv/bin/python benchmarks/tuned.py --run albert-base:128:build/tune-runs/albert-base-s128 \\
        --run edgebert-sst2:64:build/tune-runs/edgebert-sst2-s64 --json benchmarks/results/tuned.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from harness import Deployed, edgebert_tvm_runner, machine, make_inputs, median, ort_runner, set_threads, time_interleaved, torch_runner, write_report  # noqa: E402

from edgebert_tvm.models.checkpoint import load  # noqa: E402


def tuning_budget(work_dir: Path) -> dict:
    report = json.loads((work_dir / "tuning_report.json").read_text())
    tasks = report["tasks"]
    return {"records": str(work_dir), "trials_per_task_limit": report["trials_per_task"],
            "time_budget_min": report["time_budget_min"], "kernels": len(tasks),
            "trials_measured": sum(t["trials"] for t in tasks),
            "kernels_tuned_faster": sum(1 for t in tasks if t["speedup"] and t["speedup"] > 1.0),
            "kernel_ms_estimate": report["model_kernel_ms"]}


def benchmark(name: str, seq_len: int, work_dir: Path, threads: int, rounds: int) -> dict:
    checkpoint = load(name)
    deployed = Deployed(checkpoint.model).eval()
    inputs = make_inputs(1, seq_len, checkpoint.model.config.vocab_size)
    runners = {
        "onnxruntime": ort_runner(deployed, inputs, threads),
        "default": edgebert_tvm_runner(checkpoint, inputs, threads),
        "tuned": edgebert_tvm_runner(checkpoint, inputs, threads, tuning_records=work_dir.resolve()),
    }
    reference = torch_runner(deployed, inputs)()
    max_diff = {peer: float(np.abs(run() - reference).max()) for peer, run in runners.items()}
    times = time_interleaved(runners, rounds)
    medians = {peer: median(t) for peer, t in times.items()}
    return {
        "model": name, "batch": 1, "seq_len": seq_len, "tuning": tuning_budget(work_dir),
        "median_ms": medians, "samples": {peer: len(t) for peer, t in times.items()},
        "ratio_vs_onnxruntime": {peer: m / medians["onnxruntime"] for peer, m in medians.items()},
        "tuned_over_default": medians["tuned"] / medians["default"],
        "max_abs_diff_vs_pytorch": max_diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="MODEL:SEQ:DIR",
                        help="a model, its sequence length and its tuning work directory")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", default="benchmarks/results/tuned.json")
    args = parser.parse_args()
    set_threads(args.threads)
    print(f"machine: {machine(args.threads)}", flush=True)
    results = []
    for spec in args.run:
        name, seq, directory = spec.split(":", 2)
        start = time.perf_counter()
        results.append(benchmark(name, int(seq), Path(directory), args.threads, args.rounds))
        r = results[-1]
        print(f"{name} b1 s{seq} ({r['tuning']['trials_measured']} trials over {r['tuning']['kernels']} kernels, "
              f"{time.perf_counter() - start:.0f} s): "
              + "  ".join(f"{p} {m:.1f} ms ({r['ratio_vs_onnxruntime'][p]:.2f}x ORT)" for p, m in r["median_ms"].items())
              + f"  tuned/default {r['tuned_over_default']:.3f}", flush=True)
    write_report(args.json, {"machine": machine(args.threads), "threads": args.threads, "rounds": args.rounds,
                             "models": results})


if __name__ == "__main__":
    main()
