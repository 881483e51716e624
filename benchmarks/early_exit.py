"""Early exit really skips work: latency per exit layer, and mean latency over SST-2 dev at each
sentence's true length.

The default EdgeBERT checkpoint compiled with entropy early exit (at its calibrated threshold, or
--threshold) against the same checkpoint compiled without exits, ONNX Runtime (exported with dynamic
axes), PyTorch eager and torch.compile (dynamic=True: one graph for every length) running the full
model, and PyTorch's layer-by-layer early exit (the EdgeBERT reference behaviour); all in one process, batch 1, every dev sentence at its own length (ours at the
shortest compiled length that holds it), interleaved in blocks of sentences. Prints a table per exit
layer and the medians and means with ratios to ONNX Runtime; writes JSON.

    .venv/bin/python benchmarks/early_exit.py --json benchmarks/results/early_exit.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import tvm
from tqdm import tqdm
from tvm import relax

sys.path.insert(0, str(Path(__file__).parent))

from harness import INPUT_ORDER, SETTLE_S, Deployed, machine, ort_session, set_threads, write_report  # noqa: E402

from edgebert_tvm.compiler import CompileOptions, compile_model  # noqa: E402
from edgebert_tvm.data import builtin_split, read_tsv, task_for  # noqa: E402
from edgebert_tvm.inputs import encode, load_tokenizer, unpadded  # noqa: E402
from edgebert_tvm.lengths import fit, length_for, suffix  # noqa: E402
from edgebert_tvm.models.checkpoint import load  # noqa: E402
from edgebert_tvm.models.modeling import early_exit  # noqa: E402

BLOCK = 50
PEERS = ("edgebert-tvm exit", "edgebert-tvm full", "onnxruntime full", "pytorch full", "torch.compile full",
         "pytorch exit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="edgebert-sst2")
    parser.add_argument("--threshold", type=float, help="default: the checkpoint's calibrated threshold")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, help="only the first N dev sentences")
    parser.add_argument("--lengths", type=int, nargs="+", help="the compiled lengths (default: the compiler's)")
    parser.add_argument("--json", default="benchmarks/results/early_exit.json")
    args = parser.parse_args()
    set_threads(args.threads)
    print(f"machine: {machine(args.threads)}", flush=True)

    checkpoint = load(args.model)
    model, edgebert = checkpoint.model, checkpoint.model.edgebert
    seq_len = edgebert.seq_len or 128
    threshold = args.threshold if args.threshold is not None else edgebert.exit_thresholds[0]
    task = task_for(edgebert.task or "sst2")
    examples = read_tsv(builtin_split(task, "dev"), task, limit=args.limit)
    inputs = encode(load_tokenizer(checkpoint.tokenizer_dir / "tokenizer.json", seq_len), [e.text for e in examples])

    def vm_for(thresholds):
        compiled = compile_model(checkpoint, CompileOptions(seq_len=seq_len, num_cores=args.threads,
                                                            exit_thresholds=thresholds, lengths=args.lengths))
        return relax.VirtualMachine(compiled.executable, tvm.cpu()), compiled.options.lengths

    (exit_vm, lengths), (full_vm, _) = vm_for([threshold]), vm_for(None)
    session = ort_session(Deployed(model).eval(), {k: v[:1] for k, v in inputs.items()}, args.threads)
    sentences = [unpadded({k: v[row:row + 1] for k, v in inputs.items()}) for row in range(len(examples))]
    true_lengths = np.array([one["input_ids"].shape[1] for one in sentences])

    times = {peer: [0.0] * len(examples) for peer in PEERS}
    exit_layer = [0] * len(examples)
    thresholds = [threshold] * (model.num_layers - 1)
    deployed = Deployed(model).eval()
    compiled_torch = torch.compile(deployed, dynamic=True)  # each row's untimed first call compiles what it needs

    def call(peer: str, row: int):
        one = sentences[row]  # at its true length
        if peer.startswith("edgebert-tvm"):
            vm = exit_vm if peer == "edgebert-tvm exit" else full_vm
            length = length_for(one["attention_mask"], lengths)
            args_tvm = [tvm.runtime.tensor(fit(one[k], length)) for k in INPUT_ORDER]
            entry = vm["main" + suffix(length, seq_len)]
            return lambda: entry(*args_tvm)
        if peer == "onnxruntime full":
            return lambda: session.run(None, one)
        tensors = [torch.from_numpy(one[k]) for k in INPUT_ORDER]
        if peer == "pytorch full":
            return lambda: deployed(*tensors)
        if peer == "torch.compile full":
            return lambda: compiled_torch(*tensors)
        return lambda: early_exit(model, *tensors, thresholds)

    # Interleaved in blocks of sentences: each peer runs a block back to back (its threads warm, as
    # in a serving loop), after a pause that lets the previous peer's spinning threads go quiet.
    blocks = range(0, len(examples), BLOCK)
    with torch.no_grad():
        for index, start in enumerate(tqdm(blocks, desc="blocks of sentences", unit="block")):
            for peer in PEERS[index % len(PEERS):] + PEERS[: index % len(PEERS)]:
                time.sleep(SETTLE_S)
                for row in range(start, min(start + BLOCK, len(examples))):
                    run = call(peer, row)
                    run()
                    begin = time.perf_counter()
                    out = run()
                    times[peer][row] = (time.perf_counter() - begin) * 1e3
                    if peer == "edgebert-tvm exit":
                        exit_layer[row] = int(out[1].numpy()[0])
    exit_layer = np.array(exit_layer)
    per_layer = {}
    print(f"\n{args.model}, threshold {threshold:g}, {len(examples)} {task.name} dev sentences, batch 1, true lengths "
          f"(mean {true_lengths.mean():.1f}, max {true_lengths.max()} tokens; ours compiled at {list(lengths)})")
    print(f"{'exit layer':>10s} {'sentences':>10s} {'edgebert-tvm exit (median ms)':>30s}")
    for layer in range(1, model.num_layers + 1):
        chosen = np.array(times["edgebert-tvm exit"])[exit_layer == layer]
        if len(chosen):
            per_layer[layer] = {"sentences": int(len(chosen)), "median_ms": float(np.median(chosen))}
            print(f"{layer:10d} {len(chosen):10d} {np.median(chosen):30.2f}")
    summary = {peer: {"median_ms": float(np.median(t)), "mean_ms": float(np.mean(t))} for peer, t in times.items()}
    base = summary["onnxruntime full"]["mean_ms"]
    print(f"\n{'peer':20s} {'median ms':>10s} {'mean ms':>10s} {'mean / ORT':>11s}")
    for peer in PEERS:
        summary[peer]["mean_vs_ort"] = summary[peer]["mean_ms"] / base
        print(f"{peer:20s} {summary[peer]['median_ms']:10.2f} {summary[peer]['mean_ms']:10.2f} "
              f"{summary[peer]['mean_vs_ort']:10.2f}x")
    write_report(args.json, {"model": args.model, "machine": machine(args.threads), "threshold": threshold,
                             "sentences": len(examples), "mean_true_length": float(true_lengths.mean()),
                             "average_exit_layer": float(exit_layer.mean()), "per_exit_layer": per_layer,
                             "summary": summary})


if __name__ == "__main__":
    main()
