"""`edgebert.json`: the EdgeBERT parts of a checkpoint that HuggingFace's config.json has no place for."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable

from ..errors import EdgeBertError
from .span import SPAN_FORMS

EDGEBERT_CONFIG_NAME = "edgebert.json"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_number_list(value: Any) -> bool:
    return isinstance(value, list) and all(map(_is_number, value))


# What each field of edgebert.json must hold (JSON gives no types of its own).
FIELD_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_labels": (_is_int, "an integer"),
    "exit_thresholds": (lambda v: v is None or _is_number_list(v), "a list of numbers or null"),
    "attention_spans": (lambda v: v is None or (isinstance(v, list) and all(map(_is_number_list, v))),
                        "a list of rows of numbers or null"),
    "span_max": (_is_int, "an integer"),
    "span_ramp": (_is_int, "an integer"),
    "span_form": (lambda v: v in SPAN_FORMS, f"one of {', '.join(map(json.dumps, SPAN_FORMS))}"),
    "task": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "seq_len": (lambda v: v is None or _is_int(v), "an integer or null"),
}


@dataclasses.dataclass
class EdgeBertConfig:
    """Off-ramps, exit thresholds and attention spans of one EdgeBERT model.

    `attention_spans` holds the learned span fraction z in [0, 1] per head, one row per distinct
    encoder layer (one row for ALBERT's shared layer); None means no span mask. `span_max` (S) and
    `span_ramp` (R) are the adaptive-span hyper-parameters of the mask (docs/ARCHITECTURE.md, "Attention spans"),
    `span_form` how it measures a key's distance (models/span.py; "key" in checkpoints that predate
    the field). `seq_len` is the sequence length the model was trained at: "key" spans are measured
    from the end of the padded sequence, so such a model should be compiled at that length.
    """

    num_labels: int = 2
    exit_thresholds: list[float] | None = None
    attention_spans: list[list[float]] | None = None
    span_max: int = 512
    span_ramp: int = 256
    span_form: str = "key"
    task: str | None = None
    seq_len: int | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self, source: str = EDGEBERT_CONFIG_NAME) -> None:
        if self.num_labels < 1:
            raise EdgeBertError(f"{source}: num_labels must be >= 1, got {self.num_labels}")
        if self.span_max < 1 or self.span_ramp < 1:
            raise EdgeBertError(f"{source}: span_max and span_ramp must be >= 1")
        if self.span_form not in SPAN_FORMS:
            raise EdgeBertError(f"{source}: span_form must be one of {', '.join(SPAN_FORMS)}, got {self.span_form!r}")
        for t in self.exit_thresholds or []:
            if not math.isfinite(t) or t < 0:
                raise EdgeBertError(f"{source}: exit threshold {t} must be a finite number >= 0")
        for row in self.attention_spans or []:
            if any(not (0.0 <= z <= 1.0) for z in row):
                raise EdgeBertError(f"{source}: attention spans must lie in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(data.pop("extra"))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = EDGEBERT_CONFIG_NAME) -> "EdgeBertConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        for name, value in known.items():
            holds, expected = FIELD_TYPES[name]
            if not holds(value):
                raise EdgeBertError(f"{source}: {name} must be {expected}, got {json.dumps(value)}")
        config = cls(**known, extra=extra)
        config.validate(source)
        return config

    @classmethod
    def load(cls, directory: Path) -> "EdgeBertConfig":
        path = directory / EDGEBERT_CONFIG_NAME
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise EdgeBertError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise EdgeBertError(f"{path}: expected a JSON object")
        return cls.from_dict(data, str(path))

    def save(self, directory: Path) -> None:
        (directory / EDGEBERT_CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
