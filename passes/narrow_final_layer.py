"""edgebert.NarrowFinalLayer: the last layer computes only the rows its exit reads.

The last exit reads one row of the last layer's output (the pooler takes the [CLS] token), so every
other row of that layer is dead once its keys and values are made: a layer of n tokens spends
(n - 1) / n of its query, output-projection, LayerNorm and FFN work on rows nobody reads. This pass
gives the last layer call in `main` and `all_exits` a narrowed copy of the layer (and of the exit,
retyped to the narrowed hidden state). The rows the exit reads are propagated backwards through the
layer's bindings (`_Demands`): row-wise ops keep the rows, a matmul keeps the rows of its left
operand, a reshape keeps them where it leaves the row axis whole, an op broadcast along the rows
passes that operand whole; so attention keeps the query rows and reads every key. A value that some
user needs whole is computed whole and sliced for the others, and an op without a rule here is
computed whole: the copy always computes what the layer did, at most narrower.

Batch 1 only: the imported matmuls read (batch x tokens, hidden), where the [CLS] rows are not a
prefix once batch > 1, so the analysis would stop at the first reshape and narrow little more than
the last LayerNorm; the pass leaves a batch as it was. It also leaves a layer that earlier layers
share (ALBERT's): its narrowed copy's matrix-vector kernels would store the weights a second time,
in another layout, to save one layer's work in twelve. Place in the pipeline: after the passes that rewrite the
layers' attention and before those that turn matmuls into kernels (compiler.PIPELINE_ORDER).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..contract import ALL_EXITS, EXIT, LAYER, MAIN, block_calls, block_kind

NARROWED = "_narrowed"  # appended to the name of the layer's narrowed copy


@dataclasses.dataclass(frozen=True)
class Rows:
    """Rows [0, stop) along `axis` of a tensor are needed; the others are not."""

    axis: int
    stop: int


WHOLE = None  # a demand of every element
Demand = Rows | None

_UNARY = {"exp", "tanh", "erf", "sqrt", "rsqrt", "negative", "sigmoid", "astype", "clip", "abs", "square",
          "nn.gelu", "nn.gelu_tanh", "nn.relu", "nn.silu", "nn.fast_softmax"}
_BINARY = {"add", "subtract", "multiply", "divide", "power", "maximum", "minimum"}


def _shape(expr: relax.Expr) -> list[int] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return [int(d) for d in ty.shape.values]
    except (TypeError, AttributeError):
        return None


def _join(a: Demand, b: Demand) -> Demand:
    if a is WHOLE or b is WHOLE or a.axis != b.axis:
        return WHOLE
    return Rows(a.axis, max(a.stop, b.stop))


def _broadcast_demand(arg: relax.Expr, out_rank: int, demand: Rows) -> Demand | str:
    """What an operand broadcast to `out_rank` dims needs: its aligned rows, or "as is" if it broadcasts there."""
    shape = _shape(arg)
    if shape is None:
        return WHOLE
    axis = demand.axis - (out_rank - len(shape))
    return "as is" if axis < 0 or shape[axis] == 1 else Rows(axis, demand.stop)


def _reshape_axis(source: list[int], target: list[int], axis: int) -> int | None:
    """The axis of `target` that `source`'s `axis` becomes, if the reshape leaves it whole (the same
    elements before it and the same extent); else None."""
    before = math.prod(source[:axis])
    for out_axis in range(len(target)):
        if math.prod(target[:out_axis]) == before and target[out_axis] == source[axis]:
            return out_axis
    return None


def _operand_demands(call: relax.Call, demand: Demand) -> list[Demand | str] | None:
    """What each operand of `call` must provide for `demand` of its result ("as is": the operand
    unchanged), or None where no rule narrows it."""
    if not isinstance(call.op, tvm.ir.Op):
        return None
    name = call.op.name.removeprefix("relax.")
    args = list(call.args)
    out = _shape(call)
    if name == "take" and demand is WHOLE:  # a row picked by a constant index: the exits' [CLS] token
        index = args[1]
        if isinstance(index, tvm.ir.expr.Constant) and index.value.numpy().ndim == 0:
            return [Rows(int(call.attrs.axis), int(index.value.numpy()) + 1), "as is"]
        return None
    if demand is WHOLE or out is None:
        return None
    if name in _UNARY:
        return [demand]
    if name in _BINARY:
        return [_broadcast_demand(arg, len(out), demand) for arg in args]
    if name == "nn.layer_norm":
        axes = [int(a) % len(out) for a in call.attrs.axes]
        return None if demand.axis in axes else [demand, "as is", "as is"]
    if name == "nn.softmax":
        return None if int(call.attrs.axis) % len(out) == demand.axis else [demand]
    if name == "matmul":
        lhs, rhs = _shape(args[0]), _shape(args[1])
        if lhs is None or rhs is None or len(lhs) < 2 or demand.axis == len(out) - 1:
            return None
        if demand.axis == len(out) - 2:  # rows of the product: rows of the left operand
            return [Rows(len(lhs) - 2, demand.stop), "as is"]
        return [_broadcast_demand(arg, len(out), demand) if len(_shape(arg)) > 2 else "as is" for arg in args]
    if name == "permute_dims":
        axes = list(range(len(out)))[::-1] if call.attrs.axes is None else [int(a) for a in call.attrs.axes]
        return [Rows(axes[demand.axis], demand.stop)]
    if name == "reshape":
        source = _shape(args[0])
        axis = None if source is None else _reshape_axis(out, source, demand.axis)
        return None if axis is None else [Rows(axis, demand.stop), "as is"]
    if name == "broadcast_to":
        return [_broadcast_demand(args[0], len(out), demand), "as is"]
    return None


def _narrowed_shape(shape: list[int], demand: Rows) -> relax.ShapeExpr:
    return relax.ShapeExpr([demand.stop if i == demand.axis else d for i, d in enumerate(shape)])


class _Demands:
    """Backward pass over one dataflow block: the demand on every variable given the result's, and
    the operand demands of every binding that narrows (or picks rows)."""

    def __init__(self, bindings: list[relax.VarBinding], result: relax.Var, demand: Demand) -> None:
        self.of: dict[relax.Var, Demand] = {result: demand}
        self.operands: dict[relax.Var, list[Demand | str]] = {}
        for binding in reversed(bindings):
            var, value = binding.var, binding.value
            wanted = self.of.get(var, WHOLE)
            if isinstance(value, relax.Var):  # an alias (the block's output)
                rule, args = [wanted], [value]
            elif isinstance(value, relax.Call) and (rule := _operand_demands(value, wanted)) is not None:
                args = list(value.args)
            else:
                self.of[var], rule, args = WHOLE, [], []
                for mentioned in _found(value, lambda e: isinstance(e, relax.Var)):
                    self.of[mentioned] = WHOLE
            if rule:
                self.operands[var] = rule
            for arg, need in zip(args, rule):
                if isinstance(arg, relax.Var) and need != "as is":
                    self.of[arg] = _join(self.of[arg], need) if arg in self.of else need


class _CannotNarrow(Exception):
    """A layer or exit of a form this pass does not narrow: the module is left as it was."""


def _bindings(func: relax.Function) -> list[relax.VarBinding]:
    body = func.body
    if len(body.blocks) != 1 or not isinstance(body.body, relax.Var) or not all(
            isinstance(b, relax.VarBinding) for b in body.blocks[0].bindings):
        raise _CannotNarrow("not one block of variable bindings returning a variable")
    return list(body.blocks[0].bindings)


def parameter_demand(func: relax.Function) -> Demand:
    """The part of `func`'s first parameter that its whole result depends on."""
    return _Demands(_bindings(func), func.body.body, WHOLE).of.get(func.params[0], WHOLE)


