"""Small helpers shared by the CPU schedule rules."""

from __future__ import annotations

import functools

from tvm import relax, s_tir, tirx
from tvm.target import Target
from tvm.target.codegen import llvm_get_cpu_features

# The attributes of a hand-written kernel whose loops are already scheduled (the default rules skip it).
SCHEDULED = {"tirx.is_scheduled": True, "tirx.noalias": True}

# Below this many output elements a parallel loop costs more in thread wake-ups than it saves.
MIN_PARALLEL_ELEMENTS = 4096


@functools.cache
def _vector_bits(target_text: str) -> int:
    features = llvm_get_cpu_features(Target(target_text))
    if "avx512f" in features:
        return 512
    return 256 if "avx" in features else 128  # SSE, NEON


def vector_bits(target: Target) -> int:
    """The width of the target's widest vector register, from the CPU features LLVM gives its `mcpu`
    and `mattr`. Not TVM's `llvm_get_vector_width`: on an AVX-512 host it answered 512 for every x86
    `mcpu` (znver3 and x86-64-v2 included), so kernels compiled there for an AVX2 CPU got AVX-512's
    register tiles, twice the accumulators its 16 vector registers hold (1.65x slower end to end)."""
    return _vector_bits(str(target))


def vector_lanes(target: Target, dtype_bits: int = 32) -> int:
    """Lanes of the target's widest vector register for this element width (AVX-512 -> 16 floats)."""
    return max(vector_bits(target) // dtype_bits, 1)


def static_shape(expr: relax.Expr) -> list[int] | None:
    """The shape of a Relax expression if every dimension is a constant."""
    values = getattr(getattr(expr.ty, "shape", None), "values", None)
    if values is None or not all(isinstance(d, tirx.IntImm) for d in values):
        return None
    return [int(d) for d in values]


def dividing_lanes(extent: int, lanes: int) -> int:
    """The widest of a full, half or quarter vector that divides `extent` (1 if none does)."""
    return next((v for v in (lanes, lanes // 2, lanes // 4) if v >= 1 and extent % v == 0), 1)


def const_extent(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def parallelize_and_vectorize(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> None:
    """Fuse a spatial block's loops, vectorize the innermost `lanes` and run the rest in parallel."""
    loops = sch.get_loops(block)
    if not loops:
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    extent = const_extent(sch, fused)
    if extent is not None and extent < 2:
        return
    if extent is not None:
        lanes = dividing_lanes(extent, lanes)
    if lanes > 1:
        fused, vector = sch.split(fused, factors=[None, lanes])
        try:
            sch.vectorize(vector)
        except s_tir.ScheduleError:
            pass  # e.g. a data-dependent gather: the loop stays scalar, still correct
    if extent is None or extent >= MIN_PARALLEL_ELEMENTS:
        sch.parallel(fused)


def specialized(template: tirx.PrimFunc, **sizes: int | tirx.PrimExpr) -> tirx.PrimFunc:
    """A kernel template (TVMScript parsed once, its sizes as parameters) with its size parameters
    bound by name to `sizes`: only its buffers remain."""
    params = {str(param.name): param for param in template.params}
    return template.specialize({params[name]: size for name, size in sizes.items()})
