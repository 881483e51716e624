"""Folded attention spans: FLOPs per layer and latency per sentence at each folding level.

The checkpoint (default: the built-in EdgeBERT SST-2 model with its learned spans) is compiled with
the run-time span mask (`off`) and with FoldAttentionSpan at each level (`mask`, `heads`, `keys`),
per sequence length; all variants run the same SST-2 dev sentences at batch 1 in one process,
interleaved. Prints matmul FLOPs per layer, the heads and key ranges kept, median latency and
ratios to `off`, and the SST-2 dev accuracy of the folded artifact; writes JSON.

    .venv/bin/python benchmarks/attention_span.py --json benchmarks/results/attention_span.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

sys.path.insert(0, str(Path(__file__).parent))

from flops import matmul_flops
from harness import INPUT_ORDER, machine, median, set_threads, time_interleaved, write_report

from edgebert_tvm.compiler import CompileOptions, compile_model, graph_module
from edgebert_tvm.data import builtin_split, read_tsv, task_for
from edgebert_tvm.contract import BLOCK_ATTR
from edgebert_tvm.inputs import encode, load_tokenizer
from edgebert_tvm.lengths import fit
from edgebert_tvm.models.checkpoint import load

LEVELS = ("off", "mask", "heads", "keys")


def layer_flops(checkpoint, options: CompileOptions) -> float:
    """Mean matmul FLOPs of the encoder layers after the EdgeBERT passes, per sentence."""
    mod, *_ = graph_module(checkpoint, options)
    flops = [matmul_flops(f) for _, f in mod.functions_items()
             if isinstance(f, relax.Function) and f.attrs is not None and f.attrs.get(BLOCK_ATTR) == "layer"]
    return float(np.mean(flops))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="edgebert-sst2")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--sentences", type=int, default=40, help="dev sentences timed per variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="benchmarks/results/attention_span.json")
    args = parser.parse_args()
    set_threads(args.threads)
    print(f"machine: {machine(args.threads)}", flush=True)

    checkpoint = load(args.model)
    task = task_for(checkpoint.model.edgebert.task or "sst2")
    examples = read_tsv(builtin_split(task, "dev"), task)
    labels = np.array([e.label for e in examples])
    results = []
    for seq_len in args.seq_lens:
        encoded = encode(load_tokenizer(checkpoint.tokenizer_dir / "tokenizer.json", seq_len), [e.text for e in examples])
        inputs = {k: fit(v, seq_len) for k, v in encoded.items()}  # `main` runs at the cap: spans at this length
        runners, rows = {}, {}
        for level in LEVELS:
            options = CompileOptions(seq_len=seq_len, num_cores=args.threads,
                                     span_folding=None if level == "off" else level)
            compiled = compile_model(checkpoint, options)
            vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
            rows[level] = {"flops_per_layer": layer_flops(checkpoint, options),
                           "plan": compiled.reports.get("attention_spans", {}).get("layer_groups")}
            runners[level] = _sentence_runner(vm, inputs, args.sentences)
            if level == "keys":
                rows[level]["dev_accuracy"] = _accuracy(vm, inputs, labels)
        times = time_interleaved(runners, rounds=args.sentences)
        base = rows["off"]
        print(f"\n{args.model}, seq {seq_len}, {args.sentences} {task.name} dev sentences, batch 1")
        print(f"{'level':8s} {'GFLOP/layer':>12s} {'ratio':>7s} {'median ms':>10s} {'ratio':>7s}")
        for level in LEVELS:
            row = rows[level]
            row["median_ms"] = median(times[level])
            print(f"{level:8s} {row['flops_per_layer'] / 1e9:12.4f} {row['flops_per_layer'] / base['flops_per_layer']:7.3f} "
                  f"{row['median_ms']:10.2f} {row['median_ms'] / median(times['off']):7.3f}")
        kept = [len(g["heads_kept"]) for g in rows["keys"]["plan"]]
        field = "reach" if checkpoint.model.edgebert.span_form == "distance" else "first_key"
        reads = [sorted({str(r[field]) for r in g["key_ranges"]}) for g in rows["keys"]["plan"]]
        print(f"heads kept per layer {kept}; {field.replace('_', ' ')}s per layer {reads} (reach None: every key)")
        print(f"SST-2 dev accuracy of the folded artifact at seq {seq_len}: {rows['keys']['dev_accuracy']:.2%}")
        results.append({"seq_len": seq_len, "levels": rows})
    write_report(args.json, {"model": args.model, "sentences": args.sentences, "results": results})


def _sentence_runner(vm: relax.VirtualMachine, inputs: dict[str, np.ndarray], count: int):
    """A runner that takes the next of `count` sentences on each call (the same order for every level)."""
    sentences = [[tvm.runtime.tensor(inputs[k][row:row + 1]) for k in INPUT_ORDER] for row in range(count)]
    state = {"calls": 0}

    def run() -> None:
        vm["main"](*sentences[(state["calls"] // 2) % count])  # time_interleaved calls twice: warm, timed
        state["calls"] += 1

    return run


def _accuracy(vm: relax.VirtualMachine, inputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
    predicted = [int(np.argmax(vm["main"](*[tvm.runtime.tensor(inputs[k][row:row + 1]) for k in INPUT_ORDER])[0]
                               .numpy()[0])) for row in range(len(labels))]
    return float(np.mean(np.array(predicted) == labels))


if __name__ == "__main__":
    main()
