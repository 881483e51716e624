"""`edgebert-tvmc eval`: accuracy and exit layers per entropy threshold, of a checkpoint (PyTorch) or
of a compiled artifact, on a task's split; a table, and a plot and JSON on request."""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import numpy as np

from ..artifact import Artifact
from ..data import builtin_split, read_tsv, task_for
from ..errors import EdgeBertError
from ..evaluate import artifact_all_exits, evaluate_exits, format_table, plot_accuracy_vs_depth
from ..fileio import write_json_atomic
from ..models.checkpoint import load
from ..models.inference import torch_all_exits


def execute(args: argparse.Namespace) -> None:
    for threshold in args.thresholds:
        if not math.isfinite(threshold) or threshold < 0:
            raise EdgeBertError(f"exit threshold {threshold} must be a finite number >= 0")
    task = task_for(args.task)
    path = Path(args.file) if args.file else builtin_split(task, "dev")
    examples = read_tsv(path, task, limit=args.limit)
    if (Path(args.model) / "metadata.json").is_file():
        artifact = Artifact.load(Path(args.model))
        task.check_labels(artifact.metadata["model"]["num_labels"], args.model)
        logits = artifact_all_exits(artifact, examples)
    else:
        checkpoint = load(args.model)
        if checkpoint.tokenizer_dir is None:
            raise EdgeBertError(f"{args.model}: has no tokenizer; it cannot read a task's text")
        task.check_labels(checkpoint.model.edgebert.num_labels, args.model)
        logits = torch_all_exits(checkpoint.model, checkpoint.tokenizer_dir / "tokenizer.json", examples, args.seq_len)
    labels = np.array([e.label for e in examples])
    results = evaluate_exits(logits, labels, args.thresholds)
    print(f"{args.model} on {task.name} ({path.name}, {len(examples)} examples)")
    print(format_table(results))
    if args.plot:
        plot_accuracy_vs_depth(results, Path(args.plot), f"{Path(args.model).name} on {task.name}")
        print(f"plot: {args.plot}")
    if args.json:
        write_json_atomic(Path(args.json), {"model": args.model, "task": task.name, "examples": len(examples),
                                            "results": [dataclasses.asdict(r) for r in results]})
