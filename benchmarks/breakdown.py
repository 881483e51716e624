"""Where one call's time goes at a short true length: our kernels against the VM around them, and
ONNX Runtime's nodes, by kind of work.

The default checkpoint at full depth (no exit), batch 1 (`--batch`), a sentence of `--tokens` tokens (SST-2 dev:
25 on average): ours runs the shortest compiled length that holds it (32 for 25), ORT
(dynamic axes) the true length. Ours: the end-to-end median of the entry function, then every kernel
call it makes (captured once with the VM's instrument hook) replayed from Python in the same order on
the same buffers, each call timed; what the replay does not account for is the VM's own work
(dispatch, allocation, shape checks, builtins), less Python's ~1 us a call. ORT:
its profiler's per-node times, against its profiled runs (the profiler slows each node). Both grouped by kind (matmul, attention,
layer norm, ...). The two end-to-end calls are timed interleaved (`harness.time_interleaved`).
Medians, same process, same thread count; prints a table and writes JSON and a plot.

    .venv/bin/python benchmarks/breakdown.py --json benchmarks/results/breakdown.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

sys.path.insert(0, str(Path(__file__).parent))

from harness import (  # noqa: E402
    INPUT_ORDER,
    Deployed,
    Runner,
    machine,
    make_inputs,
    median,
    ort_session,
    set_threads,
    time_interleaved,
    write_report,
)

from edgebert_tvm.compiler import CompileOptions, compile_model  # noqa: E402
from edgebert_tvm.lengths import fit, length_for, suffix  # noqa: E402
from edgebert_tvm.models.checkpoint import load  # noqa: E402

# Kind of work, from a TVM kernel's name or an ORT node's op type (first match wins).
KINDS = [
    ("gather (embeddings)", r"take|gather"),
    ("layer norm", r"layer_?norm|LayerNormalization|SkipLayerNorm"),
    ("attention", r"attention|softmax|Softmax|batch_matmul|matmul\d*_.*(divide|multiply)|transpose.*matmul"),
    ("matmul (+bias, GELU)", r"matmul|dense|gemm|MatMul|Gemm|FusedMatMul|Gelu|BiasGelu"),
    ("elementwise, reshape, other", r".*"),
]


def kind(name: str) -> str:
    return next(label for label, pattern in KINDS if re.search(pattern, name))


def _kernel_calls(vm: relax.VirtualMachine, entry: str, args: list) -> list[tuple[str, tvm_ffi.Function, list]]:
    """(symbol, kernel, arguments) of every kernel call `entry` makes, in order (VM builtins left out)."""
    calls = []

    def instrument(func, symbol, before_run, ret_value, *call_args):
        if before_run and not symbol.startswith("vm.builtin") and isinstance(func, tvm_ffi.Function):
            calls.append((symbol, func, list(call_args)))
        return 0  # VMInstrumentReturnKind.NO_OP

    vm.set_instrument(instrument)
    vm[entry](*args)
    vm.set_instrument(None)
    return calls


def ours(checkpoint, inputs: dict[str, np.ndarray], cap: int, threads: int, repeat: int) -> tuple[dict, Runner]:
    """Our call's kernels against the VM's own work, and the call (for the interleaved timing)."""
    compiled = compile_model(checkpoint, CompileOptions(batch=len(inputs["input_ids"]), seq_len=cap, num_cores=threads))
    length = length_for(inputs["attention_mask"], compiled.options.lengths)
    entry = "main" + suffix(length, cap)
    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    args = [tvm.runtime.tensor(fit(inputs[k], length)) for k in INPUT_ORDER]
    calls = _kernel_calls(vm, entry, args)
    # Rounds alternate the VM's call with a replay of its kernel calls from Python, in order, on the
    # same buffers (the caches see what they see in the model); each replayed call timed alone.
    total, replay, per_call = [], [], [[] for _ in calls]
    for round_index in range(repeat + 5):
        start = time.perf_counter()
        vm[entry](*args)[0].numpy()
        total.append((time.perf_counter() - start) * 1e3)
        begin = time.perf_counter()
        for index, (_, kernel, call_args) in enumerate(calls):
            start = time.perf_counter()
            kernel(*call_args)
            per_call[index].append((time.perf_counter() - start) * 1e3)
        replay.append((time.perf_counter() - begin) * 1e3)
    warm = slice(5, None)
    per_kind: dict[str, float] = defaultdict(float)
    per_kernel: dict[str, list] = {}
    for (symbol, _, _), times in zip(calls, per_call):
        ms = median(times[warm])
        per_kind[kind(symbol)] += ms
        row = per_kernel.setdefault(symbol, [0, 0.0])
        row[0] += 1
        row[1] += ms
    call, kernels = median(total[warm]), median(replay[warm])
    return ({"compiled_length": length, "call_ms": call, "kernel_calls": len(calls), "kernels_ms": kernels,
             "runtime_overhead_ms": call - kernels, "by_kind_ms": dict(per_kind),
             "top_kernels": sorted(([s, n, ms] for s, (n, ms) in per_kernel.items()), key=lambda r: -r[2])[:12]},
            lambda: vm[entry](*args)[0].numpy())


def onnxruntime(deployed, inputs: dict[str, np.ndarray], threads: int, repeat: int) -> dict:
    """ORT's nodes under its profiler, by kind."""
    # The profiler's own cost per node is large at this size: its node times are set against the
    # profiled runs' own time.
    profiled = ort_session(deployed, inputs, threads, profile=True)
    for _ in range(repeat):
        profiled.run(None, inputs)
    events = json.loads(Path(profiled.end_profiling()).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    runs = [e["dur"] / 1e3 for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    per_kind: dict[str, float] = defaultdict(float)
    for event in nodes:
        per_kind[kind(event["args"]["op_name"])] += event["dur"] / 1e3 / len(runs)
    kernels = sum(per_kind.values())
    return {"profiled_run_ms": statistics.mean(runs), "kernel_calls": len(nodes) // len(runs), "kernels_ms": kernels,
            "runtime_overhead_ms": statistics.mean(runs) - kernels, "by_kind_ms": dict(per_kind)}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for label, _ in KINDS] + ["runtime (VM / ORT session)"]
    peers = {"edgebert-tvm": report["edgebert-tvm"], "onnxruntime": report["onnxruntime"]}
    fig, ax = plt.subplots(figsize=(8, 3))
    for row, (peer, result) in enumerate(peers.items()):
        left = 0.0
        for index, label in enumerate(labels):
            width = result["runtime_overhead_ms"] if index == len(KINDS) else result["by_kind_ms"].get(label, 0.0)
            ax.barh(row, width, left=left, color=f"C{index}", label=label if row == 0 else None)
            left += max(width, 0.0)
    ax.set_yticks(range(len(peers)), ["edgebert-tvm", "onnxruntime\n(profiled run)"])
    ax.set_xlabel("ms per call (medians)")
    ax.set_title(f"{report['model']}, {report['tokens']} tokens, full depth, batch {report['batch']}, {report['threads']} threads")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="edgebert-sst2")
    parser.add_argument("--tokens", type=int, default=25)
    parser.add_argument("--batch", type=int, default=1, help="rows, each of --tokens tokens")
    parser.add_argument("--cap", type=int, default=64, help="the compiled --seq-len (the default artifact's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=200, help="replay and profiler rounds")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved end-to-end rounds")
    parser.add_argument("--json", default="benchmarks/results/breakdown.json")
    args = parser.parse_args()
    set_threads(args.threads)
    print(f"machine: {machine(args.threads)}", flush=True)
    checkpoint = load(args.model)
    inputs = make_inputs(args.batch, args.tokens, checkpoint.model.config.vocab_size)
    deployed = Deployed(checkpoint.model).eval()
    us, our_call = ours(checkpoint, inputs, args.cap, args.threads, args.repeat)
    ort = onnxruntime(deployed, inputs, args.threads, args.repeat)
    session = ort_session(deployed, inputs, args.threads)
    end_to_end = {peer: median(t) for peer, t in time_interleaved(
        {"edgebert-tvm": our_call, "onnxruntime": lambda: session.run(None, inputs)[0]}, args.rounds).items()}
    report = {"machine": machine(args.threads), "model": args.model, "batch": args.batch, "tokens": args.tokens,
              "threads": args.threads,
              "end_to_end_ms": end_to_end, "ours_vs_ort": end_to_end["edgebert-tvm"] / end_to_end["onnxruntime"],
              "edgebert-tvm": us, "onnxruntime": ort}
    print(f"{'':28s} {'ours ms':>9s} {'ORT ms':>9s}")
    for label, _ in KINDS:
        print(f"{label:28s} {us['by_kind_ms'].get(label, 0.0):9.3f} {ort['by_kind_ms'].get(label, 0.0):9.3f}")
    print(f"{'runtime (VM / ORT session)':28s} {us['runtime_overhead_ms']:9.3f} {ort['runtime_overhead_ms']:9.3f}")
    print(f"{'sum (ORT: its profiled run)':28s} {us['call_ms']:9.3f} {ort['profiled_run_ms']:9.3f}")
    print(f"ours: kernels replayed {us['kernels_ms']:.3f} ms of {us['call_ms']:.3f}; the VM's own work "
          f"{us['runtime_overhead_ms']:.3f} ms ({us['runtime_overhead_ms'] / us['call_ms']:.0%})")
    print(f"{'end to end (interleaved)':28s} {end_to_end['edgebert-tvm']:9.3f} {end_to_end['onnxruntime']:9.3f}   "
          f"ours/ORT {report['ours_vs_ort']:.2f}x; ours at length {us['compiled_length']}, "
          f"{us['kernel_calls']} kernel calls; ORT {ort['kernel_calls']} nodes")
    print("our heaviest kernels (calls, ms):")
    for symbol, calls, ms in us["top_kernels"]:
        print(f"  {symbol:50s} {calls:3d} {ms:8.3f}")
    write_report(args.json, report)
    plot(report, Path(args.json).with_suffix(".png"))


if __name__ == "__main__":
    main()
