"""Injective kernels (reshape, transpose, add, GELU, gather, stack): inline, fuse, vectorize, parallel."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base.common_schedules import try_inline
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from .common import parallelize_and_vectorize, vector_lanes


class Elementwise(CPUScheduleRule):
    """Every block spatial: inline all producers into the outputs, then one flat vector loop each."""

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        blocks = normalize_prim_func(sch)
        if blocks is None or any(not b.is_injective() for b in blocks):
            return None
        for block in try_inline(sch, blocks):
            dtype_bits = sch.get(block.block_rv).writes[0].source.dtype.bits
            parallelize_and_vectorize(sch, block.block_rv, vector_lanes(target, dtype_bits))
        return sch
