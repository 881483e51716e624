"""One artifact at every length: ALBERT-base and MiniLM-L6 compiled once with --seq-len 128, run at
16, 32, 64 and 128 tokens, against ONNX Runtime (exported with dynamic axes), PyTorch eager and
torch.compile (dynamic=True: one graph for every length), each fed the input at that length.

Batch 1, every peer in this one process with the same thread count, interleaved; prints medians and
ratios to ONNX Runtime per length, and writes JSON.

    .venv/bin/python benchmarks/lengths.py --json benchmarks/results/lengths.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import tvm
from tvm import relax

sys.path.insert(0, str(Path(__file__).parent))

from harness import (  # noqa: E402
    INPUT_ORDER,
    Deployed,
    machine,
    make_inputs,
    median,
    ort_session,
    set_threads,
    time_interleaved,
    torch_runner,
    write_report,
)

from edgebert_tvm.compiler import CompileOptions, compile_model  # noqa: E402
from edgebert_tvm.lengths import suffix  # noqa: E402
from edgebert_tvm.models.checkpoint import load  # noqa: E402

CAP = 128
LENGTHS = (16, 32, 64, 128)
MODELS = ("albert-base", "minilm-l6")


def model_benchmark(name: str, threads: int, rounds: int) -> dict:
    checkpoint = load(name)
    deployed = Deployed(checkpoint.model).eval()
    compiled = compile_model(checkpoint, CompileOptions(seq_len=CAP, num_cores=threads))
    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    vocab = checkpoint.model.config.vocab_size
    session = ort_session(deployed, make_inputs(1, CAP, vocab), threads)  # one session, every length
    compiled_torch = torch.compile(deployed, dynamic=True)  # one graph, every length
    results = {}
    for length in LENGTHS:
        inputs = make_inputs(1, length, vocab, seed=length)
        args = [tvm.runtime.tensor(inputs[k]) for k in INPUT_ORDER]
        entry = vm["main" + suffix(length, CAP)]
        runners = {"edgebert-tvm": lambda entry=entry, args=args: entry(*args)[0].numpy(),
                   "onnxruntime": lambda inputs=inputs: session.run(None, inputs)[0],
                   "pytorch": torch_runner(deployed, inputs),
                   "torch.compile": torch_runner(compiled_torch, inputs)}
        reference = runners["pytorch"]()
        diff = {peer: float(np.abs(run() - reference).max()) for peer, run in runners.items()}
        times = {peer: median(t) for peer, t in time_interleaved(runners, rounds).items()}
        results[length] = {"median_ms": times, "max_abs_diff_vs_pytorch": diff,
                           "ours_vs_ort": times["edgebert-tvm"] / times["onnxruntime"]}
        print(f"{name:12s} {length:4d} tokens: ours {times['edgebert-tvm']:7.2f} ms  ORT {times['onnxruntime']:7.2f} ms"
              f"  PyTorch {times['pytorch']:7.2f} ms  torch.compile {times['torch.compile']:7.2f} ms"
              f"  ours/ORT {results[length]['ours_vs_ort']:.2f}x", flush=True)
    return {"lengths": list(compiled.options.lengths), "compile_seconds": compiled.compile_seconds, "by_length": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", default="benchmarks/results/lengths.json")
    args = parser.parse_args()
    set_threads(args.threads)
    print(f"machine: {machine(args.threads)}", flush=True)
    report = {"machine": machine(args.threads), "threads": args.threads,
              "models": {name: model_benchmark(name, args.threads, args.rounds) for name in MODELS}}
    write_report(args.json, report)


if __name__ == "__main__":
    main()
