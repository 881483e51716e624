"""The accelerator's arithmetic as TE compute definitions, one per pattern (built by the codegen).

Numbers on the chip: every activation tensor is stored as 16-bit fixed point with its own number
of fraction bits f (4..15: range +-2^(15-f)), chosen at compile time from calibration sentences
(formats.py) and handed to each kernel in its shift register, an int64 tensor (f, word bits,
call number): word bits 16 on the chip, 32 while calibrating, so that calibration sees the
unsaturated range. Weights and embedding tables are AdaptivFloat-8 (the host hands them over already on the
8-bit grid, see partition.QuantizeForAccelerator); any value on that grid times 2^14 is an integer.

A kernel aligns each input to Q15 in a wide register (`to_fixed`): exact for a tensor another
kernel stored in any of the formats, since the host passes activations between regions as float32
holding the 16-bit values exactly. Products and sums run in 64-bit integers (wider than the
reference's accumulators, which we do not model); the result is rounded half up to the output's
format and saturated to its word (`store`). A zero weight's bit in the mask clock-gates its
multiply (`select` on the mask below). Inputs are clamped to +-2^(15 - MIN_FRAC), the widest
range any format has, which also keeps every product and sum below 2^63 for tensors up to 2^12
wide and weights below 2^7.

Special units, all in integers except one float64 square root per LayerNorm row:
- softmax: e^d = 2^(d log2 e) on Q10 differences, 2^f by an 8-segment piecewise-linear table in
  Q15, row sum, divide; then the span vector multiply and renormalisation.
- GELU: 32 linear segments over [-4, 4] in Q10 (0 below, identity above).
- LayerNorm: integer mean and variance (Q20), 1/sqrt in float64 rounded to Q20, gamma/beta in Q15.
- entropy (the exit decision): H = ln S - sum d e^d / S over the exit's logits, d = x - max in Q10,
  e^d by the softmax unit's PWL exp, ln S from a priority encoder (the leading one of S) and an
  8-segment PWL table of log2(1 + f); the largest H over the batch's rows.
Rounding everywhere: round half up by (v + 2^(s-1)) >> s, and round-half-even from float (`round`).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import tvm
import tvm_ffi
from tvm import te, tirx

INPUT_FRAC = 15  # inputs are aligned to Q15: every 16-bit format's values are exact there
MIN_FRAC, MAX_FRAC = 4, 15  # the formats a tensor may have (+-2048 .. +-1)
WORD_BITS, CALIBRATION_BITS = 16, 32
WEIGHT_SHIFT = 14  # AdaptivFloat-8 values times 2^14 are integers
FRAC_BITS = 10  # the special units' internal fixed point (softmax differences, GELU, 1/std)
LOG2E_Q10 = round(math.log2(math.e) * 2**FRAC_BITS)
POW2_SEGMENTS = 8
POW2_TABLE = [round(2 ** (s / POW2_SEGMENTS) * 2**15) for s in range(POW2_SEGMENTS + 1)]
GELU_LIMIT_Q = 4 << FRAC_BITS
GELU_STEP_Q = 256  # 0.25 in Q10: PWL error below 0.01
GELU_SEGMENTS = 2 * GELU_LIMIT_Q // GELU_STEP_Q
INPUT_LIMIT = 2 ** (15 - MIN_FRAC + INPUT_FRAC)  # |input| < 2^11, in Q15
LOG2_SEGMENTS = 8
LOG2_TABLE = [round(math.log2(1 + s / LOG2_SEGMENTS) * 2**15) for s in range(LOG2_SEGMENTS + 1)]
LN2_Q15 = round(math.log(2) * 2**15)


def gelu_table(kind: str) -> list[int]:
    """GELU at the segment ends -4, -3.75, ..., 4 in Q10 (erf form, or the tanh form for gelu_tanh)."""
    def gelu(x: float) -> float:
        if kind == "tanh":
            return 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
        return 0.5 * x * (1 + math.erf(x / math.sqrt(2)))

    return [round(gelu((-GELU_LIMIT_Q + k * GELU_STEP_Q) / 2**FRAC_BITS) * 2**FRAC_BITS)
            for k in range(GELU_SEGMENTS + 1)]


def _i64(value: int | tirx.PrimExpr) -> tirx.PrimExpr:
    return tirx.const(value, "int64") if isinstance(value, int) else value


def to_fixed(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """float32 -> Q15 int64: scale by 2^15 (exact), clamp to the widest format's range, round half to even."""
    limit = float(INPUT_LIMIT)
    scaled = tirx.max(tirx.min(x * tirx.const(2.0**INPUT_FRAC, "float32"), tirx.const(limit, "float32")),
                      tirx.const(-limit, "float32"))
    return tirx.round(scaled).astype("int64")


