"""edgebert.FuseAttention: scores, scale, padding bias, softmax and the weighted sum of values in one
CPU kernel per layer, so the (batch x heads, queries, keys) score matrix never goes to memory.

The frontend writes attention as `matmul(q, kT)`, a reshape, `* scale`, `+ bias`, `softmax`, a
reshape and `matmul(probs, v)`: five kernels, each writing or reading the whole score matrix
(MiniLM-L6 at batch 8, 128 tokens: 13.5 ms of 115, the scores' matmul at K = 32 a third as fast as
the projections). Here a tile of `rows` queries of one head computes its scores in registers and a
stack buffer (rows x keys), normalizes them there and multiplies them with V.

Place in the pipeline: first of the llvm passes (before FastMath turns the softmax into TVM's fast
kernel); chains of any other shape (span masks multiplying the probabilities, banded attention) are
left as they are.
"""

from __future__ import annotations

import functools

import tvm
from tvm import relax
from tvm.ir.transform import PassContext
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard
from tvm.script import tirx as T

from .common import SCHEDULED, specialized, static_shape, vector_lanes

# topi's fast_exp: 2^n * p(r) for x = n ln 2 + r, |r| <= ln 2 / 2, p a degree-7 polynomial.
_LOG2E, _LN2, _LIMIT = 1.4426950216293335, 0.6931471824645996, 88.37626266479492
_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def _fast_exp(x: tvm.tirx.PrimExpr) -> tvm.tirx.PrimExpr:
    """exp(x) for x <= 0 with topi.fast_exp's polynomial (FastMath's, so results match it)."""
    x = T.max(T.min(x, T.float32(_LIMIT)), T.float32(-_LIMIT))
    n = T.floor(x * T.float32(_LOG2E) + T.float32(0.5))
    r = x - n * T.float32(_LN2)
    p = T.float32(_POLY[0])
    for c in _POLY[1:]:
        p = p * r + T.float32(c)
    p = p * r * r + r + T.float32(1.0)
    return T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23)) * p


@T.macro
def _zero(tile: T.Buffer, rows: T.int32, width: T.int32):
    for r in T.unroll(rows):
        for w in T.vectorized(width):
            tile[r, w] = T.float32(0)


