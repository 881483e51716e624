"""edgebert.FoldEntropyExit: make entropy-based early exit part of the compiled graph.

The imported `main` runs every layer. This pass rebuilds it as a chain of `relax.If`: after layer
i, exit i's logits go through one fused kernel that computes the entropy of every row's softmax
(in nats) and takes the batch's maximum; if that is below threshold i the function returns
(logits_i, i), otherwise the else-branch runs layer i + 1. The Relax VM evaluates only the taken
branch, so a confident sentence skips the remaining layers.

Batch policy: a batch leaves together, at the first layer where every row is confident (the
maximum entropy is below the threshold); all its rows report that exit layer. With batch 1 this is
exactly EdgeBERT's per-sentence rule.

Place in the pipeline: last of the graph passes (compiler.PIPELINE_ORDER). It rebuilds `main`, so
every pass before it sees the plain chain of block calls; it reads only `main` and the exit blocks'
attributes, so it is indifferent to what earlier passes did inside the blocks. Any target.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import tvm
from tvm import relax, te
from tvm.ir.expr import Constant
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..errors import EdgeBertError, InternalError
from ..contract import EMBEDDINGS, EXIT, EXIT_THRESHOLDS_ATTR, LAYER, LAYER_ATTR, MAIN, block_calls, block_functions

ENTROPY_KERNEL = "exit_max_entropy"


def max_entropy(logits: te.Tensor) -> te.Tensor:
    """max over rows of H(softmax(row)) = ln sum e^(x-m) - sum (x-m) e^(x-m) / sum e^(x-m)."""
    rows, labels = logits.shape
    k1, k2, k3 = (te.reduce_axis((0, labels), name=f"k{i}") for i in range(3))
    peak = te.compute((rows,), lambda i: te.max(logits[i, k1], axis=k1), name="peak")
    total = te.compute((rows,), lambda i: te.sum(te.exp(logits[i, k2] - peak[i]), axis=k2), name="total")
    moment = te.compute(
        (rows,), lambda i: te.sum((logits[i, k3] - peak[i]) * te.exp(logits[i, k3] - peak[i]), axis=k3), name="moment"
    )
    entropy = te.compute((rows,), lambda i: te.log(total[i]) - moment[i] / total[i], name="entropy")
    r = te.reduce_axis((0, rows), name="r")
    return te.compute((), lambda: te.max(entropy[r], axis=r), name="max_entropy")


def check_thresholds(thresholds: float | Sequence[float], num_layers: int) -> list[float]:
    """One threshold for all exits, or one per exit 1..L-1 (the last layer always exits)."""
    values = [float(thresholds)] if np.isscalar(thresholds) else [float(t) for t in thresholds]
    if len(values) == 1:
        values = values * (num_layers - 1)
    if len(values) != num_layers - 1:
        raise EdgeBertError(f"expected one exit threshold or {num_layers - 1} (one per exit before the last "
                            f"layer), got {len(values)}")
    for value in values:
        if not math.isfinite(value) or value < 0:
            raise EdgeBertError(f"exit threshold {value} must be a finite number >= 0")
    return values


class _Chain:
    """Builds the nested branches; every binding gets its type from the block builder."""

    def __init__(self, bb: relax.BlockBuilder, bias: relax.Var, layers: list[relax.GlobalVar],
                 exits: list[relax.GlobalVar], thresholds: list[float], batch: int) -> None:
        self.bb, self.bias, self.layers, self.exits = bb, bias, layers, exits
        self.thresholds, self.batch = thresholds, batch

    def _bind(self, bindings: list[relax.VarBinding], name: str, value: relax.Expr) -> relax.Var:
        value = self.bb.normalize(value)
        var = relax.Var(name, value.ty)
        bindings.append(relax.VarBinding(var, value))
        return var

    def _leave(self, logits: relax.Var, layer: int) -> relax.Expr:
        return relax.Tuple([logits, relax.const(np.full(self.batch, layer, dtype="int64"), "int64")])

    def from_layer(self, index: int, hidden: relax.Var) -> relax.SeqExpr:
        """Layers index.. (0-based) given the hidden state before layer `index`."""
        bindings: list[relax.VarBinding] = []
        hidden = self._bind(bindings, f"hidden{index + 1}", relax.Call(self.layers[index], [hidden, self.bias]))
        logits = self._bind(bindings, f"logits{index + 1}", relax.Call(self.exits[index], [hidden]))
        if index == len(self.layers) - 1:
            return relax.SeqExpr([relax.BindingBlock(bindings)], self._leave(logits, index + 1))
        entropy = self._bind(bindings, f"entropy{index + 1}", self.bb.call_te(max_entropy, logits,
                                                                            primfunc_name_hint=ENTROPY_KERNEL))
        confident = self._bind(bindings, f"confident{index + 1}",
                               relax.op.less(entropy, relax.const(self.thresholds[index], "float32")))
        branch = relax.If(confident, self._leave(logits, index + 1), self.from_layer(index + 1, hidden))
        result = self._bind(bindings, f"exit{index + 1}", branch)
        return relax.SeqExpr([relax.BindingBlock(bindings)], result)


_LESS = tvm.ir.Op.get("relax.less")


@mutator
class _SetThresholds(PyExprMutator):
    """The exits' `less(entropy, threshold)` in the order `main` checks them, thresholds replaced."""

    def __init__(self, mod: tvm.IRModule, old: list[float], new: list[float]) -> None:
        super().__init__(mod)
        self.old, self.new, self.seen = old, new, 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if call.op != _LESS or not isinstance(call.args[1], Constant):
            return call
        if self.seen >= len(self.old) or abs(float(call.args[1].value.numpy()) - self.old[self.seen]) > 1e-6:
            raise InternalError("SetExitThresholds: main's exit checks are not FoldEntropyExit's")
        self.seen += 1
        return relax.op.less(call.args[0], relax.const(self.new[self.seen - 1], "float32"))


