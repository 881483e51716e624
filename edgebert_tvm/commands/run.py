"""`edgebert-tvmc run`: an artifact on text or an .npz of inputs; for an edgebert artifact, the chip's
cost report. It needs TVM's runtime only (no PyTorch model code, transformers or Relax compiler)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import Artifact
from ..errors import EdgeBertError
from ..evaluate import entropy
from ..exit_predictor import ExitPredictor
from ..fileio import write_json_atomic
from ..inputs import check_inputs, check_texts, load_npz, load_tokenizer, to_arrays
from ..target.edgebert.config import load_config, parse_config
from ..target.edgebert.report import accelerator_report, format_report, plot_report
from ..target.edgebert.sentence import chip_workloads


def _read_inputs(args: argparse.Namespace, artifact: Any) -> tuple[dict[str, np.ndarray], list[str] | None]:
    model = artifact.metadata["model"]
    if args.text:
        if artifact.tokenizer_path is None:
            raise EdgeBertError(f"{artifact.directory}: artifact has no tokenizer; pass --inputs FILE.npz instead")
        check_texts(args.text)
        encodings = load_tokenizer(artifact.tokenizer_path, artifact.seq_len).encode_batch(args.text)
        for number, encoding in enumerate(encodings, start=1):
            if encoding.overflowing:
                print(f"edgebert-tvmc: note: text {number} is longer than the compiled {artifact.seq_len} tokens; "
                      "its end is cut off", file=sys.stderr)
        arrays = to_arrays(encodings)
    else:
        arrays = load_npz(Path(args.inputs))
    return check_inputs(arrays, artifact.seq_len, model["vocab_size"], model["type_vocab_size"]), args.text


def time_summary(times_ms: Sequence[float]) -> dict[str, float]:
    t = np.asarray(times_ms)
    return {"mean": float(t.mean()), "median": float(np.median(t)), "max": float(t.max()),
            "min": float(t.min()), "std": float(t.std())}


def _accelerator_report(args: argparse.Namespace, artifact: Any, inputs: dict[str, np.ndarray],
                        exit_layer: np.ndarray) -> dict[str, Any]:
    """The edgebert cost report for these inputs' exit layers (and DVFS if the artifact has a predictor)."""
    accelerator = artifact.metadata.get("accelerator")
    if accelerator is None:
        raise EdgeBertError(f"{artifact.directory}: --report needs an artifact compiled with --target edgebert")
    config = (load_config(args.accelerator_config) if args.accelerator_config
              else parse_config(accelerator["config"], f"{artifact.directory}/metadata.json accelerator config"))
    if "activation_storage" in accelerator:
        config = dataclasses.replace(config, activation_bytes=accelerator["activation_storage"]["bytes_per_value"])
    workloads = chip_workloads(accelerator, f"{artifact.directory}/metadata.json")
    predicted = None
    if artifact.metadata.get("exit_predictor"):
        predictor = ExitPredictor(**artifact.metadata["exit_predictor"])
        predicted = predictor.predict(entropy(artifact.all_exits(inputs)[:, 0]))
    target = args.latency_target_us * 1e-6 if args.latency_target_us else None
    report = accelerator_report(workloads, config, exit_layer.tolist(), artifact.row_lengths(inputs["attention_mask"]),
                                predicted, target)
    print(format_report(report))
    if args.report_plot:
        plot_report(report, Path(args.report_plot), f"{artifact.metadata['model']['source']} on the edgebert accelerator")
        print(f"plot: {args.report_plot}")
    if args.report_json:
        write_json_atomic(Path(args.report_json), report)
    return report


def execute(args: argparse.Namespace) -> None:
    for path in (args.json, args.report_json):
        if path and Path(path).is_dir():
            raise EdgeBertError(f"{path}: is a directory")
    if (args.report_json or args.report_plot or args.accelerator_config or args.latency_target_us) and not args.report:
        raise EdgeBertError("--report-json, --report-plot, --accelerator-config and --latency-target-us need --report")
    if args.report and args.accelerator_config:
        load_config(args.accelerator_config)  # fail before running anything
    artifact = Artifact.load(Path(args.artifact))
    inputs, texts = _read_inputs(args, artifact)
    result = artifact.run(inputs, repeat=args.repeat)
    output: dict[str, Any] = {"logits": result.logits.tolist(), "exit_layer": result.exit_layer.tolist()}
    if args.all_exits:
        output["all_exit_logits"] = artifact.all_exits(inputs).tolist()
    for row, (logits, layer) in enumerate(zip(result.logits, result.exit_layer)):
        label = f"{texts[row]!r}" if texts else f"row {row}"
        print(f"{label}: class {int(np.argmax(logits))}  logits {np.round(logits, 4).tolist()}  exit layer {int(layer)}")
    if args.print_time:
        summary = time_summary(result.times_ms)
        output["time_ms"] = summary
        print("Execution time summary (per call of batch %d):" % artifact.batch)
        print(" mean (ms)   median (ms)    max (ms)     min (ms)     std (ms)  ")
        print("".join(f"{summary[k]:^12.2f} " for k in ("mean", "median", "max", "min", "std")))
    if args.report:
        output["accelerator_report"] = _accelerator_report(args, artifact, inputs, result.exit_layer)
    if args.json:
        write_json_atomic(Path(args.json), output)