def shift_round(v: tirx.PrimExpr, shift: int | tirx.PrimExpr) -> tirx.PrimExpr:
    """v / 2^shift rounded half up (arithmetic shift), shift >= 1."""
    shift = _i64(shift)
    return tirx.shift_right(v + tirx.shift_left(_i64(1), shift - _i64(1)), shift)


def rescale(v: tirx.PrimExpr, frac: int | tirx.PrimExpr, to_frac: tirx.PrimExpr) -> tirx.PrimExpr:
    """v with `frac` fraction bits -> `to_frac` fraction bits (rounded half up when bits are dropped)."""
    drop = _i64(frac) - to_frac
    return tirx.Select(drop > _i64(0), shift_round(v, tirx.max(drop, _i64(1))),
                       tirx.shift_left(v, tirx.max(-drop, _i64(0))))


def store(v: tirx.PrimExpr, frac: int | tirx.PrimExpr, register: te.Tensor) -> tirx.PrimExpr:
    """v (int64, `frac` fraction bits) in the register's format (f, word bits): rounded, saturated, as float32."""
    to_frac, bits = register[0], register[1]
    top = tirx.shift_left(_i64(1), bits - _i64(1))
    q = tirx.max(tirx.min(rescale(v, frac, to_frac), top - _i64(1)), -top)
    return q.astype("float32") / tirx.shift_left(_i64(1), to_frac).astype("float32")


def _lookup(index: tirx.PrimExpr, values: Sequence[int]) -> tirx.PrimExpr:
    """values[index] for a small constant table, as a select chain."""
    out = _i64(values[-1])
    for i in range(len(values) - 2, -1, -1):
        out = tirx.Select(index == _i64(i), _i64(values[i]), out)
    return out


def gelu_pwl(q: tirx.PrimExpr, table: Sequence[int]) -> tirx.PrimExpr:
    """GELU of a Q10 value, in Q10."""
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


def _divide_round(numerator: tirx.PrimExpr, denominator: tirx.PrimExpr, frac: tirx.PrimExpr) -> tirx.PrimExpr:
    """round-half-up(numerator * 2^frac / denominator) for numerator >= 0, denominator > 0."""
    return tirx.floordiv(tirx.shift_left(numerator, frac + _i64(1)) + denominator, denominator * _i64(2))


def dense(x: te.Tensor, weight: te.Tensor, bias: te.Tensor, register: te.Tensor, gelu: str | None) -> te.Tensor:
    """y = x W + b (+ GELU) on the MAC array; x (..., K) float32, W (K, N) on the AF8 grid."""
    *lead, inner = x.shape
    cols = weight.shape[1]
    xq = te.compute(x.shape, lambda *i: to_fixed(x(*i)), name="x_q15")
    # column-major integer weights, so the reduction reads both operands contiguously
    wq = te.compute((cols, inner), lambda n, k: tirx.round(weight[k, n] * tirx.const(2.0**WEIGHT_SHIFT, "float32"))
                    .astype("int64"), name="w_int")
    k = te.reduce_axis((0, inner), name="k")
    acc = te.compute((*lead, cols), lambda *i: te.sum(
        tirx.Select(wq[i[-1], k] != _i64(0), xq(*i[:-1], k) * wq[i[-1], k], _i64(0)), axis=k), name="acc")
    acc_frac = INPUT_FRAC + WEIGHT_SHIFT
    table = gelu_table(gelu) if gelu else None

    def out(*i: tirx.PrimExpr) -> tirx.PrimExpr:
        total = acc(*i) + tirx.shift_left(to_fixed(bias[i[-1]]), _i64(WEIGHT_SHIFT))  # the bias enters the accumulator
        if table is None:
            return store(total, acc_frac, register)
        return store(gelu_pwl(shift_round(total, acc_frac - FRAC_BITS), table), FRAC_BITS, register)

    return te.compute((*lead, cols), out, name="dense")


