"""edgebert.QuantizeWeightsAdaptivFloat: store constant weights as AdaptivFloat, decode them on load.

Every `matmul(x, W)` with a constant 2-D weight (the frontend's `permute_dims(W^T)` included) becomes
a call to a matmul PrimFunc that reads the weight as `custom[adaptivfloat]N` codes and casts each element
to float32 inside the reduction; every `take(E, ids)` of a constant table (the embeddings) becomes a
gather that decodes the rows it reads. The codes are the only copy of the weights the module keeps:
no float32 weight is materialised, at compile time or at run time. The per-tensor exponent bias is
fitted by the reference quantizer and travels in the PrimFunc's `edgebert.adaptivfloat` attribute;
`edgebert.LowerAdaptivFloat` later turns the casts into integer decode.

The linear layers' reshapes are folded first (Canonicalize's FoldLinearReshape): once the matmul is a
call_tir the canonicalization no longer sees it, and without the fold the bias and activation could
not fuse into the matmul kernel.

Place in the pipeline: after FoldAttentionSpan, FuseQKV and FoldSparsity (which need float32
weights; with FoldSparsity the compiler refuses `--weights`, since sparse kernels read float32 values),
before ApproximateRedundantData (which leaves integer codes alone) and FoldEntropyExit. llvm and cuda;
`edgebert.LowerAdaptivFloat` must open the lowering.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te
from tvm.ir.transform import PassContext
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from ..adaptivfloat.quantizer import check_format, encode
from ..adaptivfloat.registry import METADATA_ATTR, AdaptivFloatFormat
from .canonicalize import FoldLinearReshape, _shape as _static_shape

WEIGHT = "weight"  # the PrimFunc parameter holding the codes; its key in the metadata attribute
# relax.transform.OpPatternKind: TVM's pattern analysis sees a matmul only in `C += A * B`; the cast on B
# hides it (the kernel would look like a plain reduction, and bias + activation would not fuse after it).
OUT_ELEMWISE_FUSABLE = 4


def _i64(dims) -> list[tvm.tirx.IntImm]:
    """Shapes as int64, like the legalized ops' buffers (FuseTIR wants one buffer type per Relax var)."""
    return [tvm.tirx.IntImm("int64", int(d)) for d in dims]


def _kernel(tensors: list[te.Tensor]) -> tvm.tirx.PrimFunc:
    """A private PrimFunc (no global symbol): the BlockBuilder names it and shares identical ones."""
    return te.create_prim_func(tensors).without_attr("global_symbol")


def matmul_kernel(x_shape: list[int], n: int, fmt: AdaptivFloatFormat) -> tvm.tirx.PrimFunc:
    """out[..., j] = sum_k x[..., k] * float(weight[k, j]), the weight in AdaptivFloat."""
    *lead, k_extent = _i64(x_shape)
    x = te.placeholder(_i64(x_shape), "float32", name="x")
    weight = te.placeholder(_i64([k_extent, n]), fmt.dtype, name=WEIGHT)
    k = te.reduce_axis((tvm.tirx.IntImm("int64", 0), k_extent), name="k")
    out = te.compute(
        (*lead, *_i64([n])), lambda *i: te.sum(x[(*i[:-1], k)] * weight[k, i[-1]].astype("float32"), axis=k), name="matmul"
    )
    kernel = _kernel([x, weight, out]).with_attr(METADATA_ATTR, {WEIGHT: fmt.as_metadata()})
    return kernel.with_attr("op_pattern", OUT_ELEMWISE_FUSABLE)


def take_kernel(table_shape: list[int], ids_shape: list[int], ids_dtype: str, fmt: AdaptivFloatFormat) -> tvm.tirx.PrimFunc:
    """out[i..., d] = float(weight[ids[i...], d]): an embedding lookup that decodes only the rows it reads."""
    weight = te.placeholder(_i64(table_shape), fmt.dtype, name=WEIGHT)
    ids = te.placeholder(_i64(ids_shape), ids_dtype, name="ids")
    out = te.compute(_i64([*ids_shape, table_shape[1]]), lambda *i: weight[ids[i[:-1]], i[-1]].astype("float32"), name="take")
    return _kernel([weight, ids, out]).with_attr(METADATA_ATTR, {WEIGHT: fmt.as_metadata()})


def quantized_constant(weight: np.ndarray, bits: int, exp_bits: int) -> tuple[tvm.ir.expr.Constant, AdaptivFloatFormat]:
    """The weight's AdaptivFloat codes as a Relax constant, and its format."""
    codes, bias = encode(weight, bits, exp_bits)
    return relax.const(codes), AdaptivFloatFormat(bits, exp_bits, bias)


@tvm.transform.module_pass(opt_level=0, name="edgebert.QuantizeWeightsAdaptivFloat")
class QuantizeWeightsAdaptivFloat:
    """Constant matmul weights and embedding tables -> AdaptivFloat codes decoded inside the kernels."""

    def __init__(self, bits: int = 8, exp_bits: int = 3) -> None:
        check_format(bits, exp_bits)
        self.bits, self.exp_bits = bits, exp_bits
        self.x, self.weight, self.ids = wildcard(), is_const(), wildcard()
        self.transposed = is_op("relax.permute_dims")(self.weight)
        self.matmul = is_op("relax.matmul")(self.x, self.transposed | self.weight)
        self.take = is_op("relax.take")(self.weight, self.ids)
        self.pattern = self.matmul | self.take

    def transform_module(self, mod: tvm.IRModule, ctx: PassContext) -> tvm.IRModule:
        mod = FoldLinearReshape()(mod)
        builder = relax.BlockBuilder(mod)
        for gv, func in mod.functions_items():
            if not isinstance(func, relax.Function) or (func.attrs is not None and func.attrs.get("Primitive", 0)):
                continue
            builder.update_func(gv, rewrite_call(self.pattern, lambda e, m: self._rewrite(builder, e, m), func))
        return builder.finalize()

    def _rewrite(self, builder: relax.BlockBuilder, expr: relax.Expr, matches: dict) -> relax.Expr:
        weight = matches[self.weight].value.numpy()
        if weight.dtype != np.float32 or weight.ndim != 2:
            return expr
        out_shape = _static_shape(expr)
        if out_shape is None:
            return expr
        if expr.op.same_as(tvm.ir.Op.get("relax.take")):
            ids = matches[self.ids]
            if int(expr.attrs.axis) != 0 or _static_shape(ids) is None:
                return expr
            codes, fmt = quantized_constant(weight, self.bits, self.exp_bits)
            kernel = take_kernel(list(weight.shape), _static_shape(ids), str(ids.ty.dtype), fmt)
            gv = builder.add_func(kernel, "adaptivfloat_take")
            return relax.call_tir(gv, [codes, ids], relax.TensorType(out_shape, "float32"))
        x = matches[self.x]
        transposed = self.transposed in matches
        if transposed and [int(a) for a in matches[self.transposed].attrs.axes or [1, 0]] != [1, 0]:
            return expr
        weight = weight.T if transposed else weight
        x_shape = _static_shape(x)
        if x_shape is None or str(x.ty.dtype) != "float32" or x_shape[-1] != weight.shape[0]:
            return expr
        codes, fmt = quantized_constant(np.ascontiguousarray(weight), self.bits, self.exp_bits)
        gv = builder.add_func(matmul_kernel(x_shape, weight.shape[1], fmt), "adaptivfloat_matmul")
        return relax.call_tir(gv, [x, codes], relax.TensorType(out_shape, "float32"))
