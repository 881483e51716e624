"""edgebert.FuseQKV: the query, key and value projections of a layer become one matmul.

An encoder layer projects its input three times, `bias + matmul(x, permute_dims(W))` with a
constant (hidden, hidden) W each for Q, K and V. This pass concatenates the three weights (and
the three biases) at compile time and emits one GEMM of N = 3 * hidden whose output is sliced
into the three projections the rest of the attention reads. At small M (batch x sequence: 128
rows for one sentence) one wide GEMM uses the register tile and the threads better than three
narrow ones: three times the tiles to share out per kernel launch, and x streamed once. (On
2 threads of an AVX-512 Xeon, MiniLM-L6 and ALBERT-base at seq 128 and 16 time the same with
and without it, within noise: there the narrow GEMMs already have tiles for every thread. The
gain needs more threads than one projection has tiles: small M on many cores or a GPU.)

Preconditions and place in the pipeline (edgebert_tvm.compiler.edgebert_passes):
- a block-structured module from the importer, layers found by `contract.block_functions`;
- after FoldAttentionSpan, which finds the attention through the per-projection form and may
  slice per-head rows out of the Q, K and V weights (it slices the same rows of all three, so
  they stay fusable; a layer whose projections no longer share an input or a shape is left
  unfused);
- before FoldSparsity, QuantizeWeightsAdaptivFloat, ApproximateRedundantData and FoldEntropyExit,
  which then see the fused weight as one constant matmul weight (one tensor: one cost-model
  choice, one AdaptivFloat exponent bias, one RDA grid for the three);
- for the llvm and cuda targets only: the `edgebert` accelerator's patterns and cost model expect
  one matmul per projection.

A layer is left unchanged unless exactly three constant-weight projections read the same input,
with weights of one shape (equal in-features and out-features) and dtype, each followed by a
constant bias add that is its matmul's only use.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..contract import LAYER, block_functions, with_report
from .canonicalize import _shape as _static_shape

NUM_PROJECTIONS = 3  # query, key, value


@dataclasses.dataclass
class Projection:
    """`output = bias + matmul(x, permute_dims(weight))` in one dataflow block."""

    x: relax.Expr  # the matmul's left operand
    matmul: relax.Var
    output: relax.Var  # bound to the bias add
    weight: np.ndarray  # (out, in)
    bias: np.ndarray  # (out,)
    out_dtype: object  # the matmul's out_dtype attribute, as it was


def _call(value: relax.Expr | None, op: str) -> relax.Call | None:
    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == op:
        return value
    return None


def _constant(expr: relax.Expr) -> np.ndarray | None:
    if isinstance(expr, tvm.ir.expr.Constant) and isinstance(expr.value, tvm.runtime.Tensor):
        return expr.value.numpy()
    return None


def _resolve(expr: relax.Expr, bindings: dict[relax.Var, relax.Expr]) -> relax.Expr | None:
    return bindings.get(expr) if isinstance(expr, relax.Var) else expr


def _projection(var: relax.Var, value: relax.Expr, bindings: dict[relax.Var, relax.Expr],
                users: dict[relax.Var, list[relax.Var]]) -> Projection | None:
    """The projection bound to `var` (its bias add), or None if `value` is not one."""
    add = _call(value, "relax.add")
    if add is None:
        return None
    for product, bias_expr in (add.args, add.args[::-1]):
        matmul = _call(bindings.get(product), "relax.matmul") if isinstance(product, relax.DataflowVar) else None
        bias = _constant(bias_expr)
        if matmul is None or bias is None or list(users.get(product, [])) != [var]:
            continue
        transpose = _call(_resolve(matmul.args[1], bindings), "relax.permute_dims")
        weight = _constant(transpose.args[0]) if transpose is not None else None
        if weight is None or weight.ndim != 2:
            continue
        if transpose.attrs.axes is not None and [int(a) for a in transpose.attrs.axes] != [1, 0]:
            continue
        x_shape, out_shape = _static_shape(matmul.args[0]), _static_shape(var)
        if x_shape is None or out_shape is None or x_shape[-1] != weight.shape[1]:
            continue
        if bias.shape != (weight.shape[0],) or out_shape != x_shape[:-1] + [weight.shape[0]]:
            continue
        if bias.dtype != weight.dtype or str(matmul.args[0].ty.dtype) != str(weight.dtype):
            continue
        return Projection(matmul.args[0], product, var, weight, bias, matmul.attrs.out_dtype)
    return None


def _input_key(x: relax.Expr, bindings: dict[relax.Var, relax.Expr]) -> tuple:
    """Equal for projections of the same value: the importer flattens x once per projection,
    `reshape(h, [M, K])`, so reshapes of one var to one shape count as one input."""
    reshape, shape = _call(_resolve(x, bindings), "relax.reshape"), _static_shape(x)
    if reshape is not None and isinstance(reshape.args[0], relax.Var) and shape is not None:
        return (reshape.args[0], tuple(shape))
    return (x,)


def find_qkv(func: relax.Function) -> list[Projection] | None:
    """The three projections of one input in `func` (in binding order), or None if the layer does
    not have exactly one such triple of fusable projections."""
    if not isinstance(func.body, relax.SeqExpr):
        return None
    triples = []
    for block in func.body.blocks:
        if not isinstance(block, relax.DataflowBlock):
            continue
        bindings = {b.var: b.value for b in block.bindings if isinstance(b, relax.VarBinding)}
        users = relax.analysis.udchain(block)
        groups: dict[tuple, list[Projection]] = {}
        for var, value in bindings.items():
            found = _projection(var, value, bindings, users) if isinstance(var, relax.DataflowVar) else None
            if found is not None:
                groups.setdefault(_input_key(found.x, bindings), []).append(found)
        triples += [group for group in groups.values() if len(group) == NUM_PROJECTIONS]
    if len(triples) != 1:
        return None
    group = triples[0]
    first = group[0]
    if any(p.weight.shape != first.weight.shape or p.weight.dtype != first.weight.dtype
           or str(p.out_dtype) != str(first.out_dtype) for p in group):
        return None
    return group


@mutator
class _Fuser(PyExprMutator):
    """Emits the fused projection where the first of the three bias adds was, remaps the three
    outputs to slices of it and drops the old matmuls (their inputs are left dead)."""

    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.group: list[Projection] = []

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:  # noqa: D102
        first = self.group[0]
        if binding.var.same_as(first.output):
            self._emit_fused()
        elif not any(binding.var.same_as(v) for p in self.group for v in (p.matmul, p.output)):
            super().visit_var_binding_(binding)

    def _emit_fused(self) -> None:
        group, bb = self.group, self.builder_
        weight = relax.const(np.ascontiguousarray(np.concatenate([p.weight for p in group], axis=0)))
        bias = relax.const(np.ascontiguousarray(np.concatenate([p.bias for p in group])))
        product = bb.emit(relax.op.matmul(self.visit_expr(group[0].x), relax.op.permute_dims(weight, [1, 0]),
                                          out_dtype=group[0].out_dtype))
        fused = bb.emit(relax.op.add(bias, product))
        width, axis = group[0].weight.shape[0], len(_static_shape(fused)) - 1
        for index, projection in enumerate(group):
            view = bb.emit(relax.op.strided_slice(fused, [axis], [index * width], [(index + 1) * width],
                                                  assume_inbound=True))
            self.set_var_remap(projection.output, view)


@tvm.transform.module_pass(opt_level=0, name="edgebert.FuseQKV")
class FuseQKV:
    """One matmul (weights and biases concatenated) for the Q, K and V projections of every layer; the
    module's "fuse_qkv" report lists the layer functions fused."""

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        fuser = _Fuser(mod)
        fused = []
        for gv, func in block_functions(mod, LAYER).items():
            group = find_qkv(func)
            if group is None:
                continue
            fuser.group = group
            rewritten = fuser.visit_expr(func)
            fuser.builder_.update_func(gv, relax.analysis.remove_all_unused(rewritten))
            fused.append(gv.name_hint)
        return with_report(fuser.builder_.get(), "fuse_qkv", {"fused_layers": fused})
