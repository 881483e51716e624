"""The accelerator's arithmetic as TE compute definitions, one per pattern (built by the codegen).

Numbers on the chip: activations are 16-bit fixed point with 10 fraction bits (Q10, saturating);
weights and embedding tables are AdaptivFloat-8 (the host hands them over already on the 8-bit grid,
see partition.QuantizeAcceleratorWeights). Any value on that grid times 2^14 is an integer
(value = +-(16 + man) * 2^(exp + b - 14) with exp, b >= 0), so the MAC array works in integers:
products of Q10 activations and 2^14-scaled weights summed exactly in 64 bits (wider than the
reference's accumulators, which we do not model), rounded half-up back to Q10 and saturated.
A zero weight's bit in the mask clock-gates its multiply (`select` on the mask below).

Special units, all in integers except one float64 square root per LayerNorm row:
- softmax: e^d = 2^(d log2 e), 2^f by an 8-segment piecewise-linear table in Q15, row sum, divide;
  then the span vector multiply and renormalisation.
- GELU: 32 linear segments over [-4, 4] in Q10 (0 below, identity above).
- LayerNorm: integer mean and variance, 1/sqrt in float64 rounded to Q10, gamma/beta in Q10.
Rounding everywhere: round half up by (v + 2^(s-1)) >> s, and round-half-even from float (`round`).
Region inputs and outputs are float32 holding Q10 values exactly (q / 1024), so a value passed
through the host between two regions is unchanged.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import tvm
from tvm import te, tirx

FRAC_BITS = 10
Q_MIN, Q_MAX = -(2**15), 2**15 - 1
WEIGHT_SHIFT = 14  # AdaptivFloat-8 values times 2^14 are integers
LOG2E_Q10 = round(math.log2(math.e) * 2**FRAC_BITS)
POW2_SEGMENTS = 8
POW2_TABLE = [round(2 ** (s / POW2_SEGMENTS) * 2**15) for s in range(POW2_SEGMENTS + 1)]
GELU_LIMIT_Q = 4 << FRAC_BITS
GELU_STEP_Q = 256  # 0.25 in Q10: PWL error below 0.01
GELU_SEGMENTS = 2 * GELU_LIMIT_Q // GELU_STEP_Q


def gelu_table(kind: str) -> list[int]:
    """GELU at the segment ends -4, -3.75, ..., 4 in Q10 (erf form, or the tanh form for gelu_tanh)."""
    def gelu(x: float) -> float:
        if kind == "tanh":
            return 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
        return 0.5 * x * (1 + math.erf(x / math.sqrt(2)))

    return [round(gelu((-GELU_LIMIT_Q + k * GELU_STEP_Q) / 2**FRAC_BITS) * 2**FRAC_BITS)
            for k in range(GELU_SEGMENTS + 1)]


def _i64(value: int) -> tirx.PrimExpr:
    return tirx.const(value, "int64")


def to_q10(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """float32 -> Q10 int64: scale by 2^10 (exact), saturate, round half to even."""
    scaled = tirx.max(tirx.min(x * tirx.const(2.0**FRAC_BITS, "float32"), tirx.const(Q_MAX, "float32")),
                      tirx.const(Q_MIN, "float32"))
    return tirx.round(scaled).astype("int64")


def from_q10(q: tirx.PrimExpr) -> tirx.PrimExpr:
    return q.astype("float32") * tirx.const(2.0**-FRAC_BITS, "float32")


def saturate(v: tirx.PrimExpr) -> tirx.PrimExpr:
    return tirx.max(tirx.min(v, _i64(Q_MAX)), _i64(Q_MIN))


def shift_round(v: tirx.PrimExpr, shift: int) -> tirx.PrimExpr:
    """v / 2^shift rounded half up (arithmetic shift)."""
    return tirx.shift_right(v + _i64(1 << (shift - 1)), _i64(shift))


def _lookup(index: tirx.PrimExpr, values: Sequence[int]) -> tirx.PrimExpr:
    """values[index] for a small constant table, as a select chain."""
    out = _i64(values[-1])
    for i in range(len(values) - 2, -1, -1):
        out = tirx.Select(index == _i64(i), _i64(values[i]), out)
    return out


def gelu_pwl(q: tirx.PrimExpr, table: Sequence[int]) -> tirx.PrimExpr:
    seg = tirx.floordiv(tirx.max(tirx.min(q, _i64(GELU_LIMIT_Q - 1)), _i64(-GELU_LIMIT_Q)) + _i64(GELU_LIMIT_Q),
                        _i64(GELU_STEP_Q))
    start = _lookup(seg, table[:-1])
    slope = _lookup(seg, [b - a for a, b in zip(table[:-1], table[1:])])
    offset = q + _i64(GELU_LIMIT_Q) - seg * _i64(GELU_STEP_Q)
    inside = start + tirx.floordiv(slope * offset + _i64(GELU_STEP_Q // 2), _i64(GELU_STEP_Q))
    return tirx.Select(q < _i64(-GELU_LIMIT_Q), _i64(0), tirx.Select(q >= _i64(GELU_LIMIT_Q), q, inside))


def exp_pwl_q15(d: tirx.PrimExpr) -> tirx.PrimExpr:
    """e^(d / 2^10) for d <= 0, in Q15: 2^t with t = d log2(e) in Q10, 2^frac from the PWL table."""
    t = tirx.floordiv(d * _i64(LOG2E_Q10), _i64(2**FRAC_BITS))
    whole = tirx.floordiv(t, _i64(2**FRAC_BITS))
    frac = t - whole * _i64(2**FRAC_BITS)
    step = 2**FRAC_BITS // POW2_SEGMENTS
    seg = tirx.floordiv(frac, _i64(step))
    start = _lookup(seg, POW2_TABLE[:-1])
    slope = _lookup(seg, [b - a for a, b in zip(POW2_TABLE[:-1], POW2_TABLE[1:])])
    value = start + tirx.floordiv(slope * (frac - seg * _i64(step)) + _i64(step // 2), _i64(step))
    return tirx.shift_right(value, tirx.min(-whole, _i64(62)))


def _divide_round(numerator: tirx.PrimExpr, denominator: tirx.PrimExpr) -> tirx.PrimExpr:
    """round-half-up(numerator * 2^10 / denominator) for numerator >= 0, denominator > 0."""
    return tirx.floordiv(numerator * _i64(2 ** (FRAC_BITS + 1)) + denominator, denominator * _i64(2))


def dense(x: te.Tensor, weight: te.Tensor, bias: te.Tensor, gelu: str | None) -> te.Tensor:
    """y = x W + b (+ GELU) on the MAC array; x (..., K) float32, W (K, N) on the AF8 grid."""
    *lead, inner = x.shape
    cols = weight.shape[1]
    xq = te.compute(x.shape, lambda *i: to_q10(x(*i)), name="x_q10")
    # column-major integer weights, so the reduction reads both operands contiguously
    wq = te.compute((cols, inner), lambda n, k: tirx.round(weight[k, n] * tirx.const(2.0**WEIGHT_SHIFT, "float32"))
                    .astype("int64"), name="w_int")
    k = te.reduce_axis((0, inner), name="k")
    acc = te.compute((*lead, cols), lambda *i: te.sum(
        tirx.Select(wq[i[-1], k] != _i64(0), xq(*i[:-1], k) * wq[i[-1], k], _i64(0)), axis=k), name="acc")
    table = gelu_table(gelu) if gelu else None

    def out(*i: tirx.PrimExpr) -> tirx.PrimExpr:
        y = saturate(shift_round(acc(*i), WEIGHT_SHIFT) + to_q10(bias[i[-1]]))
        return from_q10(gelu_pwl(y, table) if table else y)

    return te.compute((*lead, cols), out, name="dense")


SCALE_BITS = 16  # a folded scalar scale (1/sqrt(head_dim)) in Q16


def attention_matmul(a: te.Tensor, b: te.Tensor, scale: te.Tensor | None = None,
                     out_shape: Sequence[int] | None = None) -> te.Tensor:
    """Batched Q10 x Q10 matmul (P V; Q K^T times a folded scale) on the MAC array; `out_shape`
    views the (batch, rows, cols) result as the model's shape (a reshape, free on the chip)."""
    batch, rows, inner = a.shape
    cols = b.shape[2]
    aq = te.compute(a.shape, lambda *i: to_q10(a(*i)), name="a_q10")
    bq = te.compute((batch, cols, inner), lambda z, j, k: to_q10(b[z, k, j]), name="b_q10")
    k = te.reduce_axis((0, inner), name="k")
    acc = te.compute((batch, rows, cols), lambda z, i, j: te.sum(aq[z, i, k] * bq[z, j, k], axis=k), name="acc")
    if scale is None:
        return te.compute((batch, rows, cols), lambda *i: from_q10(saturate(shift_round(acc(*i), FRAC_BITS))),
                          name="attention_matmul")
    scale_q = tirx.round(scale() * tirx.const(2.0**SCALE_BITS, "float32")).astype("int64")  # the scale register
    shape = list(out_shape) if out_shape is not None else [batch, rows, cols]

    def scaled(*i: tirx.PrimExpr) -> tirx.PrimExpr:
        flat = 0
        for index, extent in zip(i, shape):
            flat = flat * extent + index
        z, rest = tirx.floordiv(flat, rows * cols), tirx.floormod(flat, rows * cols)
        value = acc[z, tirx.floordiv(rest, cols), tirx.floormod(rest, cols)]
        return from_q10(saturate(shift_round(value * scale_q, FRAC_BITS + SCALE_BITS)))

    return te.compute(shape, scaled, name="attention_scores")


