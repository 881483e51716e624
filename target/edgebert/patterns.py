"""Pattern table of the EdgeBERT accelerator: what its processing units and special units run.

Each entry (`AcceleratorPattern`) is one thing the chip runs, defined once: how it is matched (a
pattern and its annotations, as in TVM's BYOC pattern modules, relax/backend/contrib/example_npu),
when it applies (the check), what the chip computes for it (its kernel, a TE definition of the
chip's arithmetic in `functional.py`, used by the codegen) and what it costs (its operation for the
cycle and energy model, used by the partitioner). Registered once, under the prefix `edgebert.`;
later entries win when patterns overlap, so fused patterns come last.

- dense, dense_gelu: matmul by a constant weight + constant bias (+ GELU) on the PU array
  (AdaptivFloat-8 weights, zero weights clock-gated by the bitmask).
- attention_matmul, attention_scores: activation x activation matmul (P V; Q K^T with the
  1/sqrt(head_dim) scale folded in, so the unscaled scores never need to fit 16 bits) on the PU array.
- softmax, softmax_span: the softmax unit, with the span-vector multiply and renormalisation.
- layernorm, residual_add: the LayerNorm and element-wise add special units.
- embedding: a row lookup in a constant table, held in ReRAM eNVM.
- exit_entropy: the entropy unit's exit statistic, the largest entropy of softmax(logits) over the
  batch (FoldEntropyExit's entropy kernel, written as Relax ops by partition.ExpandExitEntropy so
  that it is matched like the rest); the host compares it with the threshold. It runs in `main`,
  not in a block, so the cost model charges it per exit checked (sentence.py), with this op.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import tvm
from tvm import relax, te
from tvm.ir.expr import Constant
from tvm.relax.backend.pattern_registry import get_patterns_with_prefix, register_patterns
from tvm.relax.dpl import DFPattern, is_const, is_op, wildcard
from tvm.relax.transform import PatternCheckContext

from . import functional
from .cost import ActMatmul, Add, Dense, Embedding, Entropy, LayerNorm, Op, Softmax

PREFIX = "edgebert"


def static_shape(expr: relax.Expr) -> list[int] | None:
    """Static shape of a tensor expression, None if unknown or symbolic."""
    shape = getattr(expr.ty, "shape", None)
    if shape is None or not all(hasattr(d, "value") for d in shape):
        return None
    return [int(d.value) for d in shape]


def _float32(*exprs: relax.Expr) -> bool:
    return all(getattr(e.ty, "dtype", None) == "float32" and static_shape(e) is not None for e in exprs)


def _dense_body():
    x, weight, bias = wildcard(), is_const(), is_const()
    matmul = is_op("relax.matmul")(x, weight)
    out = is_op("relax.add")(matmul, bias) | is_op("relax.add")(bias, matmul)
    return out, {"input": x, "weight": weight, "bias": bias, "matmul": matmul}


def _check_dense(context: PatternCheckContext) -> bool:
    x, weight, bias = (context.annotated_expr[k] for k in ("input", "weight", "bias"))
    w_shape, b_shape = static_shape(weight), static_shape(bias)
    return (_float32(x, weight, bias) and len(w_shape) == 2 and b_shape == [w_shape[1]]
            and len(static_shape(x)) >= 2)


def dense_pattern():
    out, annotations = _dense_body()
    return (f"{PREFIX}.dense", out, {**annotations, "root": out}, _check_dense)


def dense_gelu_pattern():
    dense, annotations = _dense_body()
    out = is_op("relax.nn.gelu")(dense) | is_op("relax.nn.gelu_tanh")(dense)
    return (f"{PREFIX}.dense_gelu", out, {**annotations, "dense": dense, "root": out}, _check_dense)


def _check_attention_matmul(context: PatternCheckContext) -> bool:
    lhs, rhs = context.annotated_expr["lhs"], context.annotated_expr["rhs"]
    if isinstance(lhs, Constant) or isinstance(rhs, Constant) or not _float32(lhs, rhs):
        return False
    ls, rs = static_shape(lhs), static_shape(rhs)
    return len(ls) == len(rs) == 3 and ls[0] == rs[0]


def attention_matmul_pattern():
    a, b = wildcard(), wildcard()
    out = is_op("relax.matmul")(a, b)
    return (f"{PREFIX}.attention_matmul", out, {"lhs": a, "rhs": b, "root": out}, _check_attention_matmul)


def attention_scores_pattern():
    """(Q K^T) * scale, where the model reshapes the batched product back to (batch, heads, ...) first."""
    a, b, scale = wildcard(), wildcard(), is_const()
    matmul = is_op("relax.matmul")(a, b)
    out = is_op("relax.multiply")(is_op("relax.reshape")(matmul, wildcard()), scale)

    def check(context: PatternCheckContext) -> bool:
        value = context.annotated_expr["scale"]
        return _check_attention_matmul(context) and _float32(value) and math.prod(static_shape(value)) == 1

    return (f"{PREFIX}.attention_scores", out, {"lhs": a, "rhs": b, "scale": scale, "root": out}, check)


def _check_softmax(context: PatternCheckContext) -> bool:
    call = context.annotated_expr["softmax"]
    rank = len(static_shape(call) or [])
    return _float32(call) and int(call.attrs.axis) in (-1, rank - 1)


def softmax_pattern():
    x = wildcard()
    out = is_op("relax.nn.softmax")(x)
    return (f"{PREFIX}.softmax", out, {"input": x, "softmax": out, "root": out}, _check_softmax)


def softmax_span_pattern():
    """softmax(x) * span, renormalised: probs / (sum(probs) + eps), as the model writes it (the span
    vector, or distance spans' mask per row, is computed on the host from the learned z and loaded
    into the aux buffer)."""
    x, span, eps = wildcard(), wildcard(), is_const()
    softmax = is_op("relax.nn.softmax")(x)
    masked = is_op("relax.multiply")(softmax, span)
    total = is_op("relax.add")(is_op("relax.sum")(masked), eps)
    out = is_op("relax.divide")(masked, total)

    def check(context: PatternCheckContext) -> bool:
        shape, span_shape = static_shape(context.annotated_expr["softmax"]), static_shape(context.annotated_expr["span"])
        if not _float32(context.annotated_expr["span"]):
            return False
        # (1, heads, 1, keys) against (batch, heads, rows, keys): key spans' vector broadcasts over rows;
        # distance spans have a row per query
        return (_check_softmax(context) and len(shape) == 4 and len(span_shape) == 4
                and span_shape[2] in (1, shape[2]) and span_shape[3] == shape[3] and span_shape[1] == shape[1])

    annotations = {"input": x, "softmax": softmax, "span": span, "eps": eps, "masked": masked, "root": out}
    return (f"{PREFIX}.softmax_span", out, annotations, check)


def layernorm_pattern():
    x, gamma, beta = wildcard(), is_const(), is_const()
    out = is_op("relax.nn.layer_norm")(x, gamma, beta)

    def check(context: PatternCheckContext) -> bool:
        call = context.annotated_expr["root"]
        axes = [int(a) for a in call.attrs.axes]
        return _float32(context.annotated_expr["input"]) and axes in ([-1], [len(static_shape(call)) - 1])

    return (f"{PREFIX}.layernorm", out, {"input": x, "gamma": gamma, "beta": beta, "root": out}, check)


def residual_add_pattern():
    a, b = wildcard(), wildcard()
    out = is_op("relax.add")(a, b)

    def check(context: PatternCheckContext) -> bool:
        lhs, rhs = context.annotated_expr["lhs"], context.annotated_expr["rhs"]
        if isinstance(lhs, Constant) or isinstance(rhs, Constant):
            return False
        return _float32(lhs, rhs) and static_shape(lhs) == static_shape(rhs)

    return (f"{PREFIX}.residual_add", out, {"lhs": a, "rhs": b, "root": out}, check)


def embedding_pattern():
    table, ids = is_const(), wildcard()
    out = is_op("relax.take")(table, ids)

    def check(context: PatternCheckContext) -> bool:
        call, table_expr = context.annotated_expr["root"], context.annotated_expr["table"]
        ids_expr = context.annotated_expr["ids"]
        return (_float32(table_expr) and len(static_shape(table_expr)) == 2 and int(call.attrs.axis) == 0
                and getattr(ids_expr.ty, "dtype", "") in ("int32", "int64") and len(static_shape(ids_expr) or []) == 1)

    return (f"{PREFIX}.embedding", out, {"table": table, "ids": ids, "root": out}, check)


def exit_entropy_pattern():
    """max over rows of -sum(softmax(x) * log_softmax(x)), as ExpandExitEntropy writes it."""
    x = wildcard()
    probs, log_probs = is_op("relax.nn.softmax")(x), is_op("relax.nn.log_softmax")(x)
    out = is_op("relax.max")(is_op("relax.negative")(is_op("relax.sum")(is_op("relax.multiply")(probs, log_probs))))

    def check(context: PatternCheckContext) -> bool:
        return _check_softmax(context) and len(static_shape(context.annotated_expr["input"])) == 2

    return (f"{PREFIX}.exit_entropy", out, {"input": x, "softmax": probs, "root": out}, check)


# What the chip computes for each pattern (the codegen builds it), and what one call costs.


class Region:
    """A matched region's composite function, with a TE placeholder for each of its parameters."""

    def __init__(self, composite: relax.Function) -> None:
        self.composite = composite
        self.tensors = {param: te.placeholder([int(d) for d in param.ty.shape], dtype=param.ty.dtype, name=param.name)
                        for param in composite.params}
        self.calls: dict[str, relax.Call] = {}  # op name -> its call (each op appears once in our patterns)

        def visit(expr: relax.Expr) -> None:
            if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
                self.calls[expr.op.name] = expr

        relax.analysis.post_order_visit(composite.body, visit)

    @property
    def inputs(self) -> list[te.Tensor]:
        return [self.tensors[p] for p in self.composite.params]

    def arg(self, op: str, index: int) -> te.Tensor:
        return self.tensors[self.calls[op].args[index]]

    @property
    def register(self) -> te.Tensor:
        """The shift register (output fraction bits, word bits, call number): the last parameter (formats.py)."""
        return self.tensors[self.composite.params[-1]]


