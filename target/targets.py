"""Resolve a target name from the command line into a TVM `Target`, and each target's lowering.

TVM 0.27 rejects string targets with `-mcpu`, so targets are built from dicts. The host CPU is
detected through LLVM (its real name, e.g. znver5, so the artifact's metadata says what it was
compiled for) and the core count comes from the scheduler affinity of this process.
"""

from __future__ import annotations

import os
from pathlib import Path

import tvm
from tvm.target import codegen

from ..errors import EdgeBertError
from ..passes.canonicalize import Canonicalize
from ..passes.lower_adaptivfloat import LowerAdaptivFloat
from ..tuning.records import apply_records
from .cpu import cpu_passes
from .gpu import cuda_passes

TARGET_NAMES = ("llvm", "cuda", "edgebert")
DEFAULT_CUDA_ARCH = "sm_80"


def host_target(num_cores: int | None = None) -> tvm.target.Target:
    """The CPU this process runs on, with its vector features and core count."""
    cores = num_cores or len(os.sched_getaffinity(0))
    return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": cores})


def run_device(target_name: str) -> tvm.runtime.Device:
    """The device a model compiled for `target_name` runs on (edgebert: its host CPU)."""
    return tvm.cuda() if target_name == "cuda" else tvm.cpu()


def make_target(name: str, num_cores: int | None = None, cuda_arch: str = DEFAULT_CUDA_ARCH) -> tvm.target.Target:
    """`llvm` for the host CPU (also the host of the `edgebert` accelerator); `cuda` for an NVIDIA GPU of
    `cuda_arch` with the host CPU as host."""
    if name in ("llvm", "edgebert"):  # edgebert: the accelerator's regions are offloaded, the host runs the rest
        return host_target(num_cores)
    if name == "cuda":
        if not cuda_arch.startswith("sm_") or not cuda_arch[3:].isdigit():
            raise EdgeBertError(f"invalid CUDA architecture {cuda_arch!r} (expected e.g. sm_80)")
        # The limits MetaSchedule's GPU rules read (the same for every arch since sm_50 here).
        limits = {"max_threads_per_block": 1024, "max_shared_memory_per_block": 49152, "thread_warp_size": 32,
                  "max_num_threads": 1024, "registers_per_block": 65536}
        return tvm.target.Target({"kind": "cuda", "arch": cuda_arch, **limits}, host=host_target(num_cores))
    raise EdgeBertError(f"unknown target {name!r} (choose from: {', '.join(TARGET_NAMES)})")


def lowering_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """Custom datatypes lowered, graph clean-ups, then TVM lowering with default schedules (ours on CPUs,
    dlight's on GPUs).

    LowerAdaptivFloat comes first: FoldConstant builds and runs PrimFuncs on constant inputs (the
    position embeddings' lookup, the packing of constant weights), and llvm cannot build custom types.
    """
    lowering = cpu_passes(target) if target.kind.name == "llvm" else cuda_passes(target)
    return [LowerAdaptivFloat(), Canonicalize(), *lowering]


def lowering_pipeline(target: tvm.target.Target, tuning_records: Path | None = None) -> tvm.transform.Pass:
    """`lowering_passes`; with tuning records, their schedules replace the defaults of the kernels they cover."""
    passes = lowering_passes(target)
    if tuning_records is not None:
        passes = apply_records(passes, tuning_records)
    return tvm.transform.Sequential(passes)
