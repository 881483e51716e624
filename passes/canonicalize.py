"""Graph clean-ups that let fusion see what the torch frontend hides.

The frontend lowers `nn.Linear` on a (batch, seq, K) tensor to reshape -> 2-D matmul -> bias add
-> reshape back. The reshapes sit between the matmul and whatever follows it (GELU, the residual
add), and FuseOps stops at them, so each of those becomes its own pass over memory. Relax's
matmul broadcasts over leading axes, so the reshapes can go. GELU's `power(x, 3.0)` becomes
`x * x * x`: LLVM lowers `powf` to a scalar library call that dominates the whole GELU kernel.

Place in the pipeline: in the lowering (targets.lowering_passes), after LowerAdaptivFloat and
before the target's fusion, and first in the edgebert partitioning; never before the graph passes,
which match the frontend's own form of a linear layer.
"""

from __future__ import annotations

import tvm
from tvm import IRModule, relax
from tvm.ir.transform import PassContext
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

SMALL_POWERS = (2.0, 3.0)


def _shape(expr: relax.Expr) -> list[int] | None:
    shape = getattr(expr.ty, "shape", None)
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None
    return [int(d) for d in shape]


@relax.transform.function_pass(opt_level=0, name="edgebert.FoldLinearReshape")
class FoldLinearReshape:
    """reshape(matmul(reshape(x, [-1, K]), W) [+ b], [..., N]) -> matmul(x, W) [+ b]."""

    def __init__(self) -> None:
        self.x = wildcard()
        self.weight = wildcard()
        self.bias = wildcard()
        flat = is_op("relax.reshape")(self.x, wildcard())
        self.matmul = is_op("relax.matmul")(flat, self.weight)
        biased = is_op("relax.add")(self.bias, self.matmul) | is_op("relax.add")(self.matmul, self.bias)
        self.pattern = is_op("relax.reshape")(biased | self.matmul, wildcard())

    def transform_function(self, func: relax.Function, mod: IRModule, ctx: PassContext) -> relax.Function:
        if func.attrs is not None and func.attrs.get("Primitive", 0) != 0:
            return func

        def rewrite(expr: relax.Expr, matches: dict) -> relax.Expr:
            x, weight, out = matches[self.x], matches[self.weight], _shape(expr)
            x_shape, w_shape = _shape(x), _shape(weight)
            # Safe only when the outer reshape restores x's leading axes around a 2-D weight.
            if None in (x_shape, w_shape, out) or len(w_shape) != 2 or len(x_shape) < 3:
                return expr
            if out != x_shape[:-1] + [w_shape[1]] or x_shape[-1] != w_shape[0]:
                return expr
            result = relax.op.matmul(x, weight, out_dtype=matches[self.matmul].attrs.out_dtype)
            if self.bias in matches:
                bias = matches[self.bias]
                if _shape(bias) != [w_shape[1]]:
                    return expr
                result = relax.op.add(result, bias)
            return result

        return rewrite_call(self.pattern, rewrite, func)


@relax.transform.function_pass(opt_level=0, name="edgebert.ExpandSmallPower")
class ExpandSmallPower:
    """power(x, 2.0) -> x * x and power(x, 3.0) -> x * x * x."""

    def __init__(self) -> None:
        self.x = wildcard()
        self.exponent = is_const()
        self.pattern = is_op("relax.power")(self.x, self.exponent)

    def transform_function(self, func: relax.Function, mod: IRModule, ctx: PassContext) -> relax.Function:
        if func.attrs is not None and func.attrs.get("Primitive", 0) != 0:
            return func

        def rewrite(expr: relax.Expr, matches: dict) -> relax.Expr:
            exponent = matches[self.exponent].value.numpy()
            if exponent.size != 1 or float(exponent.reshape(())) not in SMALL_POWERS:
                return expr
            x = matches[self.x]
            result = relax.op.multiply(x, x)
            return relax.op.multiply(result, x) if float(exponent.reshape(())) == 3.0 else result

        return rewrite_call(self.pattern, rewrite, func)


def Canonicalize() -> tvm.transform.Pass:  # noqa: N802 (TVM's naming for pass constructors)
    """The clean-ups above, in order."""
    return tvm.transform.Sequential([FoldLinearReshape(), ExpandSmallPower()], name="edgebert.Canonicalize")


__all__ = ["Canonicalize", "ExpandSmallPower", "FoldLinearReshape"]