def _dense_kernel(region: Region) -> te.Tensor:
    bias = next(a for a in region.calls["relax.add"].args if a in region.tensors)
    gelu = None
    if "relax.nn.gelu_tanh" in region.calls:
        gelu = "tanh"
    elif "relax.nn.gelu" in region.calls:
        gelu = "erf"
    return functional.dense(region.arg("relax.matmul", 0), region.arg("relax.matmul", 1), region.tensors[bias],
                            region.register, gelu)


def _dense_cost(args: list[relax.Expr]) -> Op:
    x = static_shape(args[0])
    weight = next(a for a in args if isinstance(a, Constant) and len(static_shape(a)) == 2)
    inner, cols = static_shape(weight)
    return Dense(math.prod(x[:-1]), inner, cols, int(np.count_nonzero(weight.value.numpy())))


def _dense_gelu_cost(args: list[relax.Expr]) -> Op:
    return dataclasses.replace(_dense_cost(args), gelu=True)


def _attention_kernel(region: Region) -> te.Tensor:
    a, b = region.arg("relax.matmul", 0), region.arg("relax.matmul", 1)
    if "relax.multiply" not in region.calls:
        return functional.attention_matmul(a, b, region.register)
    multiply = region.calls["relax.multiply"]
    return functional.attention_matmul(a, b, region.register, region.arg("relax.multiply", 1),
                                       [int(d) for d in multiply.ty.shape])


