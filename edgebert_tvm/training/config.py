"""A training run's settings, and the recipe of the built-in default checkpoint.

Torch-free, so that the built-in models can name the default checkpoint's cache directory (its
recipe's hash) without importing the trainer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json

from ..errors import EdgeBertError

METHODS = ("movement", "magnitude")  # pruning methods (training/pruning.py)

Block = tuple[int, int]


def parse_block(text: str | None) -> Block:
    """'32x32' -> (32, 32); None -> (1, 1), unstructured."""
    if text is None:
        return (1, 1)
    rows, sep, cols = text.lower().partition("x")
    if not sep or not rows.isdigit() or not cols.isdigit() or int(rows) < 1 or int(cols) < 1:
        raise ValueError(f"pruning block must look like 32x32 or 16x1, got {text!r}")
    return (int(rows), int(cols))


@dataclasses.dataclass
class RecipeConfig:
    """Every setting of a training run; stored in the checkpoint's edgebert.json."""

    backbone: str = "minilm-l6"
    task: str = "sst2"
    train_file: str | None = None
    teacher: str | None = None
    max_examples: int | None = None
    max_seq_len: int = 64
    batch_size: int = 32
    epochs: float = 1.0
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.06
    sparsity: float = 0.5
    pruning: str = "movement"
    pruning_block: str | None = None
    score_lr: float = 1e-2
    embedding_keep: float = 0.4
    spans: bool = True
    span_max: int = 512
    span_ramp: int = 256
    span_lr: float = 5e-3
    span_coeff: float = 5e-6
    distill_alpha: float = 0.9
    distill_temperature: float = 2.0
    offramp_epochs: float = 1.0
    offramp_lr: float = 5e-4
    seed: int = 0
    save_every: int = 200

    def validate(self) -> None:
        checks = [
            (0.0 <= self.sparsity < 1.0, f"--sparsity must be in [0, 1), got {self.sparsity}"),
            (0.0 < self.embedding_keep <= 1.0, f"--embedding-keep must be in (0, 1], got {self.embedding_keep}"),
            (self.pruning in (*METHODS, "none"), f"--pruning must be one of {', '.join((*METHODS, 'none'))}"),
            (self.batch_size >= 1 and self.max_seq_len >= 8, "--batch-size must be >= 1 and --max-seq-len >= 8"),
            (self.epochs > 0 and self.offramp_epochs >= 0, "--epochs must be > 0 and --offramp-epochs >= 0"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
        ]
        for ok, message in checks:
            if not ok:
                raise EdgeBertError(message)
        try:
            parse_block(self.pruning_block)
        except ValueError as err:
            raise EdgeBertError(f"--pruning-block: {err}") from None


# The recipe of the built-in `edgebert-sst2` checkpoint: sized to train in about 15 minutes on two
# cores (a seeded 48k-sentence subset of SST-2 train, one epoch of stage 1, three of stage 2).
# Magnitude pruning: movement pruning needs far longer training than this budget allows.
DEFAULT_RECIPE = RecipeConfig(max_examples=48000, lr=8e-5, pruning="magnitude", offramp_epochs=3.0, offramp_lr=3e-3)


# Bump when the recipe's code changes what a recipe builds (2: exits calibrated on 4,000 held-out
# sentences with a 0.75-point budget, not 1,000 with 1 point).
RECIPE_CODE_VERSION = 2


def recipe_id(config: RecipeConfig) -> str:
    """A short stable hash of what decides a built checkpoint's bits: the recipe's fields, the recipe
    code's version and the PyTorch version, so a changed one builds a new cached checkpoint instead of
    silently reusing a stale one. Fields added later hash only when set."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if not (k in _LATER_FIELDS and v is None)}
    fields["_code"] = [RECIPE_CODE_VERSION, importlib.metadata.version("torch")]
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


_LATER_FIELDS = ("pruning_block",)
