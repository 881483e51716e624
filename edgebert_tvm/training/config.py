"""A training run's settings, and the recipe of the built-in default checkpoint.

Torch-free, so that the built-in models can name the default checkpoint's cache directory (its
recipe's hash) without importing the trainer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import sys
from typing import NamedTuple

from ..errors import EdgeBertError
from ..models.span import SPAN_FORMS

METHODS = ("movement", "magnitude")  # pruning methods (training/pruning.py)
PREDICTOR_STATISTICS = ("mode", "median")  # exit_predictor.build_predictor

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
    span_form: str = "distance"
    span_max: int | None = None  # None: T + R for distance spans (z = 1 keeps every key), 512 for key spans
    span_ramp: int = 16
    span_lr: float = 5e-3
    span_coeff: float = 5e-6
    distill_alpha: float = 0.9
    distill_temperature: float = 2.0
    offramp_epochs: float = 1.0
    offramp_lr: float = 5e-4
    offramp_distill_alpha: float = 0.9  # stage 2: weight of distillation from the final exit (0: CE only)
    exit_predictor: str = "mode"  # each entropy bin's exit layer: its most frequent ("mode") or "median"
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
            (self.span_form in SPAN_FORMS, f"--span-form must be one of {', '.join(SPAN_FORMS)}"),
            (0.0 <= self.offramp_distill_alpha <= 1.0, "--offramp-distill-alpha must be in [0, 1]"),
            (self.exit_predictor in PREDICTOR_STATISTICS, f"exit_predictor must be one of {', '.join(PREDICTOR_STATISTICS)}"),
            (self.span_ramp >= 1 and (self.span_max is None or self.span_max >= 1),
             "--span-max and --span-ramp must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise EdgeBertError(message)
        if self.spans and self.span_form == "key" and self.span_ramp >= self.max_seq_len:
            print(f"edgebert-tvmc: warning: key spans with ramp {self.span_ramp} >= --max-seq-len {self.max_seq_len} "
                  "can cut no key (docs/ARCHITECTURE.md, \"Attention spans\"); distance spans can", file=sys.stderr)
        try:
            parse_block(self.pruning_block)
        except ValueError as err:
            raise EdgeBertError(f"--pruning-block: {err}") from None

    @classmethod
    def from_dict(cls, recipe: dict) -> "RecipeConfig":
        """The recipe an edgebert.json records; fields it predates take the value every recipe had then."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(recipe) - known)
        if unknown:
            raise EdgeBertError(f"the recorded recipe has fields this edgebert-tvm does not know: {', '.join(unknown)}")
        return cls(**{**_LATER_FIELDS, **recipe})

    @property
    def resolved_span_max(self) -> int:
        if self.span_max is not None:
            return self.span_max
        return self.max_seq_len + self.span_ramp if self.span_form == "distance" else 512


# The recipe of the built-in `edgebert-sst2` checkpoint: sized to train in about 15 minutes on two
# cores (a seeded 48k-sentence subset of SST-2 train, one epoch of stage 1, three of stage 2).
# Magnitude pruning: movement pruning needs far longer training than this budget allows.
# Its key spans (S 512, R 256 at T 64) cut nothing, its off-ramps learn from the labels alone and its
# predictor holds medians: kept so that its bits stay those measured.
DEFAULT_RECIPE = RecipeConfig(max_examples=48000, lr=8e-5, pruning="magnitude", offramp_epochs=3.0, offramp_lr=3e-3,
                              span_form="key", span_max=512, span_ramp=256, offramp_distill_alpha=0.0,
                              exit_predictor="median")

# The dense teacher students distil from: MiniLM-L6 fine-tuned on all of SST-2 train, nothing pruned,
# no spans, no off-ramps (only its final exit teaches).
TEACHER_RECIPE = RecipeConfig(epochs=2.0, lr=5e-5, pruning="none", sparsity=0.0, embedding_keep=1.0, spans=False,
                              offramp_epochs=0.0)


class TrainedBuiltin(NamedTuple):
    """A built-in checkpoint trained on this machine into the cache, once, by an announced step."""

    recipe: RecipeConfig
    minutes: int  # its build time on 2 cores, quoted when the build starts


TRAINED_BUILTINS: dict[str, TrainedBuiltin] = {
    "edgebert-sst2": TrainedBuiltin(DEFAULT_RECIPE, 12),  # measured (AMD EPYC, idle)
    "minilm-sst2-teacher": TrainedBuiltin(TEACHER_RECIPE, 13),  # measured: 12.4 min (Intel Xeon)
}
DEFAULT_BUILTIN = "edgebert-sst2"


# Bump when the recipe's code changes what a recipe builds (2: exits calibrated on 4,000 held-out
# sentences with a 0.75-point budget, not 1,000 with 1 point). A new behaviour that earlier recipes
# did not have is a field instead (`_LATER_FIELDS`), so their checkpoints keep their bits and names.
RECIPE_CODE_VERSION = 2


def recipe_id(config: RecipeConfig) -> str:
    """A short stable hash of what decides a built checkpoint's bits: the recipe's fields, the recipe
    code's version and the PyTorch version, so a changed one builds a new cached checkpoint instead of
    silently reusing a stale one."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}
    fields["_code"] = [RECIPE_CODE_VERSION, importlib.metadata.version("torch")]
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


# Fields added after checkpoints were built, with the value every recipe had before: at that value
# they do not hash, so those checkpoints keep their names.
_LATER_FIELDS = {"pruning_block": None, "span_form": "key", "offramp_distill_alpha": 0.0, "exit_predictor": "median"}
