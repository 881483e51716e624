"""Partition a structured EdgeBERT module for the accelerator and describe the chip's work per block.

Order: canonicalize (drops the reshapes around linear layers, so matmul + bias + GELU is one
match), write the exits' entropy kernel as Relax ops (so the entropy unit's pattern matches it),
fold constants (weights behind permute_dims become plain constants, the span masks computed from
`arange` at each length are evaluated in one build), round the weights and
embedding tables the chip stores onto the AdaptivFloat-8 grid (the host keeps float32 copies of
exactly those values), group pattern matches into `Codegen: edgebert` regions with the weights as
region parameters (`bind_constants=False`: one kernel per distinct region shape, the weights passed
at run time), read off the workload for the cost model; the target then calibrates each call's
fixed-point format (formats.py) and runs the codegen.

MergeCompositeFunctions is not used: on the structured module (block functions called from `main`)
it fails in TVM 0.27 ("Variable ... could not be found in any group"), so each match is one region.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import IRModule, relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard
from tvm.relax.expr_functor import PyExprMutator, mutator

from ...adaptivfloat.quantizer import hw8_decode, hw8_encode
from ...contract import ALL_EXITS, EMBEDDINGS, EXIT, LAYER, MAIN, block_calls, block_functions
from ...lengths import unsuffixed
from ...passes.canonicalize import Canonicalize
from ...passes.fold_constant_subgraphs import FoldConstantSubgraphs
from ...passes.fold_constant_transposes import FoldConstantTransposes
from ...passes.fold_entropy_exit import ENTROPY_KERNEL
from ..cpu.host import host_target
from . import codegen  # registers relax.ext.edgebert
from .patterns import PREFIX, edgebert_patterns, pattern
from .sentence import ChipWorkload


def hw8_round(values: np.ndarray) -> np.ndarray:
    """Values as the chip stores them: AdaptivFloat-8 codes under one bias register, decoded."""
    codes, register = hw8_encode(values)
    return hw8_decode(codes, register)


@relax.transform.function_pass(opt_level=0, name="edgebert.QuantizeForAccelerator")
class QuantizeForAccelerator:
    """matmul(x, W) and take(T, ids) with constant W, T -> the same with W, T on the AF8 grid."""

    def __init__(self) -> None:
        self.x, self.weight = wildcard(), is_const()
        self.pattern = is_op("relax.matmul")(self.x, self.weight) | is_op("relax.take")(self.weight, self.x)

    def transform_function(self, func: relax.Function, mod: IRModule, ctx: tvm.transform.PassContext) -> relax.Function:
        if func.attrs is not None and func.attrs.get("Primitive", 0) != 0:
            return func

        def rewrite(expr: relax.Call, matches: dict) -> relax.Expr:
            weight = matches[self.weight]
            if weight.ty.dtype != "float32" or len(weight.ty.shape) != 2:
                return expr
            rounded = relax.const(hw8_round(weight.value.numpy()))
            args = [rounded if a.same_as(weight) else a for a in expr.args]
            return relax.Call(expr.op, args, expr.attrs)

        return rewrite_call(self.pattern, rewrite, func)


_CALL_TIR = tvm.ir.Op.get("relax.call_tir")


@mutator
class _ExpandExitEntropy(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if call.op != _CALL_TIR or call.args[0].name_hint != ENTROPY_KERNEL:
            return call
        logits = call.args[1].fields[0]
        products = relax.op.multiply(relax.op.nn.softmax(logits), relax.op.nn.log_softmax(logits))
        return relax.op.max(relax.op.negative(relax.op.sum(products, axis=[-1])))


@relax.transform.function_pass(opt_level=0, name="edgebert.ExpandExitEntropy")
class ExpandExitEntropy:
    """call_tir(exit_max_entropy, (logits,)) -> max(-sum(softmax(logits) * log_softmax(logits), -1)): the
    same statistic, in the ops the entropy unit's pattern matches."""

    def transform_function(self, func: relax.Function, mod: IRModule, ctx: tvm.transform.PassContext) -> relax.Function:
        return _ExpandExitEntropy(mod).visit_expr(func)


def block_workloads(mod: IRModule) -> dict[str, list[dict[str, Any]]]:
    """Block function name -> the accelerator regions it calls, in order (after FuseOpsByPattern); the
    same for each length's `main`, whose regions are the exits' entropy checks."""
    blocks: dict[str, list[dict[str, Any]]] = {}
    mains = {gv: f for gv, f in mod.functions_items() if unsuffixed(gv.name_hint) == MAIN}
    for gv, func in {**block_functions(mod), **mains}.items():
        regions: list[dict[str, Any]] = []

        def visit(expr: relax.Expr) -> None:
            if isinstance(expr, relax.Call) and isinstance(expr.op, relax.GlobalVar):
                callee = mod[expr.op]
                if callee.attrs is not None and callee.attrs.get("Codegen") == codegen.CODEGEN:
                    name, _, _ = codegen.composite_call(callee)
                    regions.append({"region": expr.op.name_hint, "pattern": name,
                                    "op": pattern(name).cost(list(expr.args))})

        relax.analysis.post_order_visit(func.body, visit)
        blocks[gv.name_hint] = regions
    return blocks


def partition_for_edgebert(mod: IRModule) -> tuple[IRModule, dict[str, list[dict[str, Any]]]]:
    """Group what the accelerator runs into regions; returns the module (its regions not yet given
    their shift registers nor compiled: formats.py, then RunCodegen) and the workload."""
    mod = tvm.transform.Sequential([Canonicalize(), ExpandExitEntropy(), FoldConstantTransposes(),
                                    FoldConstantSubgraphs(host_target()), QuantizeForAccelerator()])(mod)
    mod = relax.transform.FuseOpsByPattern(edgebert_patterns(), bind_constants=False, annotate_codegen=True)(mod)
    return mod, block_workloads(mod)


def chip_workload(mod: IRModule, workload: dict[str, list[dict[str, Any]]], tail: str,
                  num_labels: int) -> ChipWorkload:
    """The per-sentence view at one compiled length (`tail`: its functions' suffix): which block the
    embeddings, each layer and each exit run, in the order `all_exits` calls them, and whether `main`
    checks exits in the entropy unit."""
    calls = block_calls(mod[ALL_EXITS + tail], mod)
    early_exit = any(r["pattern"] == f"{PREFIX}.exit_entropy" for r in workload.get(MAIN + tail, []))
    blocks = {gv.name_hint: workload.get(gv.name_hint, []) for _, gv in calls}
    return ChipWorkload(blocks, [gv.name_hint for kind, gv in calls if kind == LAYER],
                        [gv.name_hint for kind, gv in calls if kind == EXIT], num_labels, early_exit,
                        next(gv.name_hint for kind, gv in calls if kind == EMBEDDINGS))
