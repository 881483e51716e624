"""Peer benchmark: edgebert-tvm against PyTorch eager, torch.compile, ONNX Runtime and stock TVM.

ALBERT-base and MiniLM-L6 at batch 1 / sequence 128, batch 1 / sequence 64 and batch 8 /
sequence 128, all peers in this one process, interleaved, on the same inputs and thread count;
then a GEMM micro-benchmark on the encoder shapes. Prints medians and ratios against ONNX Runtime
and writes JSON.

    .venv/bin/python benchmarks/peers.py --json benchmarks/results/peers.json

`--mcpu` compiles ours for another CPU this one can run (e.g. znver3 on an AVX-512 machine: the
AVX2 kernels); cap PyTorch the same way with its variables (harness.TORCH_ISA_VARIABLES), e.g.

    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \
        .venv/bin/python benchmarks/peers.py --mcpu znver3 --no-stock-tvm

ONNX Runtime cannot be capped: it keeps this CPU's widest ISA, so ours/ORT is then a harsh ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from harness import (  # noqa: E402
    Deployed,
    edgebert_tvm_runner,
    machine,
    make_inputs,
    median,
    peer_isas,
    ort_runner,
    set_threads,
    stock_tvm_runner,
    time_interleaved,
    torch_compile_runner,
    torch_runner,
    write_report,
)
from gemm import BLOCK_MS, gemm_benchmark  # noqa: E402

from edgebert_tvm.models.checkpoint import load  # noqa: E402

CONFIGS = [(1, 128), (1, 64), (8, 128)]
MODELS = ["albert-base", "minilm-l6"]
SINGLE_SHOT_MS = 5000.0  # slower peers (stock TVM) are timed once


def model_benchmark(name: str, batch: int, seq_len: int, threads: int, rounds: int, stock: bool,
                    mcpu: str | None = None) -> dict:
    """One model and shape: every peer checked against PyTorch, then timed interleaved."""
    checkpoint = load(name)
    deployed = Deployed(checkpoint.model).eval()
    inputs = make_inputs(batch, seq_len, checkpoint.model.config.vocab_size)
    runners = {
        "pytorch": torch_runner(deployed, inputs),
        "torch.compile": torch_compile_runner(deployed, inputs),
        "onnxruntime": ort_runner(deployed, inputs, threads),
        "edgebert-tvm": edgebert_tvm_runner(checkpoint, inputs, threads, mcpu=mcpu),
    }
    if stock:
        runners["stock-tvm"] = stock_tvm_runner(checkpoint, inputs, threads)
    reference = runners["pytorch"]()
    max_diff, first_ms = {}, {}
    for peer, run in runners.items():
        start = time.perf_counter()
        max_diff[peer] = float(np.abs(run() - reference).max())
        first_ms[peer] = (time.perf_counter() - start) * 1e3
    slow = frozenset(peer for peer, ms in first_ms.items() if ms > SINGLE_SHOT_MS)
    times = time_interleaved(runners, rounds, single_shot=slow, block_ms=BLOCK_MS)
    medians = {peer: median(t) for peer, t in times.items()}
    return {
        "model": name, "batch": batch, "seq_len": seq_len,
        "median_ms": medians,
        "samples": {peer: len(t) for peer, t in times.items()},
        "ratio_vs_onnxruntime": {peer: m / medians["onnxruntime"] for peer, m in medians.items()},
        "max_abs_diff_vs_pytorch": max_diff,
    }


def print_table(results: list[dict]) -> None:
    peers = ["pytorch", "torch.compile", "onnxruntime", "stock-tvm", "edgebert-tvm"]
    print(f"\n{'model':12s} {'b':>2s} {'seq':>4s} " + " ".join(f"{p:>22s}" for p in peers))
    for r in results:
        cells = []
        for p in peers:
            if p in r["median_ms"]:
                cells.append(f"{r['median_ms'][p]:9.1f} ms ({r['ratio_vs_onnxruntime'][p]:5.2f}x)")
            else:
                cells.append(f"{'-':>22s}")
        print(f"{r['model']:12s} {r['batch']:2d} {r['seq_len']:4d} " + " ".join(f"{c:>22s}" for c in cells))
    print("(median per call; in brackets: ratio to ONNX Runtime, lower is faster)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds per configuration")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--no-stock-tvm", action="store_true", help="skip stock TVM (minutes per configuration)")
    parser.add_argument("--skip-gemm", action="store_true")
    parser.add_argument("--mcpu", help="compile ours for this CPU (LLVM's name; default: this one)")
    parser.add_argument("--json", default="benchmarks/results/peers.json")
    args = parser.parse_args()
    set_threads(args.threads)
    print(f"machine: {machine(args.threads)}", flush=True)
    print(f"ISA: {peer_isas(args.mcpu)}", flush=True)

    results = []
    for name in args.models:
        for batch, seq_len in CONFIGS:
            print(f"{name} batch {batch} seq {seq_len} ...", flush=True)
            stock = not args.no_stock_tvm and batch == 1  # untuned TVM takes minutes per batch-8 call
            results.append(model_benchmark(name, batch, seq_len, args.threads, args.rounds, stock, args.mcpu))
            print_table(results[-1:])
    print_table(results)
    gemms = [] if args.skip_gemm else gemm_benchmark(args.threads, args.rounds, args.mcpu)
    write_report(args.json, {"machine": machine(args.threads), "isa": peer_isas(args.mcpu), "threads": args.threads,
                             "models": results, "gemm": gemms})


if __name__ == "__main__":
    main()
