"""edgebert.FoldConstantCalls: kernels called on constants only (the weight packing) run at compile time,
all of them from one build.

SplitLayoutRewritePreproc leaves one `call_tir(prepack, (W,))` per packed weight. Relax's
FoldConstant evaluates them, but builds the PrimFunc again for every call: 124 LLVM builds, 6 s, for
ALBERT-base at four compiled lengths (edgebert_tvm/lengths.py), where DeduplicatePrimFuncs has left a
handful of distinct packing functions. Here the distinct functions are built together, in one
library (one LLVM module: about 15 ms a function less than a build each), and each is run on every
constant it is called with.

The functions are built for this machine's CPU, not the compile target's: they run here, and with
`--mcpu` the target may be a CPU whose instructions this one lacks.

Place in the pipeline: after SplitLayoutRewritePreproc and DeduplicatePrimFuncs, before Relax's
FoldConstant, which folds whatever else is constant (target/cpu/pipeline.py).
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.ir.transform import PassContext
from tvm.relax.expr_functor import PyExprMutator, mutator

from .host import host_target

_CALL_TIR = tvm.ir.Op.get("relax.call_tir")


def _foldable(call: relax.Call) -> bool:
    """A `call_tir` whose arguments are all constants and whose result has a static shape."""
    if not call.op.same_as(_CALL_TIR) or len(call.args) != 2:
        return False
    args, out = call.args[1], call.ty_args[0] if call.ty_args else None
    return (isinstance(args, relax.Tuple) and all(isinstance(a, tvm.ir.expr.Constant) for a in args.fields)
            and isinstance(out, relax.TensorType) and isinstance(out.shape, relax.ShapeExpr)
            and all(isinstance(d, tvm.tirx.IntImm) for d in out.shape.values))


@mutator
class _FoldCalls(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, library: tvm.runtime.Module) -> None:
        super().__init__(mod)
        self.library = library

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 (visitor naming)
        call = super().visit_call_(call)
        if not _foldable(call):
            return call
        callee, args = call.args
        out = call.ty_args[0]
        result = tvm.runtime.empty([int(d) for d in out.shape.values], out.dtype, tvm.cpu())
        self.library[callee.name_hint](*[a.value for a in args.fields], result)
        return relax.const(result.numpy(), out.dtype)


@tvm.transform.module_pass(opt_level=0, name="edgebert.FoldConstantCalls")
class FoldConstantCalls:
    """Run `call_tir` on constant arguments at compile time (module docstring)."""

    def transform_module(self, mod: tvm.IRModule, _ctx: PassContext) -> tvm.IRModule:
        functions = [(gv, func) for gv, func in mod.functions_items() if isinstance(func, relax.Function)]
        callees: dict[str, tirx.PrimFunc] = {}

        def collect(expr: relax.Expr) -> None:
            if isinstance(expr, relax.Call) and _foldable(expr):
                gv = expr.args[0]
                callees[gv.name_hint] = mod[gv].with_attr("global_symbol", gv.name_hint)

        for _, func in functions:
            relax.analysis.post_order_visit(func, collect)
        if not callees:
            return mod
        library = tvm.tirx.build(tvm.IRModule(callees), target=host_target())
        folded = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs, global_infos=mod.global_infos)
        for gv, func in functions:
            folded[gv] = _FoldCalls(mod, library).visit_expr(func)
        return folded
