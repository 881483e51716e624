"""`edgebert-tvmc`: compile, run and inspect EdgeBERT models, in the manner of TVM's former tvmc.

Bad input ends with one line on stderr and exit status 2; outputs are written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import EdgeBertError

EXIT_BAD_INPUT = 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def cmd_compile(args: argparse.Namespace) -> None:
    from .artifact import write_artifact
    from .compiler import CompileOptions, compile_model
    from .fileio import check_output_directory
    from .models.checkpoint import load

    check_output_directory(Path(args.output))
    options = CompileOptions(target=args.target, batch=args.batch, seq_len=args.seq_len, num_cores=args.num_cores)
    checkpoint = load(args.model)
    compiled = compile_model(checkpoint, options)
    write_artifact(checkpoint, compiled, options, Path(args.output))
    total = sum(compiled.compile_seconds.values())
    print(f"compiled {checkpoint.source} for {options.target} (batch {options.batch}, seq {options.seq_len}) "
          f"in {total:.1f} s -> {args.output}")


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


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(Path(args.workdir), sentences=args.sentences)


def build_parser() -> argparse.ArgumentParser:
    from .models.builtins import BUILTIN_NAMES
    from .target import TARGET_NAMES

    parser = argparse.ArgumentParser(prog="edgebert-tvmc", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("compile", help="compile a checkpoint into an artifact directory",
                            description="Compile a checkpoint directory or built-in model into an artifact.")
    p.add_argument("model", help=f"checkpoint directory or built-in name ({', '.join(BUILTIN_NAMES)})")
    p.add_argument("--target", default="llvm", choices=TARGET_NAMES, help="llvm: this CPU; cuda: NVIDIA GPU")
    p.add_argument("-o", "--output", required=True, help="artifact directory to write")
    p.add_argument("--batch", type=_positive_int, default=1, help="compiled batch size (default 1)")
    p.add_argument("--seq-len", type=_positive_int, default=128, help="compiled sequence length (default 128)")
    p.add_argument("--num-cores", type=_positive_int, default=None, help="CPU threads (default: all available)")
    p.set_defaults(func=cmd_compile)

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

    p = commands.add_parser("demo", help="the main job: compile the built-in default and check it against PyTorch",
                            description="Compile the built-in default model, run SST-2 dev sentences through it "
                                        "and through PyTorch, and report agreement and latency.")
    p.add_argument("--workdir", default="edgebert-demo", help="where the artifact is written (default edgebert-demo)")
    p.add_argument("--sentences", type=_positive_int, default=64, help="SST-2 dev sentences to run (default 64)")
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
