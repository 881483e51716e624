"""`edgebert-tvmc`: compile, run and inspect EdgeBERT models, in the manner of TVM's former tvmc.

Bad input ends with one line on stderr and exit status 2; a bug of ours with one line and exit
status 3 (the traceback with EDGEBERT_TVM_DEBUG=1); outputs are written atomically.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .errors import EdgeBertError, InternalError
from .models.builtins import BUILTIN_NAMES
from .target import TARGET_NAMES
from .training.config import DEFAULT_BUILTIN, TRAINED_BUILTINS

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


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return value


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
        p.add_argument("--mcpu", metavar="CPU",
                       help="compile for this CPU, by LLVM's name (e.g. znver3, skylake-avx512, x86-64-v3; default: "
                            "this machine's): its vector ISA picks the kernels' register tiles; an artifact refuses "
                            "to load on a CPU that lacks an ISA extension it was compiled for (llvm, cuda's host)")
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

    p = commands.add_parser("demo", help="the main job: the default EdgeBERT checkpoint, compiled, on SST-2 dev",
                            description="Load the default EdgeBERT SST-2 checkpoint (shipped), compile it with early "
                                        "exit, and report accuracy, exit layers and latency against PyTorch.")
    p.add_argument("--workdir", default="edgebert-demo", help="where artifacts and the plot go (default edgebert-demo)")
    p.add_argument("--sentences", type=_positive_int, default=None, help="only the first N dev sentences")

    p = commands.add_parser("pack", help="write a checkpoint with AdaptivFloat-8 weights plus nonzero masks",
                            description="Pack a checkpoint: every matmul and embedding weight as AdaptivFloat-8 codes "
                                        "of its nonzero values plus a bit mask (the form edgebert-sst2 ships in); it "
                                        "loads as the float model whose weights sit on the AF8 grid. A trained "
                                        "checkpoint's exit threshold and predictor are calibrated again for those "
                                        "weights, on its recipe's held-out sentences.")
    p.add_argument("model", help=f"checkpoint directory or built-in name ({', '.join(BUILTIN_NAMES)})")
    p.add_argument("-o", "--output", required=True, help="checkpoint directory to write")
    p.add_argument("--force", action="store_true", help="replace the checkpoint already at -o")

    p = commands.add_parser("build-default", help="train a built-in checkpoint's recipe (default edgebert-sst2) into "
                                                  "the cache (once)",
                            description="Train a built-in checkpoint from its recipe: the default EdgeBERT SST-2 "
                                        "checkpoint (about 12 minutes on 2 cores; its packed copy ships, so this "
                                        "only reproduces it) or the dense teacher minilm-sst2-teacher (about 13), into "
                                        "$EDGEBERT_TVM_CACHE or ~/.cache/edgebert-tvm; resumes if interrupted, does "
                                        "nothing if it is already built.")
    p.add_argument("name", nargs="?", default=DEFAULT_BUILTIN, help=f"one of {', '.join(TRAINED_BUILTINS)} "
                                                                     f"(default {DEFAULT_BUILTIN})")
    return parser


def _command(name: str) -> Callable[[argparse.Namespace], None]:
    """`execute` of the command's module, imported now and only it (commands/__init__.py says why)."""
    return importlib.import_module(f"{__package__}.commands.{name.replace('-', '_')}").execute


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _command(args.command)(args)
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
