"""Vectorizable approximations of GELU, tanh, erf, exp and softmax (TVM's topi fast_* kernels).

LLVM lowers these to scalar libm calls, which dominate GELU and softmax kernels. TVM's own
FastMathTransform does the same swap but fails on modules whose functions call each other
(it reads `.name` of every callee), which the block-structured import always produces.
"""

from __future__ import annotations

import math
from typing import Callable

import tvm
from tvm import relax, te, topi
from tvm.relax.expr_functor import PyExprMutator, mutator

def _fast_gelu(x: te.Tensor) -> te.Tensor:
    """GELU(x) = x/2 * (1 + erf(x / sqrt(2))), with the fast erf."""
    erf = topi.fast_erf(topi.multiply(x, tvm.tirx.const(1 / math.sqrt(2), x.dtype)))
    return topi.multiply(topi.multiply(x, tvm.tirx.const(0.5, x.dtype)), topi.add(erf, tvm.tirx.const(1.0, x.dtype)))


_FAST: dict[str, Callable[[relax.Call], tuple]] = {
    "relax.nn.gelu": lambda call: (_fast_gelu, call.args[0]),
    "relax.tanh": lambda call: (topi.fast_tanh, call.args[0]),
    "relax.erf": lambda call: (topi.fast_erf, call.args[0]),
    "relax.exp": lambda call: (topi.fast_exp, call.args[0]),
    "relax.nn.softmax": lambda call: (topi.nn.fast_softmax, call.args[0], call.attrs.axis),
}


@mutator
class _FastMathMutator(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 (visitor naming)
        call = super().visit_call_(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name in _FAST:
            return self.builder_.call_te(*_FAST[call.op.name](call))
        return call


@tvm.transform.module_pass(opt_level=0, name="edgebert.FastMath")
class FastMath:
    """Replace GELU, tanh, erf, exp and softmax in every Relax function by TVM's fast approximations."""

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        rewriter = _FastMathMutator(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return rewriter.builder_.get()
