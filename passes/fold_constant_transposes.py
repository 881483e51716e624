"""edgebert.FoldConstantTransposes: `permute_dims` of a constant weight becomes the transposed constant.

The torch frontend imports every linear layer as `matmul(x, permute_dims(W))`. FoldConstant would
fold each transpose too, but by building a TVM kernel for it and running it once: about 20 ms of
LLVM per weight, 31 of them per compiled length of ALBERT-base, most of the lowering's time at four
lengths (edgebert_tvm/lengths.py). numpy transposes the same values in microseconds.

Place in the pipeline: first in the lowering after Canonicalize (targets.lowering_passes), never
before the graph passes, whose patterns (FoldAttentionSpan, FuseQKV, the edgebert chip's) match
the frontend's `permute_dims(W)`. Functions offloaded to an external codegen are left alone.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir.transform import PassContext
from tvm.relax.expr_functor import PyExprMutator, mutator

_PERMUTE_DIMS = tvm.ir.Op.get("relax.permute_dims")
_NUMPY_DTYPES = frozenset({"float32", "float16", "float64", "int8", "uint8", "int32", "int64"})


@mutator
class _FoldTransposes(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 (visitor naming)
        call = super().visit_call_(call)
        if not call.op.same_as(_PERMUTE_DIMS) or not isinstance(call.args[0], tvm.ir.expr.Constant):
            return call
        tensor = call.args[0].value
        if str(tensor.dtype) not in _NUMPY_DTYPES:  # a custom datatype has no numpy form
            return call
        axes = None if call.attrs.axes is None else [int(a) for a in call.attrs.axes]
        return relax.const(np.ascontiguousarray(np.transpose(tensor.numpy(), axes)), str(tensor.dtype))


@relax.transform.function_pass(opt_level=0, name="edgebert.FoldConstantTransposes")
class FoldConstantTransposes:
    """Transpose constant weights at compile time with numpy (module docstring)."""

    def transform_function(self, func: relax.Function, _mod: tvm.IRModule, _ctx: PassContext) -> relax.Function:
        if func.attrs is not None and ("Codegen" in func.attrs or "Composite" in func.attrs):
            return func
        return _FoldTransposes().visit_expr(func)
