"""edgebert.DeduplicatePrimFuncs: PrimFuncs that are equal but for their names become one.

Lowering makes one kernel per fused call site, and the layout-rewrite split one weight-packing
function per kernel. Equal ones abound: the off-ramps' kernels, the packing of every weight of one
shape, and above all the same packing at every compiled sequence length (edgebert_tvm/lengths.py).
Each distinct PrimFunc costs an LLVM build twice, once when FoldConstant runs it on the constant
weights and once in the library, so merging them before FoldConstant takes those builds away.

Place in the pipeline: in the CPU lowering, after SplitLayoutRewritePreproc and before FoldConstant
(target/cpu/pipeline.py); anywhere after legalization it changes nothing but the number of functions.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax, tirx
from tvm.ir.transform import PassContext
from tvm.relax.expr_functor import PyExprMutator, mutator


@mutator
class _RepointGlobals(PyExprMutator):
    """Every reference to a GlobalVar of `mapping` replaced by the one it maps to."""

    def __init__(self, mapping: dict[tvm.ir.GlobalVar, tvm.ir.GlobalVar]) -> None:
        super().__init__()
        self.mapping = mapping

    def visit_global_var_(self, op: tvm.ir.GlobalVar) -> relax.Expr:  # noqa: N802 (visitor naming)
        return self.mapping.get(op, op)


def repoint_globals(func: relax.Function, mapping: dict[tvm.ir.GlobalVar, tvm.ir.GlobalVar]) -> relax.Function:
    """`func` calling the functions of `mapping`'s values wherever it called its keys."""
    return _RepointGlobals(mapping).visit_expr(func)


@tvm.transform.module_pass(opt_level=0, name="edgebert.DeduplicatePrimFuncs")
class DeduplicatePrimFuncs:
    """Keep the first of every set of structurally equal PrimFuncs (their global symbols aside)."""

    def transform_module(self, mod: tvm.IRModule, _ctx: PassContext) -> tvm.IRModule:
        kept: dict[int, list[tuple[tvm.ir.GlobalVar, tirx.PrimFunc]]] = {}
        duplicate_of: dict[tvm.ir.GlobalVar, tvm.ir.GlobalVar] = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            anonymous = func.without_attr("global_symbol")
            same_hash = kept.setdefault(tvm_ffi.structural_hash(anonymous), [])
            first = next((k for k, f in same_hash if tvm_ffi.structural_equal(anonymous, f)), None)
            if first is None:
                same_hash.append((gv, anonymous))
            else:
                duplicate_of[gv] = first
        if not duplicate_of:
            return mod
        functions = {gv: repoint_globals(func, duplicate_of) if isinstance(func, relax.Function) else func
                     for gv, func in mod.functions_items() if gv not in duplicate_of}
        return tvm.IRModule(functions, attrs=mod.attrs, global_infos=mod.global_infos)
