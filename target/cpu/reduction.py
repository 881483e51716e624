"""A lone reduction kernel (a row sum with nothing fused around it), which dlight's CPU rule skips."""

from __future__ import annotations

import math

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from .common import MIN_PARALLEL_ELEMENTS, const_extent


class RowReduction(CPUScheduleRule):
    """One block, spatial axes then reduction axes: rows in parallel, each row reduced serially."""

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        blocks = normalize_prim_func(sch)
        if blocks is None or len(blocks) != 1 or not blocks[0].is_reduction():
            return None
        kinds = "".join(it.kind for it in blocks[0].iters)
        if kinds != "S" * kinds.count("S") + "R" * kinds.count("R") or "S" not in kinds:
            return None
        loops = sch.get_loops(blocks[0].block_rv)
        spatial = loops[: kinds.count("S")]
        rows = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        extent = const_extent(sch, rows)
        per_row = math.prod(const_extent(sch, r) or 1 for r in loops[len(spatial):])
        if extent is None or extent * per_row >= MIN_PARALLEL_ELEMENTS:
            sch.parallel(rows)
        return sch
