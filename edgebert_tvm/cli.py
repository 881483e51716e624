"""`edgebert-tvmc`: compile, run and inspect EdgeBERT models, in the manner of TVM's former tvmc.

Bad input ends with one line on stderr and exit status 2; a bug of ours with one line and exit
status 3 (the traceback with EDGEBERT_TVM_DEBUG=1); outputs are written atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .artifact import Artifact, write_artifact
from .compiler import FROM_CHECKPOINT, CompileOptions, CompiledModel, compile_model
from .data import builtin_split, read_tsv, task_for
from .demo import run_demo
from .errors import EdgeBertError, InternalError
from .evaluate import artifact_all_exits, entropy, evaluate_exits, format_table, plot_accuracy_vs_depth
from .exit_predictor import ExitPredictor
from .fileio import check_output_directory, write_json_atomic
from .inputs import check_inputs, check_texts, load_npz, load_tokenizer, to_arrays
from .models.builtins import BUILTIN_NAMES, shipped_dir
from .models.checkpoint import load, save
from .models.packed import PACKED_WEIGHTS_NAME, round_weights_
from .models.inference import torch_all_exits
from .target.registry import TARGET_NAMES
from .target.edgebert.config import load_config, parse_config
from .target.edgebert.report import accelerator_report, format_report, plot_report
from .target.edgebert.sentence import chip_workloads
from .training.config import DEFAULT_BUILTIN, TRAINED_BUILTINS
from .training.recipe import RecipeConfig, Trainer, build_trained_builtin, recalibrate_exits
from .tuning import report as tuning_report
from .tuning.measure import Tracker
from .tuning.records import open_for_tuning, read_database
from .tuning.tasks import model_tasks
from .tuning.tune import TuneOptions, tune

EXIT_BAD_INPUT = 2
EXIT_INTERNAL_ERROR = 3
DEBUG_ENV = "EDGEBERT_TVM_DEBUG"  # set to 1 for the traceback of an internal error


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _kernel_pattern(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as err:
        raise argparse.ArgumentTypeError(f"not a regular expression ({err})") from None


def _compile_options(args: argparse.Namespace) -> CompileOptions:
    if args.accelerator_config:
        load_config(args.accelerator_config)  # fail before the long work
    return CompileOptions(target=args.target, batch=args.batch, seq_len=args.seq_len,
                          lengths=tuple(args.lengths) if args.lengths else None, num_cores=args.num_cores,
                          exit_thresholds=None if args.full_depth else args.exit_threshold or FROM_CHECKPOINT,
                          span_folding=None if args.span_folding == "off" else args.span_folding,
                          attention_spans=_read_spans(Path(args.spans)) if args.spans else None,
                          weight_format=args.weights or FROM_CHECKPOINT, exp_bits=args.exp_bits,
                          rda_threshold=args.rda_threshold, rda_granularity=args.rda_granularity,
                          rda_storage=args.rda_storage, rda_activations=args.rda_activations,
                          accelerator_config=args.accelerator_config,
                          sparse=args.sparse, fuse_qkv=args.fuse_qkv)


def _check_replaceable(out: Path, marker: str, what: str, force: bool) -> None:
    """The output rule, checked before the long work: a new or empty directory is written; an existing
    `what` (it holds `marker`) is replaced only with --force; any other directory is never replaced."""
    check_output_directory(out)
    if out.is_dir() and any(out.iterdir()):
        if not (out / marker).is_file():
            raise EdgeBertError(f"{out}: exists and is not {what} (no {marker}); not replacing it")
        if not force:
            raise EdgeBertError(f"{out}: {what} is already there; pass --force to replace it")


def cmd_compile(args: argparse.Namespace) -> None:
    out = Path(args.output)
    _check_replaceable(out, "metadata.json", "an artifact", args.force)
    options = _compile_options(args)
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


def cmd_tune(args: argparse.Namespace) -> None:
    if args.rpc_key and not args.rpc_tracker:
        raise EdgeBertError("--rpc-key needs --rpc-tracker HOST:PORT")
    if args.time_budget is not None and not (math.isfinite(args.time_budget) and args.time_budget > 0):
        raise EdgeBertError(f"--time-budget must be a positive number of minutes, got {args.time_budget}")
    tracker = Tracker.parse(args.rpc_tracker, args.rpc_key) if args.rpc_tracker else None
    if tracker is not None:
        tracker.servers()  # fail now if nothing can measure
    work_dir = Path(args.output)
    open_for_tuning(work_dir)  # a corrupt database fails here, untouched, before the long work
    checkpoint = load(args.model)
    tasks, target = model_tasks(checkpoint, _compile_options(args))
    if args.kernels is not None:
        tasks = [t for t in tasks if args.kernels.search(t.name)]
        if not tasks:
            raise EdgeBertError(f"no kernel of {checkpoint.source} matches --kernels {args.kernels.pattern!r}")
    tasks = tasks[: args.top_kernels]  # heaviest (calls x FLOPs) first
    print(f"{checkpoint.source}: {len(tasks)} kernels to tune for {args.target}, {args.trials} trials each "
          f"-> {work_dir}", flush=True)
    options = TuneOptions(trials=args.trials, work_dir=work_dir, time_budget_min=args.time_budget, tracker=tracker,
                          population=args.population)
    results = tune(tasks, target, options)
    print(tuning_report.format_table(results))
    write_json_atomic(work_dir / "tuning_report.json", tuning_report.report_json(checkpoint.source, args.target, options, results))
    print(f"records: {work_dir} (apply with `edgebert-tvmc compile {args.model} --tuning-records {work_dir} ...`)")


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


def cmd_run(args: argparse.Namespace) -> None:
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


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return value


def cmd_train(args: argparse.Namespace) -> None:
    check_output_directory(Path(args.output))
    config = RecipeConfig(
        backbone=args.backbone, task=args.task, train_file=args.train_file, teacher=args.teacher,
        max_examples=args.max_examples, max_seq_len=args.max_seq_len, batch_size=args.batch_size,
        epochs=args.epochs, lr=args.lr, sparsity=args.sparsity, pruning=args.pruning, pruning_block=args.pruning_block,
        embedding_keep=args.embedding_keep, spans=not args.no_spans, span_form=args.span_form, span_max=args.span_max,
        span_ramp=args.span_ramp, span_coeff=args.span_coeff, offramp_epochs=args.offramp_epochs,
        offramp_lr=args.offramp_lr, offramp_distill_alpha=args.offramp_distill_alpha, seed=args.seed,
        save_every=args.save_every,
    )
    checkpoint = Trainer(config, Path(args.output)).run()
    extra = checkpoint.model.edgebert.extra
    dev = "" if extra["dev_accuracy"] is None else f"final-exit dev accuracy {extra['dev_accuracy']:.2%}, "
    print(f"wrote {args.output}: encoder sparsity {extra['encoder_sparsity']:.1%}, {dev}"
          f"trained in {extra['train_seconds'] / 60:.1f} min")


def cmd_eval(args: argparse.Namespace) -> None:
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


def cmd_demo(args: argparse.Namespace) -> None:
    run_demo(Path(args.workdir), sentences=args.sentences)


def cmd_build_default(args: argparse.Namespace) -> None:
    directory = build_trained_builtin(args.name)
    shipped = shipped_dir(args.name)
    ships = "" if shipped is None else (f" (the name {args.name} loads the packed copy in {shipped}; "
                                        f"`edgebert-tvmc pack {directory} -o {shipped} --force` replaces it)")
    print(f"{args.name}: {directory}{ships}")


def cmd_pack(args: argparse.Namespace) -> None:
    out = Path(args.output)
    _check_replaceable(out, "config.json", "a checkpoint", args.force)
    checkpoint = load(args.model)
    before = checkpoint.model.edgebert.exit_thresholds
    round_weights_(checkpoint.model)
    if recalibrate_exits(checkpoint):  # the deployed weights are the AF8 ones: calibrate on those
        print(f"exit threshold recalibrated for the AF8 weights on the recipe's held-out sentences: {before} -> "
              f"{checkpoint.model.edgebert.exit_thresholds}")
    save(checkpoint, out, pack=True)
    fp32 = sum(v.numel() * 4 for k, v in checkpoint.model.state_dict().items() if k != "span_z")
    packed_bytes = (out / PACKED_WEIGHTS_NAME).stat().st_size
    print(f"packed {checkpoint.source} -> {out}: {packed_bytes / 1e6:.1f} MB of weights "
          f"({fp32 / packed_bytes:.1f}x smaller than float32's {fp32 / 1e6:.1f} MB)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgebert-tvmc", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_options(p: argparse.ArgumentParser) -> None:
        """What selects the compiled module: `tune` takes the same, so it tunes what `compile` builds."""
        p.add_argument("model", help=f"checkpoint directory or built-in name ({', '.join(BUILTIN_NAMES)})")
        p.add_argument("--target", default="llvm", choices=TARGET_NAMES,
                       help="llvm: this CPU; cuda: NVIDIA GPU; edgebert: the EdgeBERT accelerator model (host: this CPU)")
        p.add_argument("--batch", type=_positive_int, default=1, help="compiled batch size (default 1)")
        p.add_argument("--seq-len", type=_positive_int, default=128,
                       help="the longest input the artifact takes, in tokens (default 128); any shorter input runs "
                            "at the shortest compiled length that holds it (see --lengths)")
        p.add_argument("--lengths", type=_positive_int, nargs="+", metavar="N",
                       help="sequence lengths compiled into the artifact, one set of kernels each, the weights held "
                            "once (default: 16 to 64 in steps of 8, then steps of at most 25%% up to --seq-len; "
                            "the edgebert target: --seq-len only)")
        p.add_argument("--num-cores", type=_positive_int, default=None, help="CPU threads (default: all available)")
        exits = p.add_mutually_exclusive_group()
        exits.add_argument("--exit-threshold", type=_number, nargs="+", metavar="T",
                           help="fold entropy early exit into the graph: one threshold (nats) for every exit, "
                                "or one per exit before the last layer (default: the checkpoint's calibrated "
                                "threshold, if it has one)")
        exits.add_argument("--full-depth", action="store_true",
                           help="no early exit, even where the checkpoint has a calibrated threshold")
        p.add_argument("--span-folding", choices=["keys", "heads", "mask", "off"], default="auto",
                       help="fold attention spans: constant masks (mask), + dead heads removed (heads), + each head "
                            "reads only the keys its span reaches (keys, the default on llvm and cuda); off keeps "
                            "the run-time mask (the default for the edgebert chip, which applies spans itself)")
        p.add_argument("--spans", metavar="FILE",
                       help="JSON spans (layers x heads, z in [0, 1]) to fold instead of the checkpoint's")
        p.add_argument("--sparse", action="store_true",
                       help="FoldSparsity: sparse kernels for pruned weights where this CPU's measured cost model "
                            "says they beat dense, compressed pruned embeddings")
        p.add_argument("--fuse-qkv", action="store_true",
                       help="FuseQKV: one matmul for the query, key and value projections of each layer (llvm, cuda)")
        p.add_argument("--weights", metavar="FORMAT",
                       help="store weights as adaptivfloatN (N = 4..16 bits, e.g. adaptivfloat8), decoded inside "
                            "the matmul and embedding kernels, or float32 (default: adaptivfloat8 for a checkpoint "
                            "packed on that grid (`pack`; not with --sparse or for the edgebert chip), else float32)")
        p.add_argument("--exp-bits", type=_positive_int, default=3,
                       help="AdaptivFloat exponent bits (default 3, the EdgeBERT accelerator's; needs < N-1)")
        p.add_argument("--rda-threshold", type=_number, metavar="T",
                       help="store constant tensors the RDA way (zero / repeated / two-base groups); T in units of "
                            "each tensor's 16-bit grid (max|x|/32767); 0 is lossless")
        p.add_argument("--rda-granularity", default=8, metavar="G",
                       help="RDA group size in values (default 8), or 'layer' for one group per row")
        p.add_argument("--rda-storage", choices=("compile", "load"), default="compile",
                       help="RDA weights decoded at compile time into the library (default), or kept compressed "
                            "in the artifact and decoded when it loads (smaller artifact; weights not pre-packed)")
        p.add_argument("--rda-activations", type=_number, metavar="T",
                       help="edgebert target: store the chip's 16-bit activation buffers the RDA way (T in LSBs of "
                            "1/1024); bytes per value measured on the task's sentences, charged in --report")
        p.add_argument("--accelerator-config",
                       help="edgebert target: accelerator configuration JSON (default: the cited defaults)")

    p = commands.add_parser("compile", help="compile a checkpoint into an artifact directory",
                            description="Compile a checkpoint directory or built-in model into an artifact.")
    model_options(p)
    p.add_argument("-o", "--output", required=True, help="artifact directory to write")
    p.add_argument("--force", action="store_true",
                   help="replace the artifact already at -o (never a directory that is not an artifact)")
    p.add_argument("--tuning-records", metavar="DIR",
                   help="a `tune` work directory: its best schedules replace the defaults of the kernels they cover")
    p.set_defaults(func=cmd_compile)

    p = commands.add_parser("tune", help="auto-tune a model's kernels with MetaSchedule (XGBoost cost model)",
                            description="Tune every kernel of the compiled model (after the EdgeBERT passes) with "
                                        "MetaSchedule; records go to a JSON database in DIR. Rerun to resume.")
    model_options(p)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="work directory (database, logs, report)")
    p.add_argument("--trials", type=_positive_int, required=True, help="measured candidates per kernel")
    p.add_argument("--time-budget", type=_number, metavar="MIN",
                   help="stop starting new rounds after this many minutes (rerun to continue)")
    p.add_argument("--top-kernels", type=_positive_int, metavar="N",
                   help="only the N kernels with the most work per run (calls x FLOPs); the rest keep defaults")
    p.add_argument("--kernels", type=_kernel_pattern, metavar="REGEX",
                   help="only kernels whose name matches (e.g. 'layer_norm|softmax'); the rest keep defaults")
    p.add_argument("--population", type=_positive_int, default=512,
                   help="evolutionary search population per round (default 512; smaller searches faster, worse)")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT", help="measure on the devices of this TVM RPC tracker")
    p.add_argument("--rpc-key", metavar="KEY", help="device key the RPC servers registered with")
    p.set_defaults(func=cmd_tune)

    p = commands.add_parser("run", help="run an artifact on text or an .npz of inputs",
                            description="Run a compiled artifact; prints logits and exit layer per input.")
    p.add_argument("artifact", help="artifact directory written by `compile`")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", nargs="+", help="one or more sentences")
    source.add_argument("--inputs", help=".npz with input_ids (and attention_mask, token_type_ids), shape (n, seq)")
    p.add_argument("--print-time", action="store_true", help="print an execution-time summary")
    p.add_argument("--repeat", type=_positive_int, default=1, help="run the inputs this many times (for timing)")
    p.add_argument("--all-exits", action="store_true", help="also report every exit's logits")
    p.add_argument("--json", help="write logits, exit_layer (and time_ms) to this JSON file")
    p.add_argument("--report", action="store_true",
                   help="edgebert artifacts: cycles, energy by component and memory level, utilisation, per sentence")
    p.add_argument("--report-json", help="write the --report data to this JSON file")
    p.add_argument("--report-plot", help="write the --report plot to this PNG")
    p.add_argument("--accelerator-config", help="cost the run with this accelerator configuration instead of the compiled one")
    p.add_argument("--latency-target-us", type=_number, help="DVFS latency target per sentence (default: full depth at the "
                                                             "nominal point)")
    p.set_defaults(func=cmd_run)

    p = commands.add_parser("train", help="train an EdgeBERT checkpoint (the two-stage recipe)",
                            description="Fine-tune a backbone on a GLUE-format task the EdgeBERT way: distillation, "
                                        "attention spans and pruning, then the off-ramps. Resumes if interrupted.")
    p.add_argument("--backbone", default="minilm-l6", help="checkpoint directory or built-in name (default minilm-l6)")
    p.add_argument("--task", default="sst2", help="sst2 or qnli (default sst2)")
    p.add_argument("--train-file", help="GLUE-format TSV (default: the task's built-in train split)")
    p.add_argument("--teacher", help="fine-tuned checkpoint to distil from (default: plain cross-entropy)")
    p.add_argument("-o", "--output", required=True, help="checkpoint directory to write")
    p.add_argument("--max-examples", type=_positive_int, help="train on a seeded random subset of this size")
    p.add_argument("--max-seq-len", type=_positive_int, default=64)
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--epochs", type=_number, default=1.0, help="stage-1 epochs (default 1)")
    p.add_argument("--offramp-epochs", type=_number, default=1.0, help="stage-2 epochs (default 1)")
    p.add_argument("--offramp-lr", type=_number, default=5e-4, help="stage-2 learning rate (default 5e-4)")
    p.add_argument("--offramp-distill-alpha", type=_number, default=0.9,
                   help="stage 2: weight of distillation from the final exit, the rest CE (default 0.9; 0: CE only)")
    p.add_argument("--lr", type=_number, default=5e-5)
    p.add_argument("--sparsity", type=_number, default=0.5, help="final encoder sparsity (default 0.5)")
    p.add_argument("--pruning", default="movement", help="movement, magnitude or none (default movement)")
    p.add_argument("--pruning-block", metavar="RxC",
                   help="prune whole blocks of RxC weights ([out, in]), e.g. 32x32 or 16x1 (default: unstructured)")
    p.add_argument("--embedding-keep", type=_number, default=0.4,
                   help="fraction of word-embedding weights kept by magnitude pruning (default 0.4)")
    p.add_argument("--no-spans", action="store_true", help="do not learn attention spans")
    p.add_argument("--span-form", default="distance", help="distance (by query-key distance, the default) or key "
                                                           "(EdgeBERT's reference code: from the end of the padding)")
    p.add_argument("--span-max", type=_positive_int, help="S, the largest span (default: --max-seq-len + --span-ramp "
                                                          "for distance spans, 512 for key spans)")
    p.add_argument("--span-ramp", type=_positive_int, default=16, help="R, the span mask's ramp (default 16)")
    p.add_argument("--span-coeff", type=_number, default=5e-6, help="span penalty per unit of S (default 5e-6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=_positive_int, default=200, help="steps between resumable saves")
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("eval", help="accuracy and exit layers per entropy threshold",
                            description="Evaluate a checkpoint or a compiled artifact on a task: accuracy, average "
                                        "exit layer and exit-layer distribution per entropy threshold.")
    p.add_argument("model", help="checkpoint directory, built-in name or artifact directory")
    p.add_argument("--task", default="sst2")
    p.add_argument("--file", help="GLUE-format TSV (default: the task's built-in dev split)")
    p.add_argument("--thresholds", type=_number, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    p.add_argument("--seq-len", type=_positive_int, default=128, help="for PyTorch models (artifacts: compiled length)")
    p.add_argument("--limit", type=_positive_int, help="only the first N examples")
    p.add_argument("--plot", help="write accuracy against average exit layer to this PNG")
    p.add_argument("--json", help="write the table to this JSON file")
    p.set_defaults(func=cmd_eval)

    p = commands.add_parser("demo", help="the main job: the default EdgeBERT checkpoint, compiled, on SST-2 dev",
                            description="Load the default EdgeBERT SST-2 checkpoint (shipped), compile it with early "
                                        "exit, and report accuracy, exit layers and latency against PyTorch.")
    p.add_argument("--workdir", default="edgebert-demo", help="where artifacts and the plot go (default edgebert-demo)")
    p.add_argument("--sentences", type=_positive_int, default=None, help="only the first N dev sentences")
    p.set_defaults(func=cmd_demo)

    p = commands.add_parser("pack", help="write a checkpoint with AdaptivFloat-8 weights plus nonzero masks",
                            description="Pack a checkpoint: every matmul and embedding weight as AdaptivFloat-8 codes "
                                        "of its nonzero values plus a bit mask (the form edgebert-sst2 ships in); it "
                                        "loads as the float model whose weights sit on the AF8 grid. A trained "
                                        "checkpoint's exit threshold and predictor are calibrated again for those "
                                        "weights, on its recipe's held-out sentences.")
    p.add_argument("model", help=f"checkpoint directory or built-in name ({', '.join(BUILTIN_NAMES)})")
    p.add_argument("-o", "--output", required=True, help="checkpoint directory to write")
    p.add_argument("--force", action="store_true", help="replace the checkpoint already at -o")
    p.set_defaults(func=cmd_pack)

    p = commands.add_parser("build-default", help="train a built-in checkpoint's recipe (default edgebert-sst2) into "
                                                  "the cache (once)",
                            description="Train a built-in checkpoint from its recipe: the default EdgeBERT SST-2 "
                                        "checkpoint (about 12 minutes on 2 cores; its packed copy ships, so this "
                                        "only reproduces it) or the dense teacher minilm-sst2-teacher (about 13), into "
                                        "$EDGEBERT_TVM_CACHE or ~/.cache/edgebert-tvm; resumes if interrupted, does "
                                        "nothing if it is already built.")
    p.add_argument("name", nargs="?", default=DEFAULT_BUILTIN, help=f"one of {', '.join(TRAINED_BUILTINS)} "
                                                                     f"(default {DEFAULT_BUILTIN})")
    p.set_defaults(func=cmd_build_default)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], None] = args.func
    try:
        handler(args)
    except EdgeBertError as err:
        print(f"edgebert-tvmc: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("edgebert-tvmc: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # the environment: a full disk, a file that vanished, no permission
        where = f"{err.filename}: " if err.filename else ""
        print(f"edgebert-tvmc: error: {where}{err.strerror or err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:  # noqa: BLE001 (the one place a bug becomes a one-line report)
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        kind = "internal error" if isinstance(err, InternalError) else f"internal error ({type(err).__name__})"
        message = " ".join(str(err).split()) or "no message"
        print(f"edgebert-tvmc: {kind}: {message[:500]} -- a bug in edgebert-tvm {__version__}; rerun with "
              f"{DEBUG_ENV}=1 for the traceback", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
