"""The main job: the default EdgeBERT checkpoint, compiled with early exit, against PyTorch on SST-2 dev.

It loads the built-in `edgebert-sst2` checkpoint (shipped packed in the repository), compiles it
twice for this CPU (every exit, for the accuracy table; and with entropy early exit folded in at the
checkpoint's calibrated threshold), then runs every SST-2 dev sentence
through the early-exit artifact and through the PyTorch model with the same exit rule, and prints
accuracy, average exit layer and latency, with a plot of accuracy against average exit layer.
Each peer is timed in its own block over all sentences, after a warm-up: alternating them call by
call would let each one's spinning thread pool slow the other.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .artifact import Artifact, write_artifact
from .compiler import CompileOptions, compile_model
from .contract import INPUT_NAMES
from .data import builtin_split, read_tsv, task_for
from .evaluate import artifact_all_exits, evaluate_exits, format_table, plot_accuracy_vs_depth
from .exit_predictor import ExitPredictor, score_predictor
from .inputs import encode, load_tokenizer, unpadded
from .models.checkpoint import Checkpoint, load
from .models.modeling import early_exit
from .target.cpu.host import describe_host

DEFAULT_MODEL = "edgebert-sst2"
SWEEP = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def _compile(checkpoint: Checkpoint, directory: Path, seq_len: int, thresholds: list[float] | None) -> Artifact:
    options = CompileOptions(seq_len=seq_len, exit_thresholds=thresholds)
    compiled = compile_model(checkpoint, options)
    write_artifact(checkpoint, compiled, directory)
    print(f"  {directory}: compiled in {sum(compiled.compile_seconds.values()):.1f} s")
    return Artifact.load(directory)


def run_demo(workdir: Path, model: str = DEFAULT_MODEL, sentences: int | None = None) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = load(model)
    edgebert = checkpoint.model.edgebert
    seq_len = edgebert.seq_len or 128
    threshold = (edgebert.exit_thresholds or [0.3])[0]
    task = task_for(edgebert.task or "sst2")
    examples = read_tsv(builtin_split(task, "dev"), task, limit=sentences)
    labels = np.array([e.label for e in examples])

    print(f"compiling {model} for this CPU (batch 1, seq {seq_len}) ...")
    every_exit = _compile(checkpoint, workdir / f"{model}-all-exits", seq_len, None)
    early = _compile(checkpoint, workdir / f"{model}-exit-{threshold:g}", seq_len, [threshold])

    all_logits = artifact_all_exits(every_exit, examples)
    results = evaluate_exits(all_logits, labels, sorted({*SWEEP, threshold}))
    print(f"\n{task.name} dev, {len(examples)} sentences, compiled {model} (every exit evaluated):")
    print(format_table(results))
    predictor = edgebert.extra.get("exit_predictor")
    if predictor is not None:
        scores = score_predictor(ExitPredictor(**predictor), all_logits)
        print(f"exit-layer predictor (layer-1 entropy lookup table, threshold {predictor['threshold']:g}): "
              f"exact {100 * scores['exact']:.1f}%, within one layer {100 * scores['within_one']:.1f}%, "
              f"mean abs error {scores['mean_abs_error']:.2f} layers; always layer {scores['most_common_layer']}: "
              f"{100 * scores['most_common_exact']:.1f}%, {100 * scores['most_common_within_one']:.1f}%, "
              f"{scores['most_common_mean_abs_error']:.2f}")
    plot = workdir / "accuracy_vs_exit_layer.png"
    plot_accuracy_vs_depth(results, plot, f"{model} on {task.name} dev")

    inputs = encode(load_tokenizer(early.tokenizer_path, seq_len), [e.text for e in examples])
    # each sentence at its own length, for both peers (the artifact runs it at the shortest compiled length that holds it)
    rows = [unpadded({k: v[row:row + 1] for k, v in inputs.items()}) for row in range(len(examples))]
    thresholds = [threshold] * (checkpoint.model.num_layers - 1)

    def torch_early_exit(one: dict[str, np.ndarray]) -> tuple[torch.Tensor, int]:
        return early_exit(checkpoint.model, *[torch.from_numpy(one[k]) for k in INPUT_NAMES], thresholds)

    tvm_ms, torch_ms, tvm_layers, torch_layers, tvm_pred, torch_pred = [], [], [], [], [], []
    for one in rows[:20]:  # warm-up: thread pools started, caches filled
        early.run(one)
    for one in tqdm(rows, desc="early exit, edgebert-tvm", unit="sentence"):
        result = early.run(one)
        tvm_ms.append(result.times_ms[0])
        tvm_layers.append(int(result.exit_layer[0]))
        tvm_pred.append(int(result.logits[0].argmax()))
    for one in rows[:20]:
        torch_early_exit(one)
    for one in tqdm(rows, desc="early exit, PyTorch", unit="sentence"):
        start = time.perf_counter()
        logits, layer = torch_early_exit(one)
        torch_ms.append((time.perf_counter() - start) * 1e3)
        torch_layers.append(layer)
        torch_pred.append(int(logits[0].argmax()))
    report = {
        "threshold": threshold,
        "accuracy": {"edgebert-tvm": float(np.mean(np.array(tvm_pred) == labels)),
                     "pytorch": float(np.mean(np.array(torch_pred) == labels)), "full_depth": results[0].accuracy},
        "average_exit_layer": {"edgebert-tvm": float(np.mean(tvm_layers)), "pytorch": float(np.mean(torch_layers))},
        "same_exit_layer": float(np.mean(np.array(tvm_layers) == np.array(torch_layers))),
        "median_ms": {"edgebert-tvm": float(np.median(tvm_ms)), "pytorch": float(np.median(torch_ms))},
    }
    print(f"\nearly exit at entropy < {threshold:g} nats (calibrated on held-out training sentences), batch 1, "
          f"on {describe_host()}:")
    print(f"{'':14s} {'accuracy':>9s} {'avg exit layer':>15s} {'median ms':>10s}")
    for peer in ("pytorch", "edgebert-tvm"):
        print(f"{peer:14s} {100 * report['accuracy'][peer]:8.2f}% {report['average_exit_layer'][peer]:15.2f} "
              f"{report['median_ms'][peer]:10.2f}")
    ratio = report["median_ms"]["pytorch"] / report["median_ms"]["edgebert-tvm"]
    speed = f"{ratio:.1f}x faster than" if ratio >= 1 else f"{1 / ratio:.1f}x slower than"
    print(f"full depth accuracy {100 * results[0].accuracy:.2f}%; same exit layer for "
          f"{100 * report['same_exit_layer']:.1f}% of sentences; edgebert-tvm is {speed} PyTorch (medians)")
    print(f"plot: {plot}")
    return report