def _remap(expr: relax.Expr, mapping: dict[relax.Var, relax.Expr]) -> relax.Expr:
    """`expr` (a binding's value) reading the new variables."""
    if isinstance(expr, relax.Var):
        return mapping[expr]
    if isinstance(expr, relax.Call):
        return relax.Call(expr.op, [_remap(a, mapping) for a in expr.args], expr.attrs, expr.ty_args)
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([_remap(f, mapping) for f in expr.fields])
    if isinstance(expr, relax.TupleGetItem):
        return relax.TupleGetItem(_remap(expr.tuple_value, mapping), expr.index)
    if _found(expr, lambda e: isinstance(e, relax.Var)):
        raise _CannotNarrow(f"a {type(expr).__name__} binding")
    return expr  # a constant, a shape, an immediate


def narrowed(func: relax.Function, result: Demand, param: Rows | None = None) -> relax.Function:
    """`func` computing `result` of its result only, its first parameter arriving as `param` rows if
    given (then `parameter_demand(func)` must be `param`)."""
    bindings = _bindings(func)
    demands = _Demands(bindings, func.body.body, result)
    params = [relax.Var(p.name, p.ty) for p in func.params]
    whole: dict[relax.Var, relax.Expr] = dict(zip(func.params, params))  # values as `func` computed them
    rows: dict[relax.Var, relax.Expr] = {}  # values narrowed to demands.of[var]
    if param is not None:
        first = func.params[0]
        params[0] = relax.Var(first.name, relax.TensorType(
            _narrowed_shape(_shape(first), param), first.ty.dtype))
        rows[first] = params[0]
        del whole[first]
    bb = relax.BlockBuilder()

    def provide(arg: relax.Expr, need: Demand | str) -> relax.Expr:
        """`arg` as a reader with demand `need` takes it: whole, narrowed, or sliced from either."""
        if need in ("as is", WHOLE):
            return _remap(arg, whole)
        if arg in rows and demands.of[arg] == need:
            return rows[arg]
        source = rows[arg] if arg in rows else _remap(arg, whole)
        if _shape(source)[need.axis] == need.stop:
            return source
        return bb.emit(relax.op.strided_slice(source, [need.axis], [0], [need.stop]))

    with bb.function(func.attrs["global_symbol"], params, attrs=dict(func.attrs.items()), pure=True):
        with bb.dataflow():
            for binding in bindings:
                var, value = binding.var, binding.value
                need = demands.of.get(var, WHOLE)
                if var not in demands.operands:
                    whole[var] = bb.emit(_remap(value, whole), var.name)
                    continue
                if isinstance(value, relax.Var):
                    new = provide(value, need)
                else:
                    args = [provide(a, n) for a, n in zip(value.args, demands.operands[var])]
                    if need is not WHOLE and value.op.name in ("relax.reshape", "relax.broadcast_to"):
                        args[1] = _narrowed_shape(_shape(var), need)
                    new = bb.emit(relax.Call(value.op, args, value.attrs, value.ty_args), var.name)
                (whole if need is WHOLE else rows)[var] = new
            out = func.body.body
            if result is not WHOLE and out not in rows:
                raise _CannotNarrow("its result could not be narrowed")
            gv = bb.emit_output(rows[out] if result is not WHOLE else whole[out])
        bb.emit_func_output(gv)
    return bb.finalize()[func.attrs["global_symbol"]]