@tvm.transform.module_pass(opt_level=0, name="edgebert.SetExitThresholds")
class SetExitThresholds:
    """Give a module FoldEntropyExit folded other thresholds (one for every exit, or one per exit), in
    every length's `main`: a target that calibrates its own (the edgebert chip) sets them after
    partitioning, where the Relax graph of the exits is already in place."""

    def __init__(self, thresholds: float | Sequence[float]) -> None:
        self.thresholds = thresholds

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        functions = dict(mod.functions_items())
        for gv, func in mod.functions_items():  # each length's main (the functions FoldEntropyExit marked)
            if not isinstance(func, relax.Function) or func.attrs is None or EXIT_THRESHOLDS_ATTR not in func.attrs:
                continue
            old = [float(t) for t in func.attrs[EXIT_THRESHOLDS_ATTR]]
            new = check_thresholds(self.thresholds, len(old) + 1)
            setter = _SetThresholds(mod, old, new)
            rewritten = setter.visit_expr(func)
            if setter.seen != len(old):
                raise InternalError(f"SetExitThresholds: {gv.name_hint} checks {setter.seen} exits, not {len(old)}")
            functions[gv] = rewritten.with_attr(EXIT_THRESHOLDS_ATTR, new)
        return tvm.IRModule(functions, attrs=mod.attrs)


@tvm.transform.module_pass(opt_level=0, name="edgebert.FoldEntropyExit")
class FoldEntropyExit:
    """Rewrite `main` into early-exit form with `thresholds` (one for all exits, or one per exit)."""

    def __init__(self, thresholds: float | Sequence[float]) -> None:
        self.thresholds = thresholds

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        main = mod[MAIN]
        calls = block_calls(main, mod)
        layers = [gv for kind, gv in calls if kind == LAYER]
        exits = {int(f.attrs[LAYER_ATTR]): gv for gv, f in block_functions(mod, EXIT).items()}
        if not layers or sorted(exits) != list(range(1, len(layers) + 1)):
            raise InternalError("FoldEntropyExit needs a module from the structured importer (layers and exits)")
        thresholds = check_thresholds(self.thresholds, len(layers))
        embeddings = next(gv for kind, gv in calls if kind == EMBEDDINGS)
        batch = int(main.params[0].ty.shape[0])

        others = tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv.name_hint != MAIN}, attrs=mod.attrs)
        bb = relax.BlockBuilder(others)
        params = [relax.Var(p.name, p.ty) for p in main.params]
        input_ids, attention_mask, token_type_ids = params
        with bb.function(MAIN, params, attrs={"global_symbol": MAIN, EXIT_THRESHOLDS_ATTR: thresholds},
                         pure=True):
            emb = bb.emit(relax.Call(embeddings, [input_ids, token_type_ids, attention_mask]))
            hidden, bias = bb.emit(relax.TupleGetItem(emb, 0)), bb.emit(relax.TupleGetItem(emb, 1))
            chain = _Chain(bb, bias, layers, [exits[i + 1] for i in range(len(layers))], thresholds, batch)
            bb.emit_func_output(bb.emit(chain.from_layer(0, hidden)))
        return relax.transform.ConvertToDataflow()(bb.finalize())
