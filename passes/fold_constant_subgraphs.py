"""edgebert.FoldConstantSubgraphs: every computation on constants alone, evaluated by one build.

Relax's FoldConstant legalizes and builds each foldable call on its own and runs it once (about 30 ms
of LLVM a call), and folds no call without a constant tensor argument, so `arange` and all that
follows it stay in the graph. The span mask a layer computes at every compiled length
(models/span.py: the learned z scaled, offsets from `arange`, a clamp) therefore cost 220 builds
for a 3-layer model at two lengths (the z side of the formula, call by call), and the rest of it
was still computed at run time. Here the calls whose inputs are all constant (transitively) are
copied, per function, into one module that returns the values the rest of the function reads;
that module is built and run once, and those values become constants, inlined where they are used
as FoldConstant inlines its own.

What folds: calls to pure Relax operators (not `call_tir` and its kin, whose callee is a module
function) with a static tensor result, whose arguments are constants, literal values or shapes, or
variables bound to such calls. The values folded are stored in the module: a key-span mask is
heads x T floats per layer and length, a distance-span one heads x T x T (786 KB for 12 heads at
T 128), the price of not computing it at every call. Place: where FoldConstant would run on the
high-level graph (the edgebert target's partitioning, target/edgebert/partition.py). Measured
there (docs/CHANGELOG.md): `compile --target edgebert` of that model 40.2 -> 28.2 s.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.ir.transform import PassContext
from tvm.relax.expr_functor import PyExprMutator, mutator


def _static(shape: relax.Expr) -> bool:
    return isinstance(shape, relax.ShapeExpr) and all(isinstance(d, tvm.tirx.IntImm) for d in shape.values)


def _constant(expr: relax.Expr, known: set[relax.Var]) -> bool:
    if isinstance(expr, tvm.ir.expr.Constant):  # tensors, and in TVM 0.27 literal ints and strings too
        return True
    if isinstance(expr, relax.Var):
        return expr in known
    if isinstance(expr, relax.ShapeExpr):
        return _static(expr)
    if isinstance(expr, relax.Tuple):
        return all(_constant(field, known) for field in expr.fields)
    return False


def _foldable(value: relax.Expr, known: set[relax.Var]) -> bool:
    if isinstance(value, (tvm.ir.expr.Constant, relax.Var)):
        return _constant(value, known)
    return (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
            and not value.op.name.startswith("relax.call_") and bool(value.op.get_attr("FPurity"))
            and isinstance(value.ty, relax.TensorType) and _static(value.ty.shape)
            and all(_constant(a, known) for a in value.args))


def _constant_bindings(func: relax.Function) -> tuple[list[relax.VarBinding], list[relax.Var], dict]:
    """The function's top-level bindings that compute on constants only, in order; those of their
    variables the rest of the function reads (the values to compute); and the variables bound to a
    constant itself, with it (inlined at their uses, as FoldConstant does)."""
    known: set[relax.Var] = set()
    bindings, rest = [], []
    for block in func.body.blocks:
        for binding in block.bindings:
            if isinstance(binding, relax.VarBinding) and _foldable(binding.value, known):
                known.add(binding.var)
                bindings.append(binding)
            else:
                rest.append(binding.value)
    read = {v for expr in [*rest, func.body.body] for v in relax.analysis.free_vars(expr)}
    bound = {b.var: b.value for b in bindings if isinstance(b.value, tvm.ir.expr.Constant)}
    computed = [b.var for b in bindings if b.var in read and b.var not in bound]
    return bindings, computed, bound


def _evaluator(bindings: list[relax.VarBinding], outputs: list[relax.Var]) -> relax.Function:
    """() -> the outputs' values, from the bindings themselves (each variable defined once here)."""
    result = relax.Var("result", relax.TupleType([v.ty for v in outputs]))
    block = relax.DataflowBlock([*bindings, relax.VarBinding(result, relax.Tuple(outputs))])
    return relax.Function([], relax.SeqExpr([block], result), result.ty)


@mutator
class _UseConstants(PyExprMutator):
    def __init__(self, values: dict[relax.Var, relax.Expr]) -> None:
        super().__init__()
        self.values = values

    def visit_var_(self, var: relax.Var) -> relax.Expr:  # noqa: N802 (visitor naming)
        return self.values.get(var, var)

    def visit_dataflow_var_(self, var: relax.DataflowVar) -> relax.Expr:  # noqa: N802 (visitor naming)
        return self.values.get(var, var)


@tvm.transform.module_pass(opt_level=0, name="edgebert.FoldConstantSubgraphs")
class FoldConstantSubgraphs:
    """Evaluate the constant parts of every function in one build (module docstring)."""

    def __init__(self, target: tvm.target.Target) -> None:
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx: PassContext) -> tvm.IRModule:
        constants, computed, evaluators = {}, {}, {}
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function) and not (func.attrs and "Codegen" in func.attrs):
                bindings, outputs, bound = _constant_bindings(func)
                if outputs:
                    computed[gv], evaluators[gv.name_hint] = outputs, _evaluator(bindings, outputs)
                if outputs or bound:
                    constants[gv] = bound
        if not constants:
            return mod
        if evaluators:
            vm = relax.VirtualMachine(tvm.compile(tvm.IRModule(evaluators), self.target), tvm.cpu())
            for gv, outputs in computed.items():
                constants[gv].update((var, relax.const(value)) for var, value in zip(outputs, vm[gv.name_hint]()))
        folded = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs, global_infos=mod.global_infos)
        for gv, values in constants.items():
            folded[gv] = relax.analysis.remove_all_unused(_UseConstants(values).visit_expr(mod[gv]))
        return folded