def _row_reduce(shape: Sequence[tirx.PrimExpr], body: Callable, combine: Callable, name: str) -> te.Tensor:
    j = te.reduce_axis((0, shape[-1]), name=f"{name}_j")
    return te.compute(tuple(shape[:-1]), lambda *i: combine(body(*i, j), axis=j), name=name)


def softmax(x: te.Tensor, span: te.Tensor | None) -> te.Tensor:
    """Softmax over the last axis (PWL exp); with `span` (1, heads, 1, keys): times span, renormalised."""
    shape = x.shape
    q = te.compute(shape, lambda *i: to_q10(x(*i)), name="x_q10")
    peak = _row_reduce(shape, lambda *i: q(*i), te.max, "peak")
    e = te.compute(shape, lambda *i: exp_pwl_q15(q(*i) - peak(*i[:-1])), name="exp_q15")
    total = _row_reduce(shape, lambda *i: e(*i), te.sum, "total")
    p = te.compute(shape, lambda *i: _divide_round(e(*i), total(*i[:-1])), name="probs")
    if span is None:
        return te.compute(shape, lambda *i: from_q10(p(*i)), name="softmax")
    masked = te.compute(shape, lambda z, h, r, c: shift_round(p[z, h, r, c] * to_q10(span[0, h, 0, c]), FRAC_BITS),
                        name="masked")
    kept = _row_reduce(shape, lambda *i: masked(*i), te.sum, "kept")
    return te.compute(shape, lambda *i: from_q10(tirx.Select(
        kept(*i[:-1]) > _i64(0), _divide_round(masked(*i), tirx.max(kept(*i[:-1]), _i64(1))), _i64(0))),
        name="softmax_span")


