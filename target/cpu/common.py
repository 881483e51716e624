"""Small helpers shared by the CPU schedule rules."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target
from tvm.target.codegen import llvm_get_vector_width

# Below this many output elements a parallel loop costs more in thread wake-ups than it saves.
MIN_PARALLEL_ELEMENTS = 4096


def vector_lanes(target: Target, dtype_bits: int = 32) -> int:
    """Lanes of the target's widest vector register for this element width (AVX-512 -> 16 floats)."""
    bits = llvm_get_vector_width(target)
    return max((bits if bits > 0 else 128) // dtype_bits, 1)


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
