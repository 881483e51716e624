"""Checkpoint -> Relax -> EdgeBERT passes -> target lowering -> executable (the middle of the data flow)."""

from __future__ import annotations

import dataclasses
import json
import math
import time

import tvm
from tvm import relax

from .errors import EdgeBertError
from .passes.canonicalize import Canonicalize
from .passes.fold_entropy_exit import FoldEntropyExit, check_thresholds
from .passes.fold_sparsity import SPARSITY_ATTR, FoldSparsity
from .importer import InputSpec, import_model
from .models.checkpoint import Checkpoint
from .target import make_target
from .target.cpu import cpu_pipeline, unscheduled_functions


@dataclasses.dataclass
class CompileOptions:
    """What the user asked for on `edgebert-tvmc compile`."""

    target: str = "llvm"
    batch: int = 1
    seq_len: int = 128
    num_cores: int | None = None
    exit_thresholds: list[float] | None = None
    sparse: bool = False

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
    sparsity: list[dict] | None = None  # FoldSparsity's per-matrix choices


def edgebert_passes(options: CompileOptions) -> list[tvm.transform.Pass]:
    """The EdgeBERT graph-level passes selected by `options`, in pipeline order (DESIGN.md section 2)."""
    passes: list[tvm.transform.Pass] = []
    if options.sparse:
        passes.append(FoldSparsity())
    if options.exit_thresholds is not None:
        passes.append(FoldEntropyExit(options.exit_thresholds))
    return passes


def lowering_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """Graph clean-ups, then TVM lowering with default schedules: ours on CPUs, dlight's on GPUs."""
    lowering = cpu_pipeline(target) if target.kind.name == "llvm" else relax.get_default_pipeline(target)
    return tvm.transform.Sequential([Canonicalize(), lowering])


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


def compile_model(checkpoint: Checkpoint, options: CompileOptions) -> CompiledModel:
    """Import, run the EdgeBERT passes and TVM's lowering for the target, and build."""
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
        sparsity = json.loads(str(mod.attrs[SPARSITY_ATTR])) if mod.attrs and SPARSITY_ATTR in mod.attrs else None
        mod = lowering_pipeline(target)(mod)
    seconds["lower"] = time.perf_counter() - start
    start = time.perf_counter()
    executable = tvm.compile(mod, target, relax_pipeline=None)
    seconds["build"] = time.perf_counter() - start
    return CompiledModel(
        executable, target, [p.info.name for p in passes], constant_bytes(mod), seconds, unscheduled_functions(mod),
        sparsity,
    )
