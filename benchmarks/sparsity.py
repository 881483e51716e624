"""Sparse kernels against our dense matmul and PyTorch: per encoder shape, sparsity and pattern;
the crossover points; end to end on a pruned checkpoint; and the memory table.

    python benchmarks/sparsity.py --checkpoint runs/ckpt-32x32 [--rounds 5] [--threads 2]

Kernels: for each (M, K, N) of MiniLM-L6's and ALBERT-base's dense layers, a random weight pruned
at 50-95% unstructured (CSR kernel) or in 16x1 / 32x32 blocks (BSR kernel) is timed against our
dense kernel and torch.nn.functional.linear on the same weight, all interleaved in one process
(benchmarks/harness.py). The crossover is the lowest sparsity at which the sparse kernel beats our
dense one, next to the sparsity at which the cost model predicts it would.
End to end: the checkpoint compiled with and without FoldSparsity (same process, interleaved),
their logits compared, and their constant (weight) bytes. Memory: embedding and encoder bytes of
the compiled model against dense fp32 ALBERT-base and MiniLM-L6.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import tvm
from tvm import relax
from transformers import AlbertConfig

sys.path.insert(0, str(Path(__file__).parent))

from harness import INPUT_ORDER, machine, make_inputs, median, set_threads, time_interleaved, torch_runner  # noqa: E402

from edgebert_tvm.fileio import write_json_atomic  # noqa: E402
from edgebert_tvm.compiler import CompileOptions, compile_model, constant_bytes  # noqa: E402
from edgebert_tvm.contract import BLOCK_ATTR  # noqa: E402
from edgebert_tvm.importer import InputSpec, import_model  # noqa: E402
from edgebert_tvm.models.builtins import BUILTIN_SHAPES  # noqa: E402
from edgebert_tvm.models.checkpoint import load  # noqa: E402
from edgebert_tvm.target.cpu.fold_sparsity import FoldSparsity  # noqa: E402
from edgebert_tvm.target.registry import make_target  # noqa: E402
from edgebert_tvm.training.config import parse_block  # noqa: E402
from edgebert_tvm.target.cpu.sparse_cost import (block_pruned, dense_runner, kind_name, load_cost_model,  # noqa: E402
                                                 sparse_runner)

SHAPES = [(128, 384, 384), (128, 384, 1536), (128, 1536, 384), (128, 768, 768), (128, 768, 3072), (128, 3072, 768)]
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
PATTERNS = (None, (16, 1), (32, 32))  # CSR, BSR 16x1, BSR 32x32
RESULTS = Path(__file__).parent / "results"
BLOCK_MS = 20.0  # each kernel's calls back to back for this long per round (harness.time_interleaved)


def predicted_crossover(cost, m: int, k: int, n: int, block: tuple[int, int] | None) -> float | None:
    """Sparsity above which the cost model predicts the kernel beats dense (kept fraction = density)."""
    kind = kind_name(block)
    if kind not in cost.coefficients:  # a pattern the compiler's cost model does not choose between
        return None
    dense = cost.predict("dense", m, k, n, m * n * k)
    fixed = cost.predict(kind, m, k, n, 0)
    per_density = cost.predict(kind, m, k, n, m * n * k) - fixed
    density = (dense - fixed) / per_density
    return None if density <= 0 else max(0.0, 1.0 - density)


def parse_pattern(text: str) -> tuple[int, int] | None:
    """'csr' -> None (unstructured); '16x1' -> (16, 1) blocks of [out, in]."""
    return None if text == "csr" else parse_block(text)


def kernel_sweep(threads: int, rounds: int, shapes: list[tuple[int, int, int]],
                 patterns: tuple[tuple[int, int] | None, ...] = PATTERNS,
                 sparsities: tuple[float, ...] = SPARSITIES) -> list[dict]:
    target = make_target("llvm", threads)
    cost = load_cost_model(target)
    rng = np.random.default_rng(0)
    rows = []
    for m, k, n in shapes:
        x = rng.standard_normal((m, k)).astype("float32")
        weights = {(block, s): block_pruned(rng, (n, k), block or (1, 1), 1.0 - s) for block in patterns for s in sparsities}
        dense_w = weights[(None, sparsities[0])]
        xt, wt = torch.from_numpy(x), torch.from_numpy(dense_w)
        runners = {"ours dense": dense_runner(x, dense_w, target),
                   "torch dense": lambda: torch.nn.functional.linear(xt, wt)}
        for (block, s), w in weights.items():
            run, _ = sparse_runner(x, w, block, target)
            runners[f"{kind_name(block)} {s:.2f}"] = run
        np.testing.assert_allclose(runners["ours dense"](), x @ dense_w.T, rtol=1e-3, atol=1e-3)
        times = time_interleaved(runners, rounds, block_ms=BLOCK_MS)
        dense_ms, torch_ms = median(times["ours dense"]), median(times["torch dense"])
        for block in patterns:
            kind = kind_name(block)
            per_sparsity = {s: median(times[f"{kind} {s:.2f}"]) for s in sparsities}
            wins = [s for s in sparsities if per_sparsity[s] < dense_ms]
            rows.append({
                "shape": [m, k, n], "kernel": kind, "dense_ms": dense_ms, "torch_ms": torch_ms,
                "sparse_ms": {f"{s:.2f}": t for s, t in per_sparsity.items()},
                "speedup_over_our_dense": {f"{s:.2f}": dense_ms / t for s, t in per_sparsity.items()},
                "speedup_over_torch": {f"{s:.2f}": torch_ms / t for s, t in per_sparsity.items()},
                "min_ms": {"dense": min(times["ours dense"]), "torch": min(times["torch dense"]),
                           **{f"{s:.2f}": min(times[f"{kind} {s:.2f}"]) for s in sparsities}},
                "measured_crossover_sparsity": min(wins) if wins else None,
                "predicted_crossover_sparsity": predicted_crossover(cost, m, k, n, block),
            })
        print(f"\n{m} x {k} x {n}: our dense / torch dense = {dense_ms / torch_ms:.2f} (time ratio)")
        print(f"{'kernel':>10s} " + " ".join(f"{f'{s:.0%}':>7s}" for s in sparsities) + "   crossover measured / predicted")
        for row in rows[-len(patterns):]:
            crossover = row["measured_crossover_sparsity"]
            predicted = row["predicted_crossover_sparsity"]
            print(f"{row['kernel']:>10s} " + " ".join(f"{v:7.2f}" for v in row["speedup_over_our_dense"].values())
                  + f"   {'-' if crossover is None else f'{crossover:.0%}':>5s} / "
                  + f"{'-' if predicted is None or predicted >= 1 else f'{predicted:.0%}'}")
    return rows


def _runner(executable, inputs: dict[str, np.ndarray]):
    vm = relax.VirtualMachine(executable, tvm.cpu())
    args = [tvm.runtime.tensor(inputs[k]) for k in INPUT_ORDER]
    return lambda: vm["all_exits"](*args).numpy()[:, -1]


def block_bytes(mod: tvm.IRModule) -> dict[str, int]:
    """Constant bytes of the embeddings block and of all layer blocks of a structured module."""
    totals = {"embeddings": 0, "encoder": 0}
    for gv, func in mod.functions_items():
        block = func.attrs.get(BLOCK_ATTR) if isinstance(func, relax.Function) and func.attrs else None
        if block in ("embeddings", "layer"):
            totals["embeddings" if block == "embeddings" else "encoder"] += constant_bytes(tvm.IRModule({gv: func}))
    return totals


def bitmask_bytes(mod: tvm.IRModule) -> int:
    """Layer-block constant bytes if every matrix were stored as its nonzero fp32 values plus one mask
    bit per weight (the EdgeBERT accelerator's format); vectors stay dense."""
    total = 0

    def visit(expr: relax.Expr) -> None:
        nonlocal total
        if isinstance(expr, tvm.ir.expr.Constant) and isinstance(expr.value, tvm.runtime.Tensor):
            array = expr.value.numpy()
            total += int(np.count_nonzero(array)) * 4 + array.size // 8 if array.ndim == 2 else array.nbytes

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function) and func.attrs and func.attrs.get(BLOCK_ATTR) == "layer":
            relax.analysis.post_order_visit(func, visit)
    return total


