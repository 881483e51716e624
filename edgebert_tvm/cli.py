"""`edgebert-tvmc`: compile, run and inspect EdgeBERT models, in the manner of TVM's former tvmc.

Bad input ends with one line on stderr and exit status 2; outputs are written atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .errors import EdgeBertError

if TYPE_CHECKING:
    from .compiler import CompileOptions

EXIT_BAD_INPUT = 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _compile_options(args: argparse.Namespace) -> CompileOptions:
    from .compiler import CompileOptions

    return CompileOptions(target=args.target, batch=args.batch, seq_len=args.seq_len, num_cores=args.num_cores,
                          exit_thresholds=args.exit_threshold)


def cmd_compile(args: argparse.Namespace) -> None:
    from .artifact import write_artifact
    from .compiler import compile_model
    from .fileio import check_output_directory
    from .models.checkpoint import load

    check_output_directory(Path(args.output))
    options = _compile_options(args)
    if args.tuning_records:
        from .tuning.records import read_database

        read_database(Path(args.tuning_records))  # a bad directory fails before the long work
        options.tuning_records = Path(args.tuning_records).resolve()
    checkpoint = load(args.model)
    compiled = compile_model(checkpoint, options)
    write_artifact(checkpoint, compiled, options, Path(args.output))
    total = sum(compiled.compile_seconds.values())
    tuned = f", {len(compiled.tuned)} kernels from tuning records" if args.tuning_records else ""
    print(f"compiled {checkpoint.source} for {options.target} (batch {options.batch}, seq {options.seq_len}{tuned}) "
          f"in {total:.1f} s -> {args.output}")


def cmd_tune(args: argparse.Namespace) -> None:
    from .models.checkpoint import load
    from .tuning.measure import Tracker
    from .tuning.records import open_for_tuning
    from .tuning.report import format_table, report_json
    from .tuning.tasks import model_tasks
    from .tuning.tune import TuneOptions, tune

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
    tasks = tasks[: args.top_kernels]  # heaviest (calls x FLOPs) first
    print(f"{checkpoint.source}: {len(tasks)} kernels to tune for {args.target}, {args.trials} trials each "
          f"-> {work_dir}", flush=True)
    options = TuneOptions(trials=args.trials, work_dir=work_dir, time_budget_min=args.time_budget, tracker=tracker,
                          population=args.population)
    results = tune(tasks, target, options)
    print(format_table(results))
    write_json_atomic(work_dir / "tuning_report.json", report_json(checkpoint.source, args.target, options, results))
    print(f"records: {work_dir} (apply with `edgebert-tvmc compile {args.model} --tuning-records {work_dir} ...`)")


def _read_inputs(args: argparse.Namespace, artifact: Any) -> tuple[dict[str, np.ndarray], list[str] | None]:
    from .inputs import check_inputs, encode, load_npz, load_tokenizer

    model = artifact.metadata["model"]
    if args.text:
        if artifact.tokenizer_path is None:
            raise EdgeBertError(f"{artifact.directory}: artifact has no tokenizer; pass --inputs FILE.npz instead")
        arrays = encode(load_tokenizer(artifact.tokenizer_path, artifact.seq_len), args.text)
    else:
        arrays = load_npz(Path(args.inputs))
    return check_inputs(arrays, artifact.seq_len, model["vocab_size"], model["type_vocab_size"]), args.text


def time_summary(times_ms: Sequence[float]) -> dict[str, float]:
    t = np.asarray(times_ms)
    return {"mean": float(t.mean()), "median": float(np.median(t)), "max": float(t.max()),
            "min": float(t.min()), "std": float(t.std())}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file in the same directory, then rename."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as err:
        raise EdgeBertError(f"{path}: cannot write there ({err.strerror})") from None
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cmd_run(args: argparse.Namespace) -> None:
    from .artifact import Artifact

    if args.json and Path(args.json).is_dir():
        raise EdgeBertError(f"{args.json}: is a directory")
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
    if args.json:
        write_json_atomic(Path(args.json), output)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return value


def cmd_train(args: argparse.Namespace) -> None:
    from .fileio import check_output_directory
    from .training.recipe import RecipeConfig, Trainer

    check_output_directory(Path(args.output))
    config = RecipeConfig(
        backbone=args.backbone, task=args.task, train_file=args.train_file, teacher=args.teacher,
        max_examples=args.max_examples, max_seq_len=args.max_seq_len, batch_size=args.batch_size,
        epochs=args.epochs, lr=args.lr, sparsity=args.sparsity, pruning=args.pruning,
        embedding_keep=args.embedding_keep, spans=not args.no_spans, offramp_epochs=args.offramp_epochs,
        seed=args.seed, save_every=args.save_every,
    )
    checkpoint = Trainer(config, Path(args.output)).run()
    extra = checkpoint.model.edgebert.extra
    print(f"wrote {args.output}: encoder sparsity {extra['encoder_sparsity']:.1%}, "
          f"trained in {extra['train_seconds'] / 60:.1f} min")


def cmd_eval(args: argparse.Namespace) -> None:
    from .data import builtin_split, read_tsv, task_for
    from .evaluate import artifact_all_exits, evaluate_exits, format_table, plot_accuracy_vs_depth, torch_all_exits

    for threshold in args.thresholds:
        if not math.isfinite(threshold) or threshold < 0:
            raise EdgeBertError(f"exit threshold {threshold} must be a finite number >= 0")
    task = task_for(args.task)
    path = Path(args.file) if args.file else builtin_split(task, "dev")
    examples = read_tsv(path, task, limit=args.limit)
    if (Path(args.model) / "metadata.json").is_file():
        from .artifact import Artifact

        logits = artifact_all_exits(Artifact.load(Path(args.model)), examples)
    else:
        from .models.checkpoint import load

        checkpoint = load(args.model)
        if checkpoint.tokenizer_dir is None:
            raise EdgeBertError(f"{args.model}: has no tokenizer; it cannot read a task's text")
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
    from .demo import run_demo

    run_demo(Path(args.workdir), sentences=args.sentences)


def build_parser() -> argparse.ArgumentParser:
    from .models.builtins import BUILTIN_NAMES
    from .target import TARGET_NAMES

    parser = argparse.ArgumentParser(prog="edgebert-tvmc", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_options(p: argparse.ArgumentParser) -> None:
        """What selects the compiled module: `tune` takes the same, so it tunes what `compile` builds."""
        p.add_argument("model", help=f"checkpoint directory or built-in name ({', '.join(BUILTIN_NAMES)})")
        p.add_argument("--target", default="llvm", choices=TARGET_NAMES, help="llvm: this CPU; cuda: NVIDIA GPU")
        p.add_argument("--batch", type=_positive_int, default=1, help="compiled batch size (default 1)")
        p.add_argument("--seq-len", type=_positive_int, default=128, help="compiled sequence length (default 128)")
        p.add_argument("--num-cores", type=_positive_int, default=None, help="CPU threads (default: all available)")
        p.add_argument("--exit-threshold", type=_number, nargs="+", metavar="T",
                       help="fold entropy early exit into the graph: one threshold (nats) for every exit, "
                            "or one per exit before the last layer")

    p = commands.add_parser("compile", help="compile a checkpoint into an artifact directory",
                            description="Compile a checkpoint directory or built-in model into an artifact.")
    model_options(p)
    p.add_argument("-o", "--output", required=True, help="artifact directory to write")
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
    p.add_argument("--lr", type=_number, default=5e-5)
    p.add_argument("--sparsity", type=_number, default=0.5, help="final encoder sparsity (default 0.5)")
    p.add_argument("--pruning", default="movement", help="movement, magnitude or none (default movement)")
    p.add_argument("--embedding-keep", type=_number, default=0.4,
                   help="fraction of word-embedding weights kept by magnitude pruning (default 0.4)")
    p.add_argument("--no-spans", action="store_true", help="do not learn attention spans")
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
                            description="Build (once) the default EdgeBERT SST-2 checkpoint, compile it with early "
                                        "exit, and report accuracy, exit layers and latency against PyTorch.")
    p.add_argument("--workdir", default="edgebert-demo", help="where artifacts and the plot go (default edgebert-demo)")
    p.add_argument("--sentences", type=_positive_int, default=None, help="only the first N dev sentences")
    p.set_defaults(func=cmd_demo)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