@functools.cache
def _attention() -> tvm.tirx.PrimFunc:
    """The fused kernel with its sizes as parameters (`attention_kernel` binds them)."""
    @T.prim_func(private=True, s_tir=True)
    def func(q_handle: T.handle, kt_handle: T.handle, v_handle: T.handle, bias_handle: T.handle,
             out_handle: T.handle, bh: T.int32, heads: T.int32, sq: T.int32, sk: T.int32, d: T.int32,
             rows: T.int32, kw: T.int32, dw: T.int32, scale: T.float32):
        T.func_attr(SCHEDULED)
        q = T.match_buffer(q_handle, (bh, sq, d))
        kt = T.match_buffer(kt_handle, (bh, d, sk))
        v = T.match_buffer(v_handle, (bh, sk, d))
        bias = T.match_buffer(bias_handle, (bh // heads, 1, 1, sk))
        out = T.match_buffer(out_handle, (bh, sq, d))
        with T.sblock("root"):
            with T.sblock("kernel"):
                T.reads(q[0:bh, 0:sq, 0:d], kt[0:bh, 0:d, 0:sk], v[0:bh, 0:sk, 0:d], bias[0:bh // heads, 0, 0, 0:sk])
                T.writes(out[0:bh, 0:sq, 0:d])
                for task in T.parallel(bh * (sq // rows)):
                    b = T.meta_var(task // (sq // rows))  # the (batch x head) of this tile
                    i0 = T.meta_var(task % (sq // rows) * rows)  # its first query
                    s = T.alloc_buffer((rows, sk), scope="local")
                    acc = T.alloc_buffer((rows, kw), scope="local")
                    part = T.alloc_buffer((kw,), scope="local")
                    row = T.alloc_buffer((2,), scope="local")
                    o = T.alloc_buffer((rows, dw), scope="local")
                    for j0 in range(sk // kw):  # scores of `rows` queries against kw keys, in registers
                        _zero(acc, rows, kw)
                        for dd in range(d):
                            for r in T.unroll(rows):
                                for jj in T.vectorized(kw):
                                    acc[r, jj] = acc[r, jj] + q[b, i0 + r, dd] * kt[b, dd, j0 * kw + jj]
                        for r in T.unroll(rows):
                            for jj in T.vectorized(kw):
                                s[r, j0 * kw + jj] = acc[r, jj] * scale + bias[b // heads, 0, 0, j0 * kw + jj]
                    for r in range(rows):  # softmax of each row, in vector partials
                        for jj in T.vectorized(kw):
                            part[jj] = s[r, jj]
                        for j0 in range(1, sk // kw):
                            for jj in T.vectorized(kw):
                                part[jj] = T.max(part[jj], s[r, j0 * kw + jj])
                        row[0] = part[0]
                        for jj in range(1, kw):
                            row[0] = T.max(row[0], part[jj])
                        for jj in T.vectorized(kw):
                            part[jj] = T.float32(0)
                        for j0 in range(sk // kw):
                            for jj in T.vectorized(kw):
                                s[r, j0 * kw + jj] = _fast_exp(s[r, j0 * kw + jj] - row[0])
                                part[jj] = part[jj] + s[r, j0 * kw + jj]
                        row[1] = part[0]
                        for jj in range(1, kw):
                            row[1] = row[1] + part[jj]
                        row[1] = T.float32(1) / row[1]
                        for j0 in range(sk // kw):
                            for jj in T.vectorized(kw):
                                s[r, j0 * kw + jj] = s[r, j0 * kw + jj] * row[1]
                    for e0 in range(d // dw):  # probabilities x V, dw columns at a time in registers
                        _zero(o, rows, dw)
                        for j in range(sk):
                            for r in T.unroll(rows):
                                for ee in T.vectorized(dw):
                                    o[r, ee] = o[r, ee] + s[r, j] * v[b, j, e0 * dw + ee]
                        for r in T.unroll(rows):
                            for ee in T.vectorized(dw):
                                out[b, i0 + r, e0 * dw + ee] = o[r, ee]

    return func


# A tile step reads one 64-byte cache line of K^T and of V per query row: 16 floats.
TILE_FLOATS = 16
# Independent accumulators of a tile: two FMA pipes of latency 4 (measured best on AVX-512 and AVX2
# alike on the AMD EPYC znver4: rows 8 x one 16-lane vector, rows 4 x two 8-lane vectors).
ACCUMULATORS = 8


def _width(extent: int) -> int:
    """TILE_FLOATS, or the largest power of two below it that divides `extent`."""
    return next(w for w in (TILE_FLOATS, 8, 4, 2, 1) if extent % w == 0)


def attention_kernel(bh: int, heads: int, sq: int, sk: int, d: int, scale: float, lanes: int) -> tvm.tirx.PrimFunc:
    """The kernel for these sizes: key and value tiles of a cache line, and as many query rows as
    keep ACCUMULATORS vectors in flight for the target's vector width."""
    kw, dw = _width(sk), _width(d)
    vectors = -(-max(kw, dw) // lanes)
    rows = next(r for r in (8, 4, 2, 1) if sq % r == 0 and r * vectors <= ACCUMULATORS)
    return specialized(_attention(), bh=bh, heads=heads, sq=sq, sk=sk, d=d, rows=rows, kw=kw, dw=dw,
                       scale=tvm.tirx.const(scale, "float32"))


def _pattern():
    """The frontend's attention: 3-D matmuls around a 4-D scale, bias and softmax; returns the
    pattern and its parts (q, kT, v, bias, scale, the 4-D scores, the softmax, the 3-D probabilities)."""
    q, kt, v, bias, scale = wildcard(), wildcard(), wildcard(), wildcard(), is_const()
    scores = is_op("relax.reshape")(is_op("relax.matmul")(q, kt), wildcard())
    probs = is_op("relax.nn.softmax")(is_op("relax.add")(is_op("relax.multiply")(scores, scale), bias))
    flat = is_op("relax.reshape")(is_op("relax.broadcast_to")(probs, wildcard()), wildcard())
    return is_op("relax.matmul")(flat, v), (q, kt, v, bias, scale, scores, probs, flat)


@tvm.transform.module_pass(opt_level=0, name="edgebert.FuseAttention")
class FuseAttention:
    """Replace each attention chain of static shape by one call of the fused kernel (module docstring)."""

    def __init__(self, target: tvm.target.Target) -> None:
        self.lanes = vector_lanes(target)

    def transform_module(self, mod: tvm.IRModule, _ctx: PassContext) -> tvm.IRModule:
        pattern, (q, kt, v, bias, scale, scores, probs, flat) = _pattern()
        builder = relax.BlockBuilder(mod)
        kernels: dict[tuple, tvm.ir.GlobalVar] = {}

        def rewrite(expr: relax.Call, matches: dict) -> relax.Expr:
            shapes = [static_shape(matches[p]) for p in (q, kt, v, bias, scores, flat)]
            factor = matches[scale].value.numpy()
            if (any(s is None for s in shapes) or [len(s) for s in shapes] != [3, 3, 3, 4, 4, 3] or factor.size != 1
                    or any(matches[p].ty.dtype != "float32" for p in (q, kt, v, bias))
                    or int(matches[probs].attrs.axis) not in (-1, 3)):
                return expr
            (bh, sq, d), (bh_k, d_k, sk), (bh_v, sk_v, d_v), bias_shape, scores_shape, flat_shape = shapes
            batch = bias_shape[0]
            if (bias_shape[1:] != [1, 1, sk] or bh % batch or scores_shape != [batch, bh // batch, sq, sk]
                    or flat_shape != [bh, sq, sk] or (bh_k, d_k, bh_v, sk_v, d_v) != (bh, d, bh, sk, d)):
                return expr  # another layout: the kernel's b = bh // heads would not hold
            key = (bh, bh // batch, sq, sk, d, float(factor.reshape(())))
            if key not in kernels:
                kernels[key] = builder.add_func(attention_kernel(*key, lanes=self.lanes), "fused_attention")
            return relax.call_tir(kernels[key], [matches[p] for p in (q, kt, v, bias)],
                                  relax.TensorType((bh, sq, d), "float32"))

        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                builder.update_func(gv, relax.analysis.remove_all_unused(rewrite_call(pattern, rewrite, func)))
        return builder.get()