def _attention_cost(args: list[relax.Expr]) -> Op:
    (batch, rows, inner), (_, _, cols) = static_shape(args[0]), static_shape(args[1])
    return ActMatmul(batch, rows, inner, cols)


def _softmax_kernel(region: Region) -> te.Tensor:
    span = region.arg("relax.multiply", 1) if "relax.multiply" in region.calls else None
    return functional.softmax(region.arg("relax.nn.softmax", 0), span, region.register)


def _rows_cost(op: type[Softmax] | type[LayerNorm]) -> Callable[[list[relax.Expr]], Op]:
    def cost(args: list[relax.Expr]) -> Op:
        shape = static_shape(args[0])
        return op(math.prod(shape[:-1]), shape[-1])

    return cost


def _layernorm_kernel(region: Region) -> te.Tensor:
    epsilon = float(region.calls["relax.nn.layer_norm"].attrs.epsilon)
    return functional.layernorm(*(region.arg("relax.nn.layer_norm", i) for i in range(3)), region.register, epsilon)


def _embedding_cost(args: list[relax.Expr]) -> Op:
    table = args[0].value.numpy()
    return Embedding(static_shape(args[1])[0], table.shape[1], float(np.count_nonzero(table) / table.size))


@dataclasses.dataclass(frozen=True)
class AcceleratorPattern:
    """One thing the chip runs, defined once: TVM's pattern-table entry (name, pattern, annotations,
    check), its kernel (the chip's arithmetic, for the codegen) and its cost (for the partitioner)."""

    entry: tuple[str, DFPattern, dict[str, DFPattern], Callable[[PatternCheckContext], bool]]
    kernel: Callable[[Region], te.Tensor]
    cost: Callable[[list[relax.Expr]], Op]
    output_bound: Callable[[list[relax.Expr]], float] | None = None  # its largest |output|, where the shapes fix it

    @property
    def name(self) -> str:
        return self.entry[0]