SCALE_BITS = 16  # a folded scalar scale (1/sqrt(head_dim)) in Q16


def attention_matmul(a: te.Tensor, b: te.Tensor, register: te.Tensor, scale: te.Tensor | None = None,
                     out_shape: Sequence[int] | None = None) -> te.Tensor:
    """Batched activation x activation matmul (P V; Q K^T times a folded scale) on the MAC array;
    `out_shape` views the (batch, rows, cols) result as the model's shape (a reshape, free on the chip)."""
    batch, rows, inner = a.shape
    cols = b.shape[2]
    aq = te.compute(a.shape, lambda *i: to_fixed(a(*i)), name="a_q15")
    bq = te.compute((batch, cols, inner), lambda z, j, k: to_fixed(b[z, k, j]), name="b_q15")
    k = te.reduce_axis((0, inner), name="k")
    acc = te.compute((batch, rows, cols), lambda z, i, j: te.sum(aq[z, i, k] * bq[z, j, k], axis=k), name="acc")
    if scale is None:
        return te.compute((batch, rows, cols), lambda *i: store(acc(*i), 2 * INPUT_FRAC, register),
                          name="attention_matmul")
    scale_q = tirx.round(scale() * tirx.const(2.0**SCALE_BITS, "float32")).astype("int64")  # the scale register
    shape = list(out_shape) if out_shape is not None else [batch, rows, cols]

    def scaled(*i: tirx.PrimExpr) -> tirx.PrimExpr:
        flat = 0
        for index, extent in zip(i, shape):
            flat = flat * extent + index
        z, rest = tirx.floordiv(flat, rows * cols), tirx.floormod(flat, rows * cols)
        value = shift_round(acc[z, tirx.floordiv(rest, cols), tirx.floormod(rest, cols)], INPUT_FRAC)  # Q15
        return store(value * scale_q, INPUT_FRAC + SCALE_BITS, register)

    return te.compute(shape, scaled, name="attention_scores")


def _row_reduce(shape: Sequence[tirx.PrimExpr], body: Callable, combine: Callable, name: str) -> te.Tensor:
    j = te.reduce_axis((0, shape[-1]), name=f"{name}_j")
    return te.compute(tuple(shape[:-1]), lambda *i: combine(body(*i, j), axis=j), name=name)


def softmax(x: te.Tensor, span: te.Tensor | None, register: te.Tensor) -> te.Tensor:
    """Softmax over the last axis (PWL exp); with `span` (1, heads, 1 or rows, keys): times span, renormalised."""
    shape = x.shape
    to_frac = register[0]
    q = te.compute(shape, lambda *i: shift_round(to_fixed(x(*i)), INPUT_FRAC - FRAC_BITS), name="x_q10")
    peak = _row_reduce(shape, lambda *i: q(*i), te.max, "peak")
    e = te.compute(shape, lambda *i: exp_pwl_q15(q(*i) - peak(*i[:-1])), name="exp_q15")
    total = _row_reduce(shape, lambda *i: e(*i), te.sum, "total")
    p = te.compute(shape, lambda *i: _divide_round(e(*i), total(*i[:-1]), to_frac), name="probs")
    if span is None:
        return te.compute(shape, lambda *i: store(p(*i), to_frac, register), name="softmax")
    by_row = int(span.shape[2]) > 1  # distance spans: a mask per query row
    masked = te.compute(shape, lambda z, h, r, c: shift_round(
        p[z, h, r, c] * to_fixed(span[0, h, r if by_row else 0, c]), INPUT_FRAC), name="masked")
    kept = _row_reduce(shape, lambda *i: masked(*i), te.sum, "kept")
    return te.compute(shape, lambda *i: store(tirx.Select(
        kept(*i[:-1]) > _i64(0), _divide_round(masked(*i), tirx.max(kept(*i[:-1]), _i64(1)), to_frac), _i64(0)),
        to_frac, register), name="softmax_span")


