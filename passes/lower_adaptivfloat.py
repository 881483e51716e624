"""edgebert.LowerAdaptivFloat: give `custom[adaptivfloat]N` buffers integer storage and integer decode.

TVM no longer lowers custom datatypes (docs/ARCHITECTURE.md, "TVM 0.27 facts"): llvm codegen crashes on them.
This pass rewrites each PrimFunc that holds AdaptivFloat buffers: the buffers become uint8 (uint16 above
8 bits) storage of the codes, and every `Cast(float, load)` of such a buffer becomes an integer decode
that assembles the IEEE float32 bit pattern and reinterprets it (shifts, masks and a select: it
vectorizes, and it is exact, so the compiled decode equals `quantizer.decode_with_bias` bit for bit).
Each buffer's format (exponent bits, bias) comes from the PrimFunc attribute `edgebert.adaptivfloat`.

The pass also opens the `edgebert` TIR pipeline (TVM's default TIR pipeline after it), registered with
`tvm.tirx.register_tir_pipeline`, so `tvm.compile(..., tir_pipeline="edgebert")` builds such functions.

Place in the pipeline: first of the lowering passes (targets.lowering_passes), before anything
builds a PrimFunc (FoldConstant does), since llvm cannot build a custom type; it is a no-op on
modules without AdaptivFloat buffers.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad, Var

from ..adaptivfloat.registry import METADATA_ATTR, AdaptivFloatFormat, is_adaptivfloat, register
from ..errors import EdgeBertError

PIPELINE_NAME = "edgebert"
FLOAT32_BIAS = 127


def _formats(func: tirx.PrimFunc) -> dict[str, AdaptivFloatFormat]:
    table = func.attrs.get(METADATA_ATTR) if func.attrs is not None else None
    return {str(name): AdaptivFloatFormat.from_metadata(value) for name, value in (table or {}).items()}


def _is_custom_buffer(var: Var) -> bool:
    return isinstance(var.ty, tirx.BufferType) and is_adaptivfloat(var.ty.dtype.dtype)


def decode_expr(code: tirx.PrimExpr, fmt: AdaptivFloatFormat) -> tirx.PrimExpr:
    """float32 value of an integer code: sign | exponent field | mantissa, exponent = field + bias.

    The float32 bits are sign << 31 | (field + bias + 127) << 23 | mantissa << (23 - m); the all-zero
    exponent and mantissa code is (signed) zero. Exact for formats inside float32's normal range.
    """
    u32 = "uint32"
    c = tirx.Cast(u32, code)

    def const(value: int) -> tirx.PrimExpr:
        return tirx.const(value, u32)

    mantissa = c & const(2**fmt.man_bits - 1)
    field = (c >> const(fmt.man_bits)) & const(2**fmt.exp_bits - 1)
    sign = ((c >> const(fmt.bits - 1)) & const(1)) << const(31)
    exponent = (field + const(fmt.bias + FLOAT32_BIAS)) << const(23)
    bits = sign | exponent | (mantissa << const(23 - fmt.man_bits))
    is_zero = tirx.EQ(field, const(0)) & tirx.EQ(mantissa, const(0))
    return tirx.reinterpret("float32", tirx.Select(is_zero, sign, bits))


def _check_range(name: str, fmt: AdaptivFloatFormat) -> None:
    lowest, highest = fmt.bias, fmt.bias + 2**fmt.exp_bits - 1
    if lowest + FLOAT32_BIAS < 1 or highest + FLOAT32_BIAS > 254:
        raise EdgeBertError(f"AdaptivFloat buffer {name}: exponents {lowest}..{highest} leave float32's normal range")


def lower_function(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with its AdaptivFloat buffers as integer storage and decoded casts (unchanged if it has none)."""
    formats = _formats(func)

    def format_of(buffer: Var) -> AdaptivFloatFormat:
        name = str(buffer.name)
        if name not in formats:
            raise EdgeBertError(f"AdaptivFloat buffer {name} has no format in the PrimFunc's {METADATA_ATTR} attribute")
        fmt = formats[name]
        if buffer.ty.dtype.dtype.bits != fmt.bits:
            raise EdgeBertError(f"AdaptivFloat buffer {name}: dtype width differs from its metadata ({fmt.bits} bits)")
        _check_range(name, fmt)
        return fmt

    retyped: dict[Var, Var] = {}
    storage_format: dict[Var, AdaptivFloatFormat] = {}

    def retype_buffer(var: Var) -> Var:
        if not _is_custom_buffer(var):
            return var
        if var not in retyped:
            fmt = format_of(var)
            retyped[var] = var.with_dtype(fmt.storage_dtype)
            storage_format[retyped[var]] = fmt
        return retyped[var]

    def retyped_format(load: tirx.PrimExpr) -> AdaptivFloatFormat | None:
        if not isinstance(load, TensorLoad):
            return None
        return next((fmt for new, fmt in storage_format.items() if load.source.same_as(new)), None)

    def reload(load: TensorLoad) -> tirx.PrimExpr:
        """A load of a retyped buffer, rebuilt so that its type is the storage type."""
        return tirx.BufferLoad(load.source, load.indices) if retyped_format(load) is not None else load

    def decode_cast(cast: tirx.Cast) -> tirx.PrimExpr:
        if is_adaptivfloat(cast.ty.dtype):
            raise EdgeBertError("LowerAdaptivFloat decodes AdaptivFloat loads; it cannot encode (cast to AdaptivFloat)")
        fmt = retyped_format(cast.value)
        if fmt is None:
            return cast
        decoded = decode_expr(cast.value, fmt)
        return decoded if str(cast.ty.dtype) == "float32" else tirx.Cast(str(cast.ty.dtype), decoded)

    func = tvm_ffi.structural_map(func, [(Var, retype_buffer), (TensorLoad, reload)])
    if not retyped:
        return func  # no AdaptivFloat buffers (casts to AdaptivFloat need one to store into)
    return tvm_ffi.structural_map(func, [(tirx.Cast, decode_cast)])


@tirx.transform.prim_func_pass(opt_level=0, name="edgebert.LowerAdaptivFloat")
class LowerAdaptivFloat:
    """custom[adaptivfloat]N buffers -> uint8/uint16 storage; casts from them -> integer decode."""

    def transform_function(self, func: tirx.PrimFunc, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tirx.PrimFunc:
        return lower_function(func)  # unchanged without AdaptivFloat buffers; an error if one lacks its format


def edgebert_tir_pipeline():
    """TVM's default TIR pipeline with LowerAdaptivFloat in front (the factory form `get_tir_pipeline` wants)."""
    lower, finalize_host, finalize_device = tvm.tirx.get_tir_pipeline("default")
    return tvm.transform.Sequential([LowerAdaptivFloat(), lower], name="edgebert.TIRPipeline"), finalize_host, finalize_device


def register_pipeline() -> str:
    """Register the `edgebert` TIR pipeline (idempotent) and the AdaptivFloat type; returns its name."""
    register()
    tvm.tirx.register_tir_pipeline(PIPELINE_NAME, edgebert_tir_pipeline)
    return PIPELINE_NAME
