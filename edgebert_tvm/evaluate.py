"""Accuracy against depth: entropy-based early exit evaluated over a task's examples.

Every exit's logits are computed once (by the PyTorch model, models/inference.py, or by a compiled
artifact's `all_exits`), then each threshold applies EdgeBERT's rule: leave at the first layer whose exit
entropy is below the threshold, else at the last layer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from .data import Example
from .errors import EdgeBertError
from .inputs import encode, load_tokenizer

FULL_DEPTH = "full depth"


def entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy in nats of softmax(logits) along the last axis: ln sum e^x - sum x e^x / sum e^x."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=-1)
    return np.log(total) - (shifted * exp).sum(axis=-1) / total


def exit_layers(all_logits: np.ndarray, threshold: float) -> np.ndarray:
    """1-based exit layer per row of (rows, layers, labels) logits."""
    confident = entropy(all_logits) < threshold
    confident[:, -1] = True
    return confident.argmax(axis=1) + 1


@dataclasses.dataclass
class ExitResult:
    threshold: float | str
    accuracy: float
    average_exit_layer: float
    exit_layer_counts: list[int]

    @property
    def cost_ratio(self) -> float:
        return self.average_exit_layer / len(self.exit_layer_counts)


def evaluate_exits(all_logits: np.ndarray, labels: np.ndarray, thresholds: Sequence[float]) -> list[ExitResult]:
    """Full depth first, then one result per threshold."""
    rows, layers, _ = all_logits.shape
    results = [ExitResult(FULL_DEPTH, float((all_logits[:, -1].argmax(-1) == labels).mean()), float(layers),
                          [0] * (layers - 1) + [rows])]
    for threshold in thresholds:
        exits = exit_layers(all_logits, threshold)
        predictions = all_logits[np.arange(rows), exits - 1].argmax(-1)
        results.append(ExitResult(float(threshold), float((predictions == labels).mean()), float(exits.mean()),
                                  np.bincount(exits, minlength=layers + 1)[1:].tolist()))
    return results


def format_table(results: list[ExitResult]) -> str:
    lines = [f"{'threshold':>10s} {'accuracy':>9s} {'avg exit':>9s} {'cost':>6s}  exits per layer (1..L)"]
    for r in results:
        name = r.threshold if isinstance(r.threshold, str) else f"{r.threshold:.3f}"
        lines.append(f"{name:>10s} {100 * r.accuracy:8.2f}% {r.average_exit_layer:9.2f} {r.cost_ratio:6.2f}  "
                     f"{' '.join(str(c) for c in r.exit_layer_counts)}")
    return "\n".join(lines)


def plot_accuracy_vs_depth(results: list[ExitResult], path: Path, title: str) -> None:
    """Accuracy against average exit layer, one point per threshold (PNG)."""
    import matplotlib  # optional at run time: only a plot needs it, and it costs a second to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    points = [r for r in results if not isinstance(r.threshold, str)]
    ax.plot([r.average_exit_layer for r in points], [100 * r.accuracy for r in points], "o-", label="early exit")
    for r in points:
        ax.annotate(f"{r.threshold:g}", (r.average_exit_layer, 100 * r.accuracy), textcoords="offset points",
                    xytext=(4, -10), fontsize=7)
    full = results[0]
    ax.axhline(100 * full.accuracy, color="gray", linestyle="--", label=f"full depth ({100 * full.accuracy:.1f}%)")
    ax.set_xlim(0.5, len(full.exit_layer_counts) + 0.5)
    ax.set_xlabel("average exit layer")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def artifact_all_exits(artifact, examples: list[Example], batch_rows: int = 64, desc: str = "artifact") -> np.ndarray:
    """Every exit's logits from a compiled artifact's `all_exits`, (examples, layers, labels)."""
    if artifact.tokenizer_path is None:
        raise EdgeBertError(f"{artifact.directory}: artifact has no tokenizer; it cannot read a task's text")
    tokenizer = load_tokenizer(artifact.tokenizer_path, artifact.seq_len)
    outputs = []
    for start in tqdm(range(0, len(examples), batch_rows), desc=desc, unit="batch"):
        chunk = examples[start:start + batch_rows]
        outputs.append(artifact.all_exits(encode(tokenizer, [e.text for e in chunk], [e.text_pair for e in chunk])))
    return np.concatenate(outputs)