PATTERNS = [  # priority: later entries win where matches overlap
    AcceleratorPattern(residual_add_pattern(), lambda r: functional.residual_add(r.arg("relax.add", 0), r.arg("relax.add", 1),
                                                                                r.register),
                       lambda args: Add(math.prod(static_shape(args[0])))),
    AcceleratorPattern(layernorm_pattern(), _layernorm_kernel, _rows_cost(LayerNorm)),
    AcceleratorPattern(softmax_pattern(), _softmax_kernel, _rows_cost(Softmax)),
    AcceleratorPattern(softmax_span_pattern(), _softmax_kernel, _rows_cost(Softmax)),
    AcceleratorPattern(embedding_pattern(), lambda r: functional.embedding(r.arg("relax.take", 0), r.arg("relax.take", 1),
                                                                           r.register),
                       _embedding_cost),
    AcceleratorPattern(attention_matmul_pattern(), _attention_kernel, _attention_cost),
    AcceleratorPattern(attention_scores_pattern(), _attention_kernel, _attention_cost),
    AcceleratorPattern(dense_pattern(), _dense_kernel, _dense_cost),
    AcceleratorPattern(dense_gelu_pattern(), _dense_kernel, _dense_gelu_cost),
    AcceleratorPattern(exit_entropy_pattern(), lambda r: functional.exit_entropy(r.arg("relax.nn.softmax", 0), r.register),
                       lambda args: Entropy(static_shape(args[0])[-1]),
                       output_bound=lambda args: math.log(static_shape(args[0])[-1])),
]
BY_NAME = {p.name: p for p in PATTERNS}
register_patterns([p.entry for p in PATTERNS])


def pattern(name: str) -> AcceleratorPattern:
    """The table's entry for a composite's pattern name (one the partitioner matched)."""
    return BY_NAME[name]


def edgebert_patterns():
    """The registered table, highest priority first (as FuseOpsByPattern wants it)."""
    return get_patterns_with_prefix(PREFIX)
