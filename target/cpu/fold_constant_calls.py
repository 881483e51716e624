"""edgebert.FoldConstantCalls: kernels called on constants only (the weight packing) run at compile time,
each PrimFunc built once.

SplitLayoutRewritePreproc leaves one `call_tir(prepack, (W,))` per packed weight. Relax's
FoldConstant evaluates them, but builds the PrimFunc again for every call: 124 LLVM builds, 6 s, for
ALBERT-base at four compiled lengths (edgebert_tvm/lengths.py), where DeduplicatePrimFuncs has left a
handful of distinct packing functions. Here each distinct function is built once and run on every
constant it is called with.

Place in the pipeline: after SplitLayoutRewritePreproc and DeduplicatePrimFuncs, before Relax's
FoldConstant, which folds whatever else is constant (target/cpu/pipeline.py).
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.ir.transform import PassContext
from tvm.relax.expr_functor import PyExprMutator, mutator

_CALL_TIR = tvm.ir.Op.get("relax.call_tir")


@mutator
class _FoldCalls(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, run: "_Runner") -> None:
        super().__init__(mod)
        self.mod = mod
        self.run = run

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 (visitor naming)
        call = super().visit_call_(call)
        if not call.op.same_as(_CALL_TIR) or len(call.args) != 2:
            return call
        callee, args = call.args
        out = call.ty_args[0] if call.ty_args else None
        if (not isinstance(args, relax.Tuple) or not all(isinstance(a, tvm.ir.expr.Constant) for a in args.fields)
                or not isinstance(out, relax.TensorType) or not isinstance(out.shape, relax.ShapeExpr)
                or not all(isinstance(d, tvm.tirx.IntImm) for d in out.shape.values)):
            return call
        value = self.run(callee, self.mod[callee], [a.value for a in args.fields], out)
        return relax.const(value.numpy(), out.dtype)


class _Runner:
    """Builds each PrimFunc once for the host and runs it."""

    def __init__(self, target: tvm.target.Target) -> None:
        self.target = target
        self.built: dict[tvm.ir.GlobalVar, tvm.runtime.Module] = {}

    def __call__(self, gv: tvm.ir.GlobalVar, func: tirx.PrimFunc, inputs: list, out: relax.TensorType):
        if gv not in self.built:
            self.built[gv] = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                                            target=self.target)
        result = tvm.runtime.empty([int(d) for d in out.shape.values], out.dtype, tvm.cpu())
        self.built[gv]["main"](*inputs, result)
        return result


@tvm.transform.module_pass(opt_level=0, name="edgebert.FoldConstantCalls")
class FoldConstantCalls:
    """Run `call_tir` on constant arguments at compile time (module docstring)."""

    def __init__(self, target: tvm.target.Target) -> None:
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx: PassContext) -> tvm.IRModule:
        run = _Runner(self.target)
        folded = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs, global_infos=mod.global_infos)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                folded[gv] = _FoldCalls(mod, run).visit_expr(func)
        return folded
