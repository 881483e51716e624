"""`edgebert-tvmc compile`: a checkpoint or built-in, through the EdgeBERT passes and a target, into an
artifact directory (written atomically; an existing artifact replaced only with --force)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from ..artifact import write_artifact
from ..compiler import FROM_CHECKPOINT, CompiledModel, CompileOptions, compile_model
from ..errors import EdgeBertError
from ..fileio import check_output_directory
from ..models.checkpoint import load
from ..target.edgebert.config import load_config
from ..tuning.records import read_database


def compile_options(args: argparse.Namespace) -> CompileOptions:
    """The options `compile`'s flags (and `tune`'s, the same) ask for."""
    if args.accelerator_config:
        load_config(args.accelerator_config)  # fail before the long work
    return CompileOptions(target=args.target, batch=args.batch, seq_len=args.seq_len,
                          lengths=tuple(args.lengths) if args.lengths else None, num_cores=args.num_cores,
                          mcpu=args.mcpu,
                          exit_thresholds=None if args.full_depth else args.exit_threshold or FROM_CHECKPOINT,
                          span_folding=None if args.span_folding == "off" else args.span_folding,
                          attention_spans=_read_spans(Path(args.spans)) if args.spans else None,
                          weight_format=args.weights or FROM_CHECKPOINT, exp_bits=args.exp_bits,
                          rda_threshold=args.rda_threshold, rda_granularity=args.rda_granularity,
                          rda_storage=args.rda_storage, rda_activations=args.rda_activations,
                          accelerator_config=args.accelerator_config,
                          sparse=args.sparse, fuse_qkv=args.fuse_qkv)


def check_replaceable(out: Path, marker: str, what: str, force: bool) -> None:
    """The output rule, checked before the long work: a new or empty directory is written; an existing
    `what` (it holds `marker`) is replaced only with --force; any other directory is never replaced."""
    check_output_directory(out)
    if out.is_dir() and any(out.iterdir()):
        if not (out / marker).is_file():
            raise EdgeBertError(f"{out}: exists and is not {what} (no {marker}); not replacing it")
        if not force:
            raise EdgeBertError(f"{out}: {what} is already there; pass --force to replace it")


def execute(args: argparse.Namespace) -> None:
    out = Path(args.output)
    check_replaceable(out, "metadata.json", "an artifact", args.force)
    options = compile_options(args)
    if args.tuning_records:
        read_database(Path(args.tuning_records))  # a bad directory fails before the long work
        options = dataclasses.replace(options, tuning_records=Path(args.tuning_records).resolve())
    checkpoint = load(args.model)
    compiled = compile_model(checkpoint, options)
    write_artifact(checkpoint, compiled, out)
    total = sum(compiled.compile_seconds.values())
    tuned = f", {len(compiled.tuned)} kernels from tuning records" if args.tuning_records else ""
    lengths = ", ".join(map(str, compiled.options.lengths))
    print(f"compiled {checkpoint.source} for {options.target} (batch {options.batch}, lengths {lengths}{tuned}"
          f"{_from_checkpoint(compiled)}) in {total:.1f} s -> {args.output}")


def _from_checkpoint(compiled: CompiledModel) -> str:
    """What the checkpoint's own settings filled in, for compile's summary line."""
    options, applied = compiled.options, []
    if "exit_thresholds" in options.from_checkpoint:
        chip = compiled.exit_calibration
        where = "" if chip is None or chip["threshold"] is None else (
            f" (the chip's own, on {chip['sentences']} held-out sentences)")
        applied.append(f"exits at {', '.join(f'{t:g}' for t in sorted(set(options.exit_thresholds)))}{where}")
    if "weight_format" in options.from_checkpoint:
        applied.append(f"{options.weight_format} weights")
    return f"; from the checkpoint: {', '.join(applied)} (--full-depth, --weights float32 turn them off)" if applied else ""


def _read_spans(path: Path) -> Any:
    """Spans from a JSON file: a list of rows (layers x heads), or an object with `attention_spans`
    (an edgebert.json)."""
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise EdgeBertError(f"{path}: cannot read spans ({err.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EdgeBertError(f"{path}: not valid JSON ({err})") from None
    spans = data.get("attention_spans") if isinstance(data, dict) else data
    if not isinstance(spans, list):
        raise EdgeBertError(f"{path}: expected a list of span rows or an object with attention_spans")
    return spans