def end_to_end(checkpoint_name: str, threads: int, rounds: int, seq_len: int = 128) -> dict:
    checkpoint = load(checkpoint_name)
    inputs = make_inputs(1, seq_len, checkpoint.model.config.vocab_size)
    compiled = {name: compile_model(checkpoint, CompileOptions(seq_len=seq_len, num_cores=threads, sparse=sparse))
                for name, sparse in (("dense", False), ("sparse", True))}
    runners = {f"edgebert-tvm {name}": _runner(c.executable, inputs) for name, c in compiled.items()}
    from harness import Deployed

    runners["pytorch eager"] = torch_runner(Deployed(checkpoint.model.eval()), inputs)
    outputs = {name: run() for name, run in runners.items()}
    times = time_interleaved(runners, rounds)
    ms = {name: median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    choices = compiled["sparse"].reports.get("sparsity", [])
    kinds = sorted({c["choice"] for c in choices})
    result = {
        "checkpoint": checkpoint_name, "seq_len": seq_len, "median_ms": ms, "min_ms": best,
        "sparse_speedup_over_dense": ms["edgebert-tvm dense"] / ms["edgebert-tvm sparse"],
        "max_abs_logit_difference": float(np.abs(outputs["edgebert-tvm sparse"] - outputs["edgebert-tvm dense"]).max()),
        "constant_bytes": {name: c.constant_bytes for name, c in compiled.items()},
        "choices": {kind: sum(c["choice"] == kind for c in choices) for kind in kinds},
        "encoder_sparsity": checkpoint.model.edgebert.extra.get("encoder_sparsity"),
    }
    print(f"\nend to end, {checkpoint_name}: dense {ms['edgebert-tvm dense']:.2f} ms, sparse "
          f"{ms['edgebert-tvm sparse']:.2f} ms, pytorch {ms['pytorch eager']:.2f} ms -> sparse/dense speedup "
          f"{result['sparse_speedup_over_dense']:.2f}x; weight bytes {result['constant_bytes']['dense']:,} -> "
          f"{result['constant_bytes']['sparse']:,}; kernels {result['choices']}")
    return result


def memory_table(checkpoint_name: str, threads: int) -> list[dict]:
    """Embedding and encoder bytes: dense fp32 ALBERT-base and MiniLM-L6, the checkpoint dense and folded."""
    from edgebert_tvm.models.checkpoint import Checkpoint
    from edgebert_tvm.models.modeling import EdgeBertForSequenceClassification
    from edgebert_tvm.models.config import EdgeBertConfig

    target = make_target("llvm", threads)
    models = {
        "ALBERT-base fp32 (dense)": Checkpoint(EdgeBertForSequenceClassification(
            AlbertConfig(**BUILTIN_SHAPES["albert-base"]), EdgeBertConfig(num_labels=2)).eval(), "albert-base", None),
        "MiniLM-L6 fp32 (dense)": load("minilm-l6"),
    }
    rows = []
    for name, checkpoint in models.items():
        rows.append({"model": name, **block_bytes(import_model(checkpoint.model, InputSpec(1, 128)))})
    checkpoint = load(checkpoint_name)
    mod = import_model(checkpoint.model, InputSpec(1, 128))
    with target:
        folded = FoldSparsity()(mod)
    rows.append({"model": f"{checkpoint_name} FoldSparsity (fp32 values)", **block_bytes(folded)})
    rows.append({"model": f"{checkpoint_name} values+bitmask (fp32 values)",
                 "embeddings": rows[-1]["embeddings"], "encoder": bitmask_bytes(mod)})
    albert = rows[0]["embeddings"] + rows[0]["encoder"]
    print(f"\n{'model':>48s} {'embeddings MB':>14s} {'encoder MB':>11s} {'total MB':>9s} {'ALBERT-base / this':>19s}")
    for row in rows:
        row["total"] = row["embeddings"] + row["encoder"]
        row["albert_base_over_this"] = albert / row["total"]
        print(f"{row['model']:>48s} {row['embeddings'] / 1e6:14.2f} {row['encoder'] / 1e6:11.2f} "
              f"{row['total'] / 1e6:9.2f} {row['albert_base_over_this']:18.2f}x")
    print("(EdgeBERT paper: 13.4x memory reduction vs ALBERT with pruning and 8-bit AdaptivFloat; here fp32 values)")
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = [tuple(s) for s in dict.fromkeys(tuple(r["shape"]) for r in rows)]
    fig, axes = plt.subplots(2, math.ceil(len(shapes) / 2), figsize=(13, 7), sharey=True)
    for ax, shape in zip(axes.flat, shapes):
        for row in (r for r in rows if tuple(r["shape"]) == shape):
            xs = [float(s) * 100 for s in row["speedup_over_our_dense"]]
            ax.plot(xs, list(row["speedup_over_our_dense"].values()), marker="o", label=row["kernel"])
        torch_ratio = row["dense_ms"] / row["torch_ms"]
        ax.axhline(1.0, color="black", lw=1, label="our dense")
        ax.axhline(torch_ratio, color="gray", ls="--", lw=1, label="torch dense")
        ax.set_title(f"M x K x N = {' x '.join(map(str, shape))}")
        ax.set_xlabel("sparsity (%)")
        ax.set_yscale("log")
    axes.flat[0].set_ylabel("speedup over our dense kernel")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="edgebert-sst2", help="pruned checkpoint for end to end and memory")
    parser.add_argument("--extra-checkpoint", nargs="*", default=[], help="more checkpoints for end to end")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-kernels", action="store_true")
    parser.add_argument("--shapes", nargs="+", metavar="MxKxN", help="only these kernel shapes (rows replace "
                        "those of the same shape in an existing --json)")
    parser.add_argument("--patterns", nargs="+", default=["csr", "16x1", "32x32"],
                        help="csr (unstructured) or RxC blocks of the [out, in] weight (default csr 16x1 32x32)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--json", default=str(RESULTS / "sparsity.json"))
    parser.add_argument("--plot", default=str(RESULTS / "sparsity.png"))
    args = parser.parse_args()
    set_threads(args.threads)
    print(f"machine: {machine(args.threads)}", flush=True)
    path = Path(args.json)
    results: dict = json.loads(path.read_text()) if path.exists() else {}  # parts run separately accumulate
    results.update({"threads": args.threads, "rounds": args.rounds})
    if not args.skip_kernels:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else SHAPES
        rows = kernel_sweep(args.threads, args.rounds, shapes, tuple(map(parse_pattern, args.patterns)),
                            tuple(args.sparsities))
        results["machine"] = machine(args.threads)
        kept = [r for r in results.get("kernels", []) if tuple(r["shape"]) not in shapes]
        results["kernels"] = sorted(kept + rows, key=lambda r: (r["shape"][0] != 128, r["shape"]))
        plot(results["kernels"], Path(args.plot))
        print(f"plot: {args.plot}")
    if not args.skip_end_to_end:
        results["end_to_end"] = [end_to_end(name, args.threads, args.rounds)
                                 for name in [args.checkpoint, *args.extra_checkpoint]]
        results["memory"] = memory_table(args.checkpoint, args.threads)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(args.json), results)
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
