"""Checkpoint -> Relax -> EdgeBERT passes -> target lowering -> executable (the middle of the data flow)."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import tvm
from tvm import relax

from . import lengths as seq_lengths
from . import rda
from .rda import weight_store
from .adaptivfloat.quantizer import check_format
from .contract import pass_reports
from .errors import EdgeBertError, InternalError
from .importer import import_lengths
from .models.checkpoint import Checkpoint
from .models.config import EdgeBertConfig
from .models.modeling import EdgeBertForSequenceClassification
from .passes.approximate_redundant_data import ApproximateRedundantData
from .passes.fold_attention_span import LEVELS as SPAN_LEVELS
from .passes.fold_attention_span import FoldAttentionSpan, check_spans
from .passes.fold_entropy_exit import FoldEntropyExit, check_thresholds
from .passes.fuse_qkv import FuseQKV
from .passes.narrow_final_layer import NarrowFinalLayer
from .passes.quantize_weights_adaptivfloat import QuantizeWeightsAdaptivFloat
from .target.registry import compile_target
from .target.targets import build, run_device
from .target.cpu import unscheduled_functions
from .target.cpu.host import check_mcpu, size_thread_pool
from .target.cpu.fold_sparsity import FoldSparsity
from .tuning.records import tuned_functions



RDA_STORAGE = ("compile", "load")
FROM_CHECKPOINT = "checkpoint"  # an option's value: what the checkpoint was calibrated and packed for
FLOAT32 = "float32"  # --weights float32: weights stay float32 even where the checkpoint packed them


@dataclasses.dataclass(frozen=True)
class CompileOptions:
    """What the user asked for on `edgebert-tvmc compile`; `resolved(model)` checks it against the model
    once and returns the normalised copy every stage reads (never changed after that)."""

    target: str = "llvm"
    batch: int = 1
    seq_len: int = 128  # the longest input the artifact takes
    lengths: tuple[int, ...] | None = None  # compiled lengths up to seq_len (None: the target's default, `lengths`)
    num_cores: int | None = None
    mcpu: str | None = None  # the CPU to compile for, by LLVM's name (None: this machine's)
    exit_thresholds: list[float] | str | None = None  # FROM_CHECKPOINT: its calibrated thresholds
    span_folding: str | None = "auto"  # a level, None (keep the run-time mask) or auto (see span_level)
    attention_spans: list[list[float]] | None = None  # overrides the checkpoint's spans
    weight_format: str | None = None  # "adaptivfloatN": weights stored as N-bit AdaptivFloat; FROM_CHECKPOINT
    exp_bits: int = 3
    rda_threshold: float | None = None
    rda_granularity: rda.Granularity = rda.DEFAULT_GRANULARITY
    rda_storage: str = "compile"  # RDA weights decoded at compile time, or kept compressed and decoded at "load"
    rda_activations: float | None = None  # edgebert target: RDA threshold of the activation buffers
    accelerator_config: str | None = None  # edgebert target: configuration file (default: the cited defaults)
    tuning_records: Path | None = None  # an `edgebert-tvmc tune` work directory
    sparse: bool = False
    fuse_qkv: bool = False  # one GEMM for Q, K and V (llvm, cuda); measured 1.00x on 2 threads, so opt-in
    narrow_final_layer: bool = True  # the last layer computes only the rows its exit reads (exact)
    from_checkpoint: tuple[str, ...] = ()  # set by `resolved`: the options FROM_CHECKPOINT filled in

    @property
    def weight_bits(self) -> int | None:
        """N of an `adaptivfloatN` weight format (None for fp32 weights)."""
        if self.weight_format is None:
            return None
        prefix = "adaptivfloat"
        digits = self.weight_format[len(prefix):] if self.weight_format.startswith(prefix) else ""
        if not digits.isdigit():
            raise EdgeBertError(f"--weights must be adaptivfloatN (N = 4..16 bits), got {self.weight_format!r}")
        return int(digits)

    def resolved(self, model: EdgeBertForSequenceClassification) -> CompileOptions:
        """These options checked against `model` (one-line errors naming the option), with what the
        checkpoint was made for filled in (`from_checkpoint`), thresholds expanded to one per exit and
        RDA settings normalised. Pure and idempotent."""
        if FROM_CHECKPOINT in (self.exit_thresholds, self.weight_format) or self.weight_format == FLOAT32:
            return self._filled(model.edgebert).resolved(model)
        max_positions = model.config.max_position_embeddings
        if self.batch < 1:
            raise EdgeBertError(f"--batch must be >= 1, got {self.batch}")
        if not 1 <= self.seq_len <= max_positions:
            raise EdgeBertError(f"--seq-len must be in [1, {max_positions}] for this model, got {self.seq_len}")
        if self.num_cores is not None and self.num_cores < 1:
            raise EdgeBertError(f"--num-cores must be >= 1, got {self.num_cores}")
        if self.mcpu is not None:
            check_mcpu(self.mcpu)
        if self.span_folding not in (None, "auto", *SPAN_LEVELS):
            raise EdgeBertError(f"--span-folding must be one of {', '.join(SPAN_LEVELS)} or off, "
                                f"got {self.span_folding!r}")
        if self.weight_bits is not None:
            check_format(self.weight_bits, self.exp_bits)
            if self.sparse:  # never half-applied: the sparse kernels read float32 values
                raise EdgeBertError("--sparse with --weights is not supported yet: the sparse kernels read float32 "
                                    "values, so sparse matmuls would stay unquantized; choose one")
        if self.rda_storage not in RDA_STORAGE:
            raise EdgeBertError(f"--rda-storage must be one of {', '.join(RDA_STORAGE)}, got {self.rda_storage!r}")
        chosen = compile_target(self.target)
        chosen.check(self, model)
        lengths = (seq_lengths.check_lengths(self.lengths, self.seq_len) if self.lengths is not None
                   else chosen.default_lengths(self.seq_len))
        spans = folded_spans(self, model.edgebert)
        if spans is not None:  # fail before the import, not in the middle of the passes
            check_spans(spans, model.arch.num_distinct_layers(model.config), model.config.num_attention_heads)
        return dataclasses.replace(
            self,
            lengths=lengths,
            exit_thresholds=None if self.exit_thresholds is None else check_thresholds(self.exit_thresholds,
                                                                                       model.num_layers),
            rda_threshold=None if self.rda_threshold is None else rda.check_threshold(self.rda_threshold),
            rda_activations=None if self.rda_activations is None else rda.check_threshold(self.rda_activations),
            rda_granularity=rda.check_granularity(self.rda_granularity))

    def _filled(self, edgebert: EdgeBertConfig) -> CompileOptions:
        """The checkpoint's calibrated exit thresholds, and AdaptivFloat storage for weights it packed
        on that grid (models/packed.py: lossless there; not for the chip, which stores its own AF8, nor
        with --sparse, whose kernels read float32)."""
        filled = []
        exits = self.exit_thresholds
        if exits == FROM_CHECKPOINT:
            exits = edgebert.exit_thresholds
            if exits:
                filled.append("exit_thresholds")
        weights, exp_bits = (None if self.weight_format == FLOAT32 else self.weight_format), self.exp_bits
        if weights == FROM_CHECKPOINT:
            packed = edgebert.extra.get("packed")
            weights = None
            if isinstance(packed, dict) and self.target != "edgebert" and not self.sparse:
                weights, exp_bits = packed["weight_format"], packed["exp_bits"]
                filled.append("weight_format")
        return dataclasses.replace(self, exit_thresholds=exits, weight_format=weights, exp_bits=exp_bits,
                                   from_checkpoint=tuple(filled))

    @property
    def span_level(self) -> str | None:
        """The FoldAttentionSpan level: `auto` is `keys` on llvm and cuda, and off for the edgebert chip,
        whose softmax unit multiplies by the span vector (its patterns match the imported attention)."""
        if self.span_folding == "auto":
            return None if self.target == "edgebert" else "keys"
        return self.span_folding


@dataclasses.dataclass
class CompiledModel:
    """An executable with the facts about it that go into the artifact's metadata."""

    executable: tvm.runtime.Executable
    target: tvm.target.Target
    options: CompileOptions  # resolved against the model
    passes: list[str]
    constant_bytes: int
    compile_seconds: dict[str, float]
    unscheduled: list[str]
    reports: dict[str, Any]  # what the EdgeBERT passes did, for the artifact's metadata
    accelerator: dict | None = None  # edgebert target: the chip's workload per block and its configuration
    tuned: list[str] = dataclasses.field(default_factory=list)  # kernels scheduled from tuning records
    stored_weights: weight_store.Store | None = None  # compressed weights, decoded when the artifact loads

    @property
    def exit_calibration(self) -> dict | None:
        """The edgebert chip's own exit calibration, where its compile made one."""
        return (self.accelerator or {}).get("exit_calibration")


