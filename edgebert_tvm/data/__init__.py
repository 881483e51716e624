"""GLUE-format tasks: the vendored SST-2 / QNLI / MNLI-sample files (see glue/SOURCES.md) and user TSVs."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

from ..errors import EdgeBertError

GLUE_DIR = Path(__file__).parent / "glue"


@dataclasses.dataclass(frozen=True)
class Task:
    """Which TSV columns hold the text(s) and label, and the label names in class-index order."""

    name: str
    text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...]
    splits: dict[str, str]

    def check_labels(self, num_labels: int, model: str) -> None:
        """A model scores this task only if its classes are the task's (an accuracy would mean nothing)."""
        if num_labels != len(self.labels):
            raise EdgeBertError(f"{model}: has {num_labels} labels; task {self.name} has {len(self.labels)}")


TASKS: dict[str, Task] = {
    "sst2": Task("sst2", ("sentence",), "label", ("0", "1"), {"train": "SST-2/train.tsv", "dev": "SST-2/dev.tsv"}),
    "qnli": Task("qnli", ("question", "sentence"), "label", ("entailment", "not_entailment"), {"dev": "QNLI/dev.tsv"}),
}


@dataclasses.dataclass(frozen=True)
class Example:
    text: str
    text_pair: str | None
    label: int


def task_for(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise EdgeBertError(f"unknown task {name!r} (choose from: {', '.join(TASKS)})") from None


def builtin_split(task: Task, split: str) -> Path:
    if split not in task.splits:
        raise EdgeBertError(f"task {task.name} has no built-in {split!r} split (has: {', '.join(task.splits)})")
    return GLUE_DIR / task.splits[split]


def read_tsv(path: Path, task: Task, limit: int | None = None) -> list[Example]:
    """Read a GLUE TSV with a header row (QUOTE_NONE: GLUE text holds bare quotes)."""
    if not path.is_file():
        raise EdgeBertError(f"{path}: no such TSV file")
    try:
        examples = _read_examples(path, task, limit)
    except UnicodeDecodeError as err:
        raise EdgeBertError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})") from None
    except csv.Error as err:
        raise EdgeBertError(f"{path}: not a readable TSV file ({err})") from None
    if not examples:
        raise EdgeBertError(f"{path}: no examples after the header row")
    return examples


def _read_examples(path: Path, task: Task, limit: int | None) -> list[Example]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if reader.fieldnames is None:
            raise EdgeBertError(f"{path}: is empty (no header row)")
        needed = [*task.text_columns, task.label_column]
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
        if missing:
            raise EdgeBertError(f"{path}: missing column(s) {', '.join(missing)} for task {task.name}")
        examples = []
        for line, row in enumerate(reader, start=2):
            label = (row[task.label_column] or "").strip()
            if label not in task.labels:
                raise EdgeBertError(f"{path}:{line}: label {label!r} is not one of {', '.join(task.labels)}")
            texts = [row[c] or "" for c in task.text_columns]
            examples.append(Example(texts[0], texts[1] if len(texts) > 1 else None, task.labels.index(label)))
            if limit is not None and len(examples) >= limit:
                break
    return examples
