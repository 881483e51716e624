"""Counting the arithmetic a Relax function does, for reports and benchmarks."""

from __future__ import annotations

import math

import tvm
from tvm import relax


def matmul_flops(func: relax.Function) -> int:
    """2 * M * N * K (times the batch dimensions) summed over the function's `relax.matmul` calls."""
    total = 0

    def visit(expr: relax.Expr) -> None:
        nonlocal total
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.matmul":
            out = [int(d) for d in expr.ty.shape]
            k = int(expr.args[0].ty.shape[-1])
            total += 2 * math.prod(out) * k

    relax.analysis.post_order_visit(func, visit)
    return total
