"""Softmax, LayerNorm and their fused neighbours: row reductions and elementwise blocks over the same
rows, with each row's reductions vectorized.

dlight's CPU rule (`dlight.cpu.Reduction`) puts every block of a row under one parallel row loop
and reduces each row serially: one scalar add (or max) per element, a loop-carried dependency as
long as the row. Here each reduction is split into `lanes` partial results first (`rfactor`), so
the row is read as vectors into a vector of partial sums and only the last `lanes` values are
reduced serially; the elementwise blocks are vectorized as in dlight's rule.
"""

from __future__ import annotations

import math

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo, get_root_block, normalize_prim_func
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from .common import MIN_PARALLEL_ELEMENTS, const_extent, dividing_lanes, vector_lanes


def _leading_spatial(block: SBlockInfo) -> int:
    kinds = block.dom_kind()
    return len(kinds) - len(kinds.lstrip("S"))


def _row_count(block: SBlockInfo) -> int | None:
    """Points of the block's spatial axes (its rows, for a reduction); None if symbolic."""
    extents = [it.dom for it in block.iters if it.kind == "S"]
    return math.prod(extents) if all(isinstance(e, int) for e in extents) else None


def _partial_lanes(extent: int | None, lanes: int) -> int | None:
    """Partial results per row: a vector that divides the row at least twice, else none (serial)."""
    if extent is None:
        return None
    return next((v for v in (lanes, lanes // 2, lanes // 4) if v >= 4 and extent % v == 0 and extent >= 2 * v), None)


def _vectorize_inner(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> None:
    loop = sch.get_loops(block)[-1]
    extent = const_extent(sch, loop)
    if extent is None or extent < 2:
        return
    width = dividing_lanes(extent, lanes)
    if width == 1:
        return
    if extent > width:
        loop = sch.split(loop, factors=[None, width])[1]
    sch.vectorize(loop)


class RowNormalization(CPUScheduleRule):
    """Blocks that share leading spatial (row) axes, reductions among them, an elementwise block last:
    rows in parallel, every block of a row computed under its row, reductions in vector partials.
    A single row (reductions with no spatial points but one) is scheduled at the root, serially."""

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        blocks = normalize_prim_func(sch)
        if (blocks is None or len(blocks) < 2 or not blocks[-1].is_injective()
                or all(b.is_injective() for b in blocks)):
            return None
        # One row (the narrowed last layer's [CLS] row): no row loop. dlight's rule parallelized the
        # row's elements instead and recomputed both of LayerNorm's sums for each (148x slower).
        one_row = all(_row_count(b) == 1 for b in blocks if not b.is_injective())
        rows = 0 if one_row else min(_leading_spatial(b) for b in blocks)
        if len({tuple(str(it.dom) for it in b.iters[:rows]) for b in blocks}) != 1:
            return None  # not one row space (a matmul with a sliced epilogue, say)
        if len(blocks[-1].iters) <= rows:
            return None  # the last block has no row of elements: reductions into single values, not rows
        lanes = vector_lanes(target, sch.get(blocks[-1].block_rv).writes[0].source.dtype.bits)

        partials = []
        for block in blocks:
            lead = _leading_spatial(block)
            if block.is_injective() or block.dom_kind() != "S" * lead + "R" or not (one_row or lead == rows):
                continue  # a reduction over several axes stays serial
            inner = sch.get_loops(block.block_rv)[-1]
            width = _partial_lanes(const_extent(sch, inner), lanes)
            if width is not None:
                ki = sch.split(inner, factors=[None, width])[1]
                partials.append(sch.rfactor(ki, factor_axis=lead))

        last = blocks[-1].block_rv
        loops = sch.get_loops(last)
        children = sch.get_child_blocks(get_root_block(sch))
        row = None
        if rows > 0:
            elements = math.prod(const_extent(sch, loop) or MIN_PARALLEL_ELEMENTS for loop in loops)
            row = sch.fuse(*loops[:rows]) if rows > 1 else loops[0]
            if elements >= MIN_PARALLEL_ELEMENTS:
                sch.parallel(row)
        _vectorize_inner(sch, last, lanes)
        if row is not None:
            for block in reversed(children[:-1]):
                sch.compute_at(block, row, preserve_unit_loops=True)

        partial_stmts = [sch.get(p) for p in partials]
        for block in children[:-1]:
            stmt = sch.get(block)
            if any(stmt.same_as(p) for p in partial_stmts):
                if row is None:  # as rfactor left it: [..., reduction, partial]
                    ko, ki = sch.get_loops(block)[-2:]
                else:  # compute_at put the partial's own axis outermost under the row: make it innermost
                    ki, *_, ko = sch.get_loops(block)[1:]  # [row, partial, unit loops, reduction]
                    sch.reorder(ko, ki)
                sch.vectorize(ki)  # before the init is split off: a reduction block may be vectorized
                init = sch.decompose_reduction(block, ko)
                if sch.get(sch.get_loops(init)[-1]).kind != tirx.ForKind.VECTORIZED:
                    sch.vectorize(sch.get_loops(init)[-1])
            elif all(it.iter_type == tirx.IterVar.DataPar for it in stmt.iter_vars):
                _vectorize_inner(sch, block, lanes)
        return sch