def folded_spans(options: CompileOptions, edgebert: EdgeBertConfig) -> list[list[float]] | None:
    """The spans FoldAttentionSpan folds: the override, else the checkpoint's; None if not folding."""
    spans = options.attention_spans if options.attention_spans is not None else edgebert.attention_spans
    return spans if options.span_level is not None else None


# The graph passes in the only order they may run; each pass's docstring says why it sits where it
# does (docs/ARCHITECTURE.md, "Pipeline order"): span folding reads the importer's per-projection
# attention, FuseQKV fuses those projections, sparsity needs float32 weights, RDA leaves AdaptivFloat
# codes alone, and FoldEntropyExit rebuilds `main`, so it comes last.
PIPELINE_ORDER = ("edgebert.FoldAttentionSpan", "edgebert.FuseQKV", "edgebert.NarrowFinalLayer", "edgebert.FoldSparsity",
                  "edgebert.QuantizeWeightsAdaptivFloat", "edgebert.ApproximateRedundantData", "edgebert.FoldEntropyExit")


def check_pipeline(passes: list[tvm.transform.Pass]) -> None:
    """A pipeline out of PIPELINE_ORDER, or with a pass it does not know, is a bug of ours."""
    names = [p.info.name for p in passes]
    if unknown := [n for n in names if n not in PIPELINE_ORDER]:
        raise InternalError(f"graph pipeline: {', '.join(unknown)} has no place in PIPELINE_ORDER")
    for first, second in zip(names, names[1:]):
        if PIPELINE_ORDER.index(first) >= PIPELINE_ORDER.index(second):
            raise InternalError(f"graph pipeline: {second} must run before {first}, not after it")


