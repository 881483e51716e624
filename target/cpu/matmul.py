"""Dense and batched matmul with fused prologue and epilogue, as a register-tiled micro-kernel.

C[b, i, j] = sum_k A[b, i, k] * B[b, k, j] is tiled into MR x NR output tiles (NR = two vector
registers wide; MR = 8 rows with AVX-512's 32 vector registers, 6 with AVX2's 16, so that the
accumulators stay in registers, as in BLIS's 6x16 AVX2 kernel). Tiles run in parallel; for each, k walks the shared dimension while the
MR x NR block accumulates; the epilogue (bias, GELU, residual add, reshape) is inlined into the
write-back of the tile, so the intermediate product never goes to memory.

Column panels are grouped into blocks of B that fill a quarter of one core's L2 (`l2_bytes`): a
block's rows of tiles run one after the other, so the block is read from L2 for every row and an A
tile (MR x K) from L1 for every panel of the block, as in BLIS's N blocking.

A constant weight B[K, N] (a layout-free buffer: Relax binds it to a constant) is packed into
panels [N / NR, K, NR], so a tile's k loop reads one contiguous stream instead of K rows a whole
row of B apart (12 KB for N = 3072: a new page per row). The packing is a separate block marked
`layout_rewrite_preproc`; the pipeline splits it out and folds it into the constant at compile time.
"""

from __future__ import annotations

import math

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.s_tir.dlight.gpu.matmul import (
    auto_inline_consumers,
    auto_inline_producers,
    get_reduction_blocks,
)
from tvm.target import Target

from .common import const_extent, vector_bits, vector_lanes
from .host import cpu_of, l2_bytes

# The share of L2 one block of B may take: the rest holds the A tiles, the C tiles, what the
# epilogue reads and the activations the next kernel reads. On a 2 MB L2, a GEMM alone ran best
# with 60 % (batch 8, K 768: 306 against 283 GFLOP/s unblocked), but ALBERT-base as a whole ran
# 2-5 % slower with it; with 25 % it ran 2 % faster (batch 1 and 8, one run each, within noise).
L2_SHARE_FOR_B = 0.25


def _is_var(expr: tirx.Expr, var: tirx.Var) -> bool:
    return isinstance(expr, tirx.Var) and expr.same_as(var)


def _row_major_operands(block: tirx.SBlock) -> bool:
    """A[.., i, k] and B[.., k, j] with j innermost in B and C, so B and C load as vectors along j."""
    iters = block.iter_vars
    if len(iters) < 3 or iters[-1].iter_type != tirx.IterVar.CommReduce:
        return False
    i, j, k = (it.var for it in iters[-3:])
    out = [r.min for r in block.writes[0].region]
    if len(out) < 2 or not (_is_var(out[-1], j) and _is_var(out[-2], i)):
        return False
    reads = [[r.min for r in region.region] for region in block.reads]
    has_a = any(len(r) >= 2 and _is_var(r[-1], k) and _is_var(r[-2], i) for r in reads)
    has_b = any(len(r) >= 2 and _is_var(r[-1], j) and _is_var(r[-2], k) for r in reads)
    return has_a and has_b


def _tile_rows(extent: int, lanes: int) -> int:
    """Rows per tile: as many as the register file holds accumulators for, preferring a count that
    divides the extent (a partial tile runs a predicated, half-empty micro-kernel: M = 64 with
    6-row tiles ran at half the speed of 8-row tiles here)."""
    candidates = (8, 6, 4) if lanes >= 16 else (6, 4, 3)
    if extent <= candidates[0]:
        return extent
    return next((rows for rows in candidates if extent % rows == 0), candidates[0])


