"""Checkpoint -> Relax -> EdgeBERT passes -> target lowering -> executable (the middle of the data flow)."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import tvm
from tvm import relax

from .errors import EdgeBertError
from .passes.canonicalize import Canonicalize
from .passes.fold_entropy_exit import FoldEntropyExit, check_thresholds
from .importer import InputSpec, import_model
from .models.checkpoint import Checkpoint
from .target import make_target
from .target.cpu import cpu_passes, unscheduled_functions
from .target.gpu import cuda_passes


@dataclasses.dataclass
class CompileOptions:
    """What the user asked for on `edgebert-tvmc compile`."""

    target: str = "llvm"
    batch: int = 1
    seq_len: int = 128
    num_cores: int | None = None
    exit_thresholds: list[float] | None = None
    tuning_records: Path | None = None  # an `edgebert-tvmc tune` work directory

    def validate(self, max_positions: int) -> None:
        if self.batch < 1:
            raise EdgeBertError(f"--batch must be >= 1, got {self.batch}")
        if not 1 <= self.seq_len <= max_positions:
            raise EdgeBertError(f"--seq-len must be in [1, {max_positions}] for this model, got {self.seq_len}")
        if self.num_cores is not None and self.num_cores < 1:
            raise EdgeBertError(f"--num-cores must be >= 1, got {self.num_cores}")


@dataclasses.dataclass
class CompiledModel:
    """An executable with the facts about it that go into the artifact's metadata."""

    executable: tvm.runtime.Executable
    target: tvm.target.Target
    passes: list[str]
    constant_bytes: int
    compile_seconds: dict[str, float]
    unscheduled: list[str]
    tuned: list[str] = dataclasses.field(default_factory=list)  # kernels scheduled from tuning records


def edgebert_passes(options: CompileOptions) -> list[tvm.transform.Pass]:
    """The EdgeBERT graph-level passes selected by `options`, in pipeline order (DESIGN.md section 2)."""
    passes: list[tvm.transform.Pass] = []
    if options.exit_thresholds is not None:
        passes.append(FoldEntropyExit(options.exit_thresholds))
    return passes


def lowering_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """Graph clean-ups, then TVM lowering with default schedules: ours on CPUs, dlight's on GPUs."""
    return [Canonicalize(), *(cpu_passes(target) if target.kind.name == "llvm" else cuda_passes(target))]


def lowering_pipeline(target: tvm.target.Target, tuning_records: Path | None = None) -> tvm.transform.Pass:
    """`lowering_passes`; with tuning records, their schedules replace the defaults of the kernels they cover."""
    passes = lowering_passes(target)
    if tuning_records is not None:
        from .tuning.records import apply_records

        passes = apply_records(passes, tuning_records)
    return tvm.transform.Sequential(passes)


def constant_bytes(mod: tvm.IRModule) -> int:
    """Bytes of the distinct constant tensors left in the Relax functions of `mod`."""
    seen: dict[tvm.runtime.Tensor, int] = {}  # keyed by the tensor object: a shared weight counts once

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, tvm.ir.expr.Constant) and isinstance(expr.value, tvm.runtime.Tensor):
            tensor = expr.value
            seen[tensor] = math.prod(tensor.shape) * tvm.runtime.DataType(tensor.dtype).itemsize

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return sum(seen.values())


def graph_module(checkpoint: Checkpoint, options: CompileOptions) -> tuple[tvm.IRModule, tvm.target.Target, list[str], dict[str, float]]:
    """Check the options, import, and run the EdgeBERT passes: the module every target lowers
    (and tuning extracts its tasks from), its target, the passes run and the seconds taken."""
    options.validate(checkpoint.model.config.max_position_embeddings)
    if options.exit_thresholds is not None:
        options.exit_thresholds = check_thresholds(options.exit_thresholds, checkpoint.model.num_layers)
    target = make_target(options.target, options.num_cores)
    seconds = {}
    start = time.perf_counter()
    mod = import_model(checkpoint.model, InputSpec(options.batch, options.seq_len))
    seconds["import"] = time.perf_counter() - start
    passes = edgebert_passes(options)
    start = time.perf_counter()
    with target:
        mod = tvm.transform.Sequential(passes)(mod)
    seconds["passes"] = time.perf_counter() - start
    return mod, target, [p.info.name for p in passes], seconds


def compile_model(checkpoint: Checkpoint, options: CompileOptions) -> CompiledModel:
    """Import, run the EdgeBERT passes and TVM's lowering for the target (applying tuning records
    if given), and build."""
    mod, target, passes, seconds = graph_module(checkpoint, options)
    start = time.perf_counter()
    with target:
        mod = lowering_pipeline(target, options.tuning_records)(mod)
    seconds["lower"] = time.perf_counter() - start
    start = time.perf_counter()
    executable = tvm.compile(mod, target, relax_pipeline=None)
    seconds["build"] = time.perf_counter() - start
    tuned = []
    if options.tuning_records is not None:
        from .tuning.records import tuned_functions

        tuned = tuned_functions(mod)
    return CompiledModel(executable, target, passes, constant_bytes(mod), seconds, unscheduled_functions(mod), tuned)