def edgebert_passes(options: CompileOptions, edgebert: EdgeBertConfig) -> list[tvm.transform.Pass]:
    """The EdgeBERT graph-level passes selected by `options` for a model with `edgebert` settings,
    in pipeline order (docs/ARCHITECTURE.md, "Pipeline order")."""
    passes: list[tvm.transform.Pass] = []
    spans = folded_spans(options, edgebert)
    if spans is not None:
        passes.append(FoldAttentionSpan(spans, edgebert.span_max, edgebert.span_ramp, edgebert.seq_len,
                                        options.span_level, edgebert.span_form))
    if options.fuse_qkv:
        passes.append(FuseQKV())
    if options.narrow_final_layer:
        passes.append(NarrowFinalLayer())
    if options.sparse:
        passes.append(FoldSparsity())
    if options.weight_bits is not None:
        passes.append(QuantizeWeightsAdaptivFloat(options.weight_bits, options.exp_bits))
    if options.rda_threshold is not None:
        passes.append(ApproximateRedundantData(options.rda_threshold, options.rda_granularity,
                                               at_load=options.rda_storage == "load"))
    if options.exit_thresholds is not None:
        passes.append(FoldEntropyExit(options.exit_thresholds))
    check_pipeline(passes)
    return passes


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


def graph_module(
    checkpoint: Checkpoint, options: CompileOptions
) -> tuple[tvm.IRModule, tvm.target.Target, list[str], dict[str, float], dict[str, Any], weight_store.Store | None]:
    """Import and run the EdgeBERT passes: the module every target lowers (and tuning extracts its tasks
    from), its target, the passes run, the seconds taken, the passes' reports for the artifact's
    metadata, and the weights the module reads from the tensor cache (compressed; `weight_store`)."""
    return _graph_module(checkpoint, options.resolved(checkpoint.model))