def _tile_width(extent: int, lanes: int) -> int:
    """Columns per tile: two vectors if they divide the extent, else the largest fitting divisor."""
    if extent <= 2 * lanes:
        return extent
    return next(w for w in (2 * lanes, lanes, lanes // 2, lanes // 4, 1) if w >= 1 and extent % w == 0)


def schedule_parameters(target: Target) -> dict[str, object]:
    """What the CPU kernels were blocked for, and where each number came from (metadata.json)."""
    cpu = cpu_of(target)
    if cpu is None:
        return {}
    l2, source = l2_bytes(str(cpu.mcpu))
    return {"mcpu": str(cpu.mcpu), "vector_bits": vector_bits(cpu), "l2_bytes": l2, "l2_from": source,
            "weight_block_l2_share": L2_SHARE_FOR_B}


def _panels_per_block(panels: int, depth: int | None, width: int, dtype_bytes: int, target: Target) -> int:
    """Column panels (depth x width each) to a block: the most that divide the panel count and fit
    the L2 share (at least one)."""
    if depth is None:
        return 1
    fit = int(L2_SHARE_FOR_B * l2_bytes(str(target.mcpu))[0]) // (depth * width * dtype_bytes)
    return max((d for d in range(1, min(fit, panels) + 1) if panels % d == 0), default=1)


def _pack_constant_weight(sch: s_tir.Schedule, main: s_tir.schedule.SBlockRV, func: tirx.PrimFunc, width: int) -> None:
    """Read B[K, N] from panels [N / width, K, width] if B is a layout-free (constant) parameter."""
    free = func.attrs.get("layout_free_buffers") if func.attrs is not None else None
    if not free:
        return
    names = {func.params[int(i)].name for i in free}
    stmt = sch.get(main)
    j, k = stmt.iter_vars[-2].var, stmt.iter_vars[-1].var
    for index, region in enumerate(stmt.reads):
        indices = [r.min for r in region.region]
        if (region.source.name in names and len(indices) == 2 and _is_var(indices[0], k) and _is_var(indices[1], j)
                and int(region.source.shape[1]) % width == 0):
            packed = sch.cache_read(main, index, "global")
            sch.transform_layout(main, ("read", index), lambda kk, n: (n // width, kk, n % width))
            sch.annotate(packed, "meta_schedule.layout_rewrite_preproc", True)
            return


def _inline_side_inputs(sch: s_tir.Schedule, main: s_tir.schedule.SBlockRV) -> None:
    """Inline elementwise blocks after the matmul that feed the epilogue without reading the
    product (a per-row scale, say): left at the root they keep the epilogue out of the tiles."""
    product = sch.get(main)
    after_main = False
    for block in sch.get_child_blocks(get_root_block(sch)):
        stmt = sch.get(block)
        if stmt.same_as(product):
            after_main = True
            continue
        if (not after_main or not sch.get_consumers(block)
                or any(it.iter_type != tirx.IterVar.DataPar for it in stmt.iter_vars)
                or any(sch.get(p).same_as(product) for p in sch.get_producers(block))):
            continue
        try:
            sch.compute_inline(block)
        except s_tir.ScheduleError:
            pass  # not inlinable: it stays at the root, as before


def _epilogues_cover_the_product(sch: s_tir.Schedule, main: s_tir.schedule.SBlockRV) -> bool:
    """Every block after the product runs over the product's whole domain. An epilogue that reads a
    part of it (a strided_slice fused after the matmul) cannot be written back tile by tile: its
    inlined write would run over every row of the tile, past the end of its smaller output."""
    stmt = sch.get(main)
    extents = [int(iv.dom.extent) for iv in stmt.iter_vars
               if iv.iter_type == tirx.IterVar.DataPar and isinstance(iv.dom.extent, tirx.IntImm)]
    blocks = sch.get_child_blocks(get_root_block(sch))
    after = [sch.get(b) for b in blocks[[sch.get(b).same_as(stmt) for b in blocks].index(True) + 1:]]
    for block in after:
        spatial = [int(iv.dom.extent) for iv in block.iter_vars if isinstance(iv.dom.extent, tirx.IntImm)]
        if math.prod(spatial) < math.prod(extents):
            return False
    return True


class Matmul(CPUScheduleRule):
    """Register-tiled matmul (dense or batched) with its fused epilogue."""

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        reductions = get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch)))
        if reductions is None:
            return None
        main = reductions[0]
        stmt = sch.get(main)
        if not _row_major_operands(stmt):  # also M = 1, where dlight's get_index_map gives up
            return None
        if not _epilogues_cover_the_product(sch, main):
            return None
        auto_inline_producers(sch, main)
        _inline_side_inputs(sch, main)

        *batch, i, j, k = sch.get_loops(main)
        rows, cols = const_extent(sch, i), const_extent(sch, j)
        if rows is None or cols is None:
            return None
        lanes = vector_lanes(target, stmt.writes[0].source.dtype.bits)
        width = _tile_width(cols, lanes)
        _pack_constant_weight(sch, main, func, width)
        *batch, i, j, k = sch.get_loops(main)
        per_block = _panels_per_block(cols // width, const_extent(sch, k), width, stmt.writes[0].source.dtype.bits // 8,
                                      target)
        io, ii = sch.split(i, factors=[None, _tile_rows(rows, lanes)])
        jb, jo, ji = sch.split(j, factors=[None, per_block, width])
        sch.reorder(*batch, jb, io, jo, k, ii, ji)

        write_back = sch.cache_write(main, 0, "local")
        auto_inline_consumers(sch, write_back)
        sch.reverse_compute_at(write_back, jo)
        for consumer in sch.get_consumers(write_back):  # epilogues that could not be inlined
            sch.reverse_compute_at(consumer, jo)
        for block in [write_back, *sch.get_consumers(write_back)]:
            sch.vectorize(sch.get_loops(block)[-1])

        sch.unroll(ii)
        sch.vectorize(ji)
        sch.parallel(sch.fuse(*batch, jb, io))
        sch.decompose_reduction(main, k)
        return sch
