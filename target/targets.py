"""The compilation targets as objects: a TVM `Target` for each name, the options each accepts, what it
runs between the EdgeBERT graph passes and lowering, its lowering, and the device its artifacts run on
(docs/ARCHITECTURE.md, "Adding a target"), the way TVM lays out `relax/backend/<target>/pipeline.py`.

TVM 0.27 rejects string targets with `-mcpu`, so targets are built from dicts (target/cpu/host.py). The
host CPU is detected through LLVM (its real name, e.g. znver5, so the artifact's metadata says what it
was compiled for) unless `--mcpu` names another, and the core count comes from the scheduler affinity
of this process.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import tvm

from ..errors import EdgeBertError
from ..lengths import default_lengths
from ..passes.canonicalize import Canonicalize
from ..passes.fold_constant_transposes import FoldConstantTransposes
from ..passes.lower_adaptivfloat import LowerAdaptivFloat, register_pipeline
from ..tuning.records import apply_records
from .cpu import cpu_passes
from .cpu.host import check_runs_here, host_target
from .gpu import cuda_passes

if TYPE_CHECKING:  # types only: the compiler imports the targets, not the other way round
    from ..compiler import CompileOptions
    from ..models.checkpoint import Checkpoint
    from ..models.modeling import EdgeBertForSequenceClassification

DEFAULT_CUDA_ARCH = "sm_80"


def cuda_target(num_cores: int | None = None, cuda_arch: str = DEFAULT_CUDA_ARCH,
                mcpu: str | None = None) -> tvm.target.Target:
    """An NVIDIA GPU of `cuda_arch`, with this CPU (or `mcpu`) as host."""
    if not cuda_arch.startswith("sm_") or not cuda_arch[3:].isdigit():
        raise EdgeBertError(f"invalid CUDA architecture {cuda_arch!r} (expected e.g. sm_80)")
    # The limits MetaSchedule's GPU rules read (the same for every arch since sm_50 here).
    limits = {"max_threads_per_block": 1024, "max_shared_memory_per_block": 49152, "thread_warp_size": 32,
              "max_num_threads": 1024, "registers_per_block": 65536}
    return tvm.target.Target({"kind": "cuda", "arch": cuda_arch, **limits}, host=host_target(num_cores, mcpu))


def run_device(target_name: str) -> tvm.runtime.Device:
    """The device a model compiled for `target_name` runs on (edgebert: its host CPU)."""
    return tvm.cuda() if target_name == "cuda" else tvm.cpu()


def lowering_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """Custom datatypes lowered, graph clean-ups, then TVM lowering with default schedules (ours on CPUs,
    dlight's on GPUs), by the kind of TVM target (the edgebert chip's host is llvm).

    LowerAdaptivFloat comes first: FoldConstant builds and runs PrimFuncs on constant inputs (the
    position embeddings' lookup, the packing of constant weights), and llvm cannot build custom types;
    FoldConstantTransposes spares it the weights' transposes.
    """
    lowering = cpu_passes(target) if target.kind.name == "llvm" else cuda_passes(target)
    return [LowerAdaptivFloat(), Canonicalize(), FoldConstantTransposes(), *lowering]


def lowering_pipeline(target: tvm.target.Target, tuning_records: Path | None = None) -> tvm.transform.Pass:
    """`lowering_passes`; with tuning records, their schedules replace the defaults of the kernels they cover."""
    passes = lowering_passes(target)
    if tuning_records is not None:
        passes = apply_records(passes, tuning_records)
    return tvm.transform.Sequential(passes)


def build(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.runtime.Executable:
    """A lowered module built: its Relax pipeline has run (`lowering_pipeline`), the TIR pipeline is
    the registered `edgebert` one (docs/ARCHITECTURE.md, "Where Canonicalize and LowerAdaptivFloat run")."""
    return tvm.compile(mod, target, relax_pipeline=None, tir_pipeline=register_pipeline())


class CompileTarget:
    """One target of `edgebert-tvmc compile --target NAME`."""

    name: str

    def tvm_target(self, num_cores: int | None = None, mcpu: str | None = None) -> tvm.target.Target:
        """The TVM target on `num_cores` cores, for the CPU LLVM calls `mcpu` (default: this one)."""
        raise NotImplementedError

    def check(self, options: CompileOptions, model: EdgeBertForSequenceClassification) -> None:
        """Refuse options this target cannot honour for `model` (one-line errors, before any long work)."""
        if options.rda_activations is not None:
            raise EdgeBertError("--rda-activations is for --target edgebert (it changes the chip's SRAM traffic)")
        if options.accelerator_config is not None:
            raise EdgeBertError("--accelerator-config is for --target edgebert")
        if options.sparse and options.mcpu is not None:  # the cost model times its kernels here
            check_runs_here(self.tvm_target(options.num_cores, options.mcpu), "--sparse")

    def default_lengths(self, cap: int) -> tuple[int, ...]:
        """The sequence lengths compiled in when `--lengths` is not given (edgebert_tvm/lengths.py)."""
        return default_lengths(cap)

    def before_lowering(self, mod: tvm.IRModule, checkpoint: Checkpoint,
                        options: CompileOptions) -> tuple[tvm.IRModule, dict | None]:
        """What runs between the graph passes and lowering; returns the module and what it records for
        metadata.json (`accelerator`), if anything."""
        return mod, None

    def lowering(self, target: tvm.target.Target, tuning_records: Path | None = None) -> tvm.transform.Pass:
        return lowering_pipeline(target, tuning_records)


class LlvmTarget(CompileTarget):
    """The CPU this process runs on."""

    name = "llvm"

    def tvm_target(self, num_cores: int | None = None, mcpu: str | None = None) -> tvm.target.Target:
        return host_target(num_cores, mcpu)


class CudaTarget(CompileTarget):
    """An NVIDIA GPU (sm_80 by default), host code for this CPU."""

    name = "cuda"

    def tvm_target(self, num_cores: int | None = None, mcpu: str | None = None) -> tvm.target.Target:
        return cuda_target(num_cores, mcpu=mcpu)

    def check(self, options: CompileOptions, model: EdgeBertForSequenceClassification) -> None:
        super().check(options, model)
        if options.sparse:
            raise EdgeBertError("--sparse is for llvm: the sparse kernels and their cost model are CPU ones")
