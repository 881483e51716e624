"""Counting the arithmetic a Relax function does, for reports and benchmarks."""

from __future__ import annotations

import math

import tvm
from tvm import relax


def matmul_flops(func: relax.Function) -> int:
    """2 * M * N * K (times the batch dimensions) summed over the function's `relax.matmul` calls and
    its banded attention kernels (passes/banded_attention.py: the same products over the band)."""
    total = 0

    def visit(expr: relax.Expr) -> None:
        nonlocal total
        if not isinstance(expr, relax.Call) or not isinstance(expr.op, tvm.ir.Op):
            return
        if expr.op.name == "relax.matmul":
            out = [int(d) for d in expr.ty.shape]
            total += 2 * math.prod(out) * int(expr.args[0].ty.shape[-1])
        elif expr.op.name == "relax.call_tir" and expr.args[0].name_hint.startswith(("banded_scores", "banded_context")):
            out = [int(d) for d in expr.ty.shape]
            first = expr.args[1].fields[0]  # q (reduced over head_dim) or the band's probabilities (over the band)
            total += 2 * math.prod(out) * int(first.ty.shape[-1])

    relax.analysis.post_order_visit(func, visit)
    return total