def log2_pwl_q15(s: tirx.PrimExpr, max_shift: int) -> tirx.PrimExpr:
    """log2 of a Q15 value 1 <= s < 2^(max_shift + 1), in Q15: the leading one's position k (a priority
    encoder), then the PWL table on the mantissa s / 2^k (truncated to Q15)."""
    k = _i64(0)
    for bit in range(1, max_shift + 1):
        k = k + tirx.Select(s >= _i64(2 ** (15 + bit)), _i64(1), _i64(0))
    frac = tirx.shift_right(s, k) - _i64(2**15)
    step = 2**15 // LOG2_SEGMENTS
    seg = tirx.floordiv(frac, _i64(step))
    start = _lookup(seg, LOG2_TABLE[:-1])
    slope = _lookup(seg, [b - a for a, b in zip(LOG2_TABLE[:-1], LOG2_TABLE[1:])])
    return tirx.shift_left(k, _i64(15)) + start + tirx.floordiv(slope * (frac - seg * _i64(step)) + _i64(step // 2),
                                                                 _i64(step))


def exit_entropy(logits: te.Tensor, register: te.Tensor) -> te.Tensor:
    """The largest entropy (nats) of softmax(row) over the rows of (rows, labels) exit logits."""
    shape = logits.shape
    labels = int(shape[-1])
    q = te.compute(shape, lambda *i: shift_round(to_fixed(logits(*i)), INPUT_FRAC - FRAC_BITS), name="x_q10")
    peak = _row_reduce(shape, lambda *i: q(*i), te.max, "peak")
    e = te.compute(shape, lambda *i: exp_pwl_q15(q(*i) - peak(*i[:-1])), name="exp_q15")
    total = _row_reduce(shape, lambda *i: e(*i), te.sum, "total")  # Q15, >= 1: the peak's e^0
    moment = _row_reduce(shape, lambda *i: (q(*i) - peak(*i[:-1])) * e(*i), te.sum, "moment")  # Q25, <= 0
    entropy = te.compute(tuple(shape[:-1]), lambda *i: shift_round(
        log2_pwl_q15(total(*i), labels.bit_length()) * _i64(LN2_Q15), 15)
        + _divide_round(-moment(*i), total(*i), _i64(INPUT_FRAC - FRAC_BITS)), name="entropy_q15")
    r = te.reduce_axis((0, shape[0]), name="r")
    largest = te.compute((), lambda: te.max(entropy[r], axis=r), name="largest")
    return te.compute((), lambda: store(largest(), INPUT_FRAC, register), name="exit_entropy")


INV_STD_BITS = 20  # 1/std in Q20: relative error below 1e-4 for std up to 100
INV_STD_LIMIT_BITS = 35  # caps 1/std at 2^15 so that centred * 1/std stays below 2^63


def layernorm(x: te.Tensor, gamma: te.Tensor, beta: te.Tensor, register: te.Tensor, epsilon: float) -> te.Tensor:
    """LayerNorm over the last axis: integer statistics (variance in Q20), one float64 rsqrt per row."""
    shape = x.shape
    width = int(shape[-1])
    q = te.compute(shape, lambda *i: to_fixed(x(*i)), name="x_q15")
    total = _row_reduce(shape, lambda *i: q(*i), te.sum, "total")
    mean = te.compute(tuple(shape[:-1]), lambda *i: tirx.floordiv(total(*i) * _i64(2) + _i64(width), _i64(2 * width)),
                      name="mean")
    centred = te.compute(shape, lambda *i: q(*i) - mean(*i[:-1]), name="centred")
    coarse = te.compute(shape, lambda *i: shift_round(centred(*i), INPUT_FRAC - FRAC_BITS), name="centred_q10")
    var = _row_reduce(shape, lambda *i: coarse(*i) * coarse(*i), te.sum, "var_sum")
    eps_q20 = tirx.const(epsilon * 2.0 ** (2 * FRAC_BITS), "float64")
    inv = te.compute(tuple(shape[:-1]), lambda *i: tirx.min(tirx.round(
        tirx.const(2.0 ** (FRAC_BITS + INV_STD_BITS), "float64")
        / tirx.sqrt(tirx.floordiv(var(*i), _i64(width)).astype("float64") + eps_q20)),
        tirx.const(2.0**INV_STD_LIMIT_BITS, "float64")).astype("int64"), name="inv_std")

    def out(*i: tirx.PrimExpr) -> tirx.PrimExpr:
        normed = shift_round(centred(*i) * inv(*i[:-1]), INV_STD_BITS)  # Q15
        value = normed * to_fixed(gamma[i[-1]]) + tirx.shift_left(to_fixed(beta[i[-1]]), _i64(INPUT_FRAC))
        return store(value, 2 * INPUT_FRAC, register)

    return te.compute(shape, out, name="layernorm")


def residual_add(a: te.Tensor, b: te.Tensor, register: te.Tensor) -> te.Tensor:
    return te.compute(a.shape, lambda *i: store(to_fixed(a(*i)) + to_fixed(b(*i)), INPUT_FRAC, register),
                      name="residual_add")


def embedding(table: te.Tensor, ids: te.Tensor, register: te.Tensor) -> te.Tensor:
    """Rows of the AdaptivFloat-8 table (eNVM) as activations in the register's format."""
    return te.compute((ids.shape[0], table.shape[1]), lambda t, w: store(to_fixed(table[ids[t], w]), INPUT_FRAC, register),
                      name="embedding")


# TIR passes that take half of the kernels' build time (measured: 7 of 14 s for a 2-layer model)
# and change nothing these unscheduled loop nests need: they hoist and drop conditions and no-ops.
SLOW_UNNEEDED_PASSES = ["s_tir.HoistIfThenElse", "tirx.RemoveNoOp"]


def kernel_func(name: str, inputs: list[te.Tensor], output: te.Tensor) -> tirx.PrimFunc:
    """The PrimFunc `name`(inputs..., output), in destination-passing style."""
    return te.create_prim_func([*inputs, output]).with_attr("global_symbol", name)


# Kernel libraries built in this process. A chip compile builds the same kernels for its format
# calibration, its exit calibration and the artifact (formats are kernel arguments, not constants):
# the later builds, 3-4 s each for a 2-layer model, reuse the first library, JIT-compiled once.
_BUILT: list[tuple[tvm.IRModule, str, tvm.runtime.Module]] = []
_BUILT_LIMIT = 4


def build_kernels(kernels: dict[str, tirx.PrimFunc], target: tvm.target.Target) -> tvm.runtime.Module:
    """One host library holding every kernel: one lowering and one LLVM module for all of them."""
    mod, target_key = tvm.IRModule(kernels), str(target)
    for built_mod, built_target, library in _BUILT:
        if built_target == target_key and tvm_ffi.structural_equal(built_mod, mod, map_free_vars=True):
            return library
    with tvm.transform.PassContext(opt_level=3, disabled_pass=SLOW_UNNEEDED_PASSES):
        library = tvm.tirx.build(mod, target=target)
    _BUILT[:] = [*_BUILT[-(_BUILT_LIMIT - 1):], (mod, target_key, library)]
    return library
