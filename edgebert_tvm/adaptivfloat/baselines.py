"""The number formats AdaptivFloat is compared with, as per-tensor numpy quantizers (float32 out).

- IEEE-like float: AdaptivFloat's encoding with the exponent bias fixed at 1 - 2^(e-1) instead of
  fitted to the tensor (exponents -(2^(e-1)-1) .. 2^(e-1); no denormals, no inf/NaN codes), as in the
  AdaptivFloat paper's comparison of the two at equal width.
- intN symmetric per-tensor: scale max|x| / (2^(N-1) - 1), round half to even, no zero point.
- float8 e4m3fn as TVM builds it: a TVM-compiled float32 -> float8_e4m3fn -> float32 cast (unscaled).
"""

from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm import te

from .quantizer import quantize, quantize_with_bias


def adaptivfloat(bits: int, exp_bits: int):
    return functools.partial(quantize, bits=bits, exp_bits=exp_bits)


def ieee_like_bias(exp_bits: int) -> int:
    return 1 - 2 ** (exp_bits - 1)


def ieee_like(bits: int, exp_bits: int):
    return functools.partial(quantize_with_bias, bits=bits, exp_bits=exp_bits, bias=ieee_like_bias(exp_bits))


def int_symmetric(bits: int):
    def quantize_int(x: np.ndarray) -> np.ndarray:
        levels = 2 ** (bits - 1) - 1
        peak = float(np.abs(x).max(initial=0.0))
        if peak == 0.0:
            return np.zeros_like(x, dtype=np.float32)
        scale = peak / levels
        return (np.clip(np.rint(np.asarray(x, np.float64) / scale), -levels, levels) * scale).astype(np.float32)

    return quantize_int


@functools.cache
def _float8_roundtrip():
    n = te.var("n")
    x = te.placeholder((n,), "float32", name="x")
    f8 = te.compute((n,), lambda i: x[i].astype("float8_e4m3fn"), name="to_f8")
    back = te.compute((n,), lambda i: f8[i].astype("float32"), name="to_f32")
    # The float8 tensor is an output so that it is stored: inlined, the two casts simplify away.
    return tvm.compile(te.create_prim_func([x, f8, back]), target="llvm")["main"]


def tvm_float8_e4m3(x: np.ndarray) -> np.ndarray:
    """x rounded through TVM's float8_e4m3fn cast on llvm."""
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = tvm.runtime.tensor(np.empty_like(flat))
    _float8_roundtrip()(tvm.runtime.tensor(flat), tvm.runtime.empty(flat.shape, "float8_e4m3fn"), out)
    return out.numpy().reshape(np.shape(x))
