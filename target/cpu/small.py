"""Tiny kernels (an exit's entropy, a classifier's two logits): serial loops are the right schedule."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from .common import MIN_PARALLEL_ELEMENTS


class SmallKernel(CPUScheduleRule):
    """Every block iterates over fewer points than a thread wake-up is worth: keep it serial."""

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        blocks = normalize_prim_func(sch)
        if blocks is None:
            return None
        for block in blocks:
            points = 1
            for it in block.iters:
                if not isinstance(it.dom, int):
                    return None
                points *= it.dom
            if points >= MIN_PARALLEL_ELEMENTS:
                return None
        return sch
