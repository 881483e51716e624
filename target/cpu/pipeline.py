"""The llvm compilation pipeline: TVM's CPU pipeline with default schedules inserted after fusion."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.s_tir import dlight

from ...passes.deduplicate_prim_funcs import DeduplicatePrimFuncs
from .attention import FuseAttention
from .elementwise import Elementwise
from .fast_math import FastMath
from .fold_constant_calls import FoldConstantCalls
from .matmul import Matmul
from .reduction import RowReduction
from .row_normalization import RowNormalization
from .small import SmallKernel

SCHEDULED_ATTR = "tirx.is_scheduled"


def schedule_rules() -> list[dlight.ScheduleRule]:
    """Rules in priority order; the first that applies to a PrimFunc schedules it."""
    return [Matmul(), RowNormalization(), dlight.cpu.Reduction(), RowReduction(), Elementwise(), SmallKernel()]


def cpu_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """cpu_generic's passes with `ApplyDefaultSchedule` between fusion and lowering.

    FuseAttention puts each layer's attention in one kernel (target/cpu/attention.py). FastMath
    swaps tanh, erf, exp and softmax for TVM's vectorizable approximations (libm's are scalar
    calls); the differential tests against PyTorch bound the error. Tuning extracts its tasks from
    the module as it reaches `ApplyDefaultSchedule` and applies its records just before it
    (edgebert_tvm.tuning), so it sees the same PrimFuncs as the default schedules.
    """
    return (
        [FuseAttention(target), FastMath()]
        + cpu_generic.library_dispatch_passes(target)
        + cpu_generic.legalize_passes(target)
        + [
            relax.transform.AttachAttrLayoutFreeBuffers(),
            dlight.ApplyDefaultSchedule(*schedule_rules()),
            relax.transform.SplitLayoutRewritePreproc(),  # weight packing, folded into the constants
            DeduplicatePrimFuncs(),  # the same packing at every length and for every weight of a shape
            FoldConstantCalls(),  # the packing functions built in one library, each run on every weight it packs
            relax.transform.FoldConstant(),
            relax.transform.DeadCodeElimination(),
        ]
        + cpu_generic.dataflow_lower_passes(target)
        + cpu_generic.finalize_passes(target)
    )


def cpu_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """`cpu_passes` as one pass."""
    return tvm.transform.Sequential(cpu_passes(target), name="edgebert.CPUPipeline")


def unscheduled_functions(mod: tvm.IRModule) -> list[str]:
    """Names of PrimFuncs that no rule scheduled (they would run as naive serial loops)."""
    return sorted(
        gv.name_hint
        for gv, func in mod.functions_items()
        if isinstance(func, tvm.tirx.PrimFunc) and not (func.attrs and func.attrs.get(SCHEDULED_ATTR, False))
    )