def _graph_module(
    checkpoint: Checkpoint, options: CompileOptions
) -> tuple[tvm.IRModule, tvm.target.Target, list[str], dict[str, float], dict[str, Any], weight_store.Store | None]:
    """`graph_module` with options already resolved against the checkpoint's model: the model imported
    and passed through the EdgeBERT passes at each compiled length, merged into one module
    (edgebert_tvm/lengths.py); the reports are those of the longest length."""
    size_thread_pool()  # before any kernel runs here (FoldConstant, the sparsity cost model, tuning's timing)
    model = checkpoint.model
    target = compile_target(options.target).tvm_target(options.num_cores, options.mcpu)
    passes = edgebert_passes(options, model.edgebert)
    start = time.perf_counter()
    imported = import_lengths(model, options.batch, options.lengths)
    seconds = {"import": time.perf_counter() - start, "passes": 0.0}
    modules, stores = [], []
    for length, mod in zip(options.lengths, imported):
        start = time.perf_counter()
        with target:
            mod = tvm.transform.Sequential(passes)(mod)
        seconds["passes"] += time.perf_counter() - start
        mod, stored = weight_store.detach(mod)
        stores += [stored] if stored is not None else []
        modules.append(seq_lengths.with_suffix(mod, seq_lengths.suffix(length, options.seq_len)))
    mod = seq_lengths.merged(modules)
    return mod, target, [p.info.name for p in passes], seconds, pass_reports(mod), weight_store.merged(stores)


def compile_model(checkpoint: Checkpoint, options: CompileOptions) -> CompiledModel:
    """Import, run the EdgeBERT passes and the target's lowering (applying tuning records if given;
    for the edgebert target, partitioning and codegen first), and build."""
    options = options.resolved(checkpoint.model)
    mod, target, passes, seconds, reports, stored = _graph_module(checkpoint, options)
    start = time.perf_counter()
    chosen = compile_target(options.target)
    with target:
        mod, accelerator = chosen.before_lowering(mod, checkpoint, options)
        chip_exits = (accelerator or {}).get("exit_calibration")
        if chip_exits is not None and chip_exits["threshold"] is not None:  # the chip's own threshold, compiled in
            options = dataclasses.replace(options, exit_thresholds=[chip_exits["threshold"]] * len(options.exit_thresholds))
        if accelerator is not None:
            seconds["partition_codegen"] = time.perf_counter() - start
            start = time.perf_counter()
        mod = chosen.lowering(target, options.tuning_records)(mod)
    seconds["lower"] = time.perf_counter() - start
    start = time.perf_counter()
    executable = build(mod, target)
    seconds["build"] = time.perf_counter() - start
    tuned = tuned_functions(mod) if options.tuning_records is not None else []
    device = run_device(target.kind.name)
    if stored is not None and device.exist:  # so this process can run the executable as the artifact will after loading
        weight_store.fill_cache(stored, device)
    return CompiledModel(executable, target, options, passes, constant_bytes(mod), seconds, unscheduled_functions(mod),
                         reports, accelerator, tuned, stored)