def layernorm(x: te.Tensor, gamma: te.Tensor, beta: te.Tensor, epsilon: float) -> te.Tensor:
    """LayerNorm over the last axis in Q10 (integer statistics, one float64 rsqrt per row)."""
    shape = x.shape
    width = int(shape[-1])
    q = te.compute(shape, lambda *i: to_q10(x(*i)), name="x_q10")
    total = _row_reduce(shape, lambda *i: q(*i), te.sum, "total")
    mean = te.compute(tuple(shape[:-1]), lambda *i: tirx.floordiv(total(*i) * _i64(2) + _i64(width), _i64(2 * width)),
                      name="mean")
    centred = te.compute(shape, lambda *i: q(*i) - mean(*i[:-1]), name="centred")
    var = _row_reduce(shape, lambda *i: centred(*i) * centred(*i), te.sum, "var_sum")
    eps_q20 = tirx.const(epsilon * 2.0 ** (2 * FRAC_BITS), "float64")
    inv = te.compute(tuple(shape[:-1]), lambda *i: tirx.min(tirx.round(
        tirx.const(2.0 ** (2 * FRAC_BITS), "float64")
        / tirx.sqrt(tirx.floordiv(var(*i), _i64(width)).astype("float64") + eps_q20)), tirx.const(2.0**31, "float64"))
        .astype("int64"), name="inv_std_q10")

    def out(*i: tirx.PrimExpr) -> tirx.PrimExpr:
        normed = shift_round(centred(*i) * inv(*i[:-1]), FRAC_BITS)
        return from_q10(saturate(shift_round(normed * to_q10(gamma[i[-1]]), FRAC_BITS) + to_q10(beta[i[-1]])))

    return te.compute(shape, out, name="layernorm")


def residual_add(a: te.Tensor, b: te.Tensor) -> te.Tensor:
    return te.compute(a.shape, lambda *i: from_q10(saturate(to_q10(a(*i)) + to_q10(b(*i)))), name="residual_add")


def embedding(table: te.Tensor, ids: te.Tensor) -> te.Tensor:
    """Rows of the AdaptivFloat-8 table (eNVM) as Q10 activations."""
    return te.compute((ids.shape[0], table.shape[1]), lambda t, w: from_q10(to_q10(table[ids[t], w])), name="embedding")


def build_kernel(name: str, inputs: list[te.Tensor], output: te.Tensor, target: tvm.target.Target) -> tvm.runtime.Module:
    """A PrimFunc `name`(inputs..., output) in destination-passing style, built for the host."""
    func = te.create_prim_func([*inputs, output]).with_attr("global_symbol", name)
    return tvm.tirx.build(tvm.IRModule({name: func}), target=target)