@mutator
class _Repoint(PyExprMutator):
    """The entry point calling the narrowed layer and exit at the last layer."""

    def __init__(self, mod: tvm.IRModule, hidden: relax.Var, layer: relax.GlobalVar, exit_: relax.GlobalVar) -> None:
        super().__init__(mod)
        self.hidden, self.layer, self.exit = hidden, layer, exit_

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = binding.value
        if binding.var.same_as(self.hidden):
            callee = self.layer
        elif isinstance(value, relax.Call) and any(a.same_as(self.hidden) for a in value.args):
            callee = self.exit
        else:
            super().visit_var_binding_(binding)
            return
        call = relax.Call(callee, [self.visit_expr(a) for a in value.args])
        self.set_var_remap(binding.var, self.builder_.emit(call, binding.var.name))


def _last_layer(func: relax.Function, mod: tvm.IRModule) -> tuple[relax.Var, relax.GlobalVar, relax.GlobalVar] | None:
    """(the last layer call's result, its layer, the exit) where one exit call is its only reader."""
    calls = [(b.var, b.value) for block in func.body.blocks for b in block.bindings
             if isinstance(b.value, relax.Call) and isinstance(b.value.op, relax.GlobalVar)]
    layers = [(var, call) for var, call in calls if block_kind(mod[call.op]) == LAYER]
    if not layers:
        return None
    hidden, layer_call = layers[-1]
    values = [b.value for block in func.body.blocks for b in block.bindings] + [func.body.body]
    readers = [v for v in values if _found(v, hidden.same_as)]
    if len(readers) != 1 or not isinstance(readers[0], relax.Call) or not isinstance(readers[0].op, relax.GlobalVar) \
            or block_kind(mod[readers[0].op]) != EXIT or sum(a.same_as(hidden) for a in readers[0].args) != 1:
        return None
    return hidden, layer_call.op, readers[0].op


@tvm.transform.module_pass(opt_level=0, name="edgebert.NarrowFinalLayer")
class NarrowFinalLayer:
    """Narrow the last layer of `main` and `all_exits` to the rows that the last exit reads."""

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        names = {gv.name_hint for gv in mod.get_global_vars()}
        entries = [name for name in (MAIN, ALL_EXITS) if name in names]
        found = [_last_layer(mod[name], mod) for name in entries]
        if not entries or None in found or len({(f[1], f[2]) for f in found}) != 1:
            return mod  # no plain chain of blocks, or the last layer's result has other readers
        _, layer_gv, exit_gv = found[0]
        if sum(gv.same_as(layer_gv) for name in entries for _, gv in block_calls(mod[name], mod)) > len(entries):
            return mod  # ALBERT's shared layer: a narrowed copy would store its weights again, in another layout
        try:
            rows = parameter_demand(mod[exit_gv])
            shape = _shape(mod[exit_gv].params[0])
            if rows is WHOLE or rows.stop >= shape[rows.axis] or shape[0] != 1:
                return mod  # nothing to cut, or a batch (see the module's docstring)
            layer = narrowed(mod[layer_gv], rows).with_attr("global_symbol", layer_gv.name_hint + NARROWED)
            exit_ = narrowed(mod[exit_gv], WHOLE, rows)
        except _CannotNarrow:
            return mod
        bb = relax.BlockBuilder(tvm.IRModule({gv: f for gv, f in mod.functions_items() if not gv.same_as(exit_gv)},
                                             attrs=mod.attrs))
        new_layer = bb.add_func(layer, layer_gv.name_hint + NARROWED)
        new_exit = bb.add_func(exit_, exit_gv.name_hint)
        out = bb.get()
        for name, (hidden, _, _) in zip(entries, found):
            out[out.get_global_var(name)] = _Repoint(out, hidden, new_layer, new_exit).visit_expr(mod[name])
        del out[layer_gv]  # it ran only there
        return out


def _found(expr: relax.Expr, match: Callable[[relax.Expr], bool]) -> list[relax.Expr]:
    """The sub-expressions of `expr` that `match`."""
    found: list[relax.Expr] = []
    relax.analysis.post_order_visit(expr, lambda e: found.append(e) if match(e) else None)
    return found
