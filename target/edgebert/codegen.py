"""`relax.ext.edgebert`: each partitioned region becomes a compiled kernel of the chip's arithmetic.

RunCodegen hands over the functions annotated `Codegen: edgebert`; each holds one call to a
composite function named after its pattern. The region is translated into the matching TE
definition of `functional.py` and built for the host CPU as a destination-passing PrimFunc under
the region's global symbol. The returned modules are ordinary TVM-built libraries: they are linked
into the exported artifact and load in a fresh process with nothing registered by hand (Python
packed functions would not survive export: docs/ARCHITECTURE.md, "TVM 0.27 facts").
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax, te

from . import functional
from ..targets import host_target

CODEGEN = "edgebert"


def _composite(func: relax.Function) -> tuple[str, relax.Function, list[relax.Expr]]:
    """(pattern name, composite function, its call's arguments) of one annotated region."""
    local: dict[relax.Var, relax.Function] = {}
    for binding in (b for block in func.body.blocks for b in block.bindings):
        if isinstance(binding.value, relax.Function):
            local[binding.var] = binding.value
        elif isinstance(binding.value, relax.Call):
            call = binding.value
    inner = local.get(call.op, call.op)
    return str(inner.attrs["Composite"]), inner, list(call.args)


def _calls(func: relax.Function) -> dict[str, relax.Call]:
    """Op name -> the call in the composite body (each op appears once in our patterns)."""
    calls: dict[str, relax.Call] = {}

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            calls[expr.op.name] = expr

    relax.analysis.post_order_visit(func.body, visit)
    return calls


def _placeholder(var: relax.Var) -> te.Tensor:
    return te.placeholder([int(d) for d in var.ty.shape], dtype=var.ty.dtype, name=var.name)


def region_compute(pattern: str, composite: relax.Function) -> tuple[list[te.Tensor], te.Tensor]:
    """TE inputs (in the composite's parameter order) and output of one region."""
    tensors = {param: _placeholder(param) for param in composite.params}
    inputs = [tensors[p] for p in composite.params]
    calls = _calls(composite)
    arg = lambda op, i: tensors[calls[op].args[i]]  # noqa: E731 (a one-line lookup)
    kind = pattern.split(".", 1)[1]
    if kind in ("dense", "dense_gelu"):
        add = calls["relax.add"]
        bias = next(a for a in add.args if a in tensors)
        gelu = None if kind == "dense" else ("tanh" if "relax.nn.gelu_tanh" in calls else "erf")
        out = functional.dense(arg("relax.matmul", 0), arg("relax.matmul", 1), tensors[bias], gelu)
    elif kind == "attention_matmul":
        out = functional.attention_matmul(arg("relax.matmul", 0), arg("relax.matmul", 1))
    elif kind == "attention_scores":
        multiply = calls["relax.multiply"]
        out = functional.attention_matmul(arg("relax.matmul", 0), arg("relax.matmul", 1), arg("relax.multiply", 1),
                                          [int(d) for d in multiply.ty.shape])
    elif kind == "softmax":
        out = functional.softmax(arg("relax.nn.softmax", 0), None)
    elif kind == "softmax_span":
        out = functional.softmax(arg("relax.nn.softmax", 0), arg("relax.multiply", 1))
    elif kind == "layernorm":
        call = calls["relax.nn.layer_norm"]
        out = functional.layernorm(arg("relax.nn.layer_norm", 0), arg("relax.nn.layer_norm", 1),
                                   arg("relax.nn.layer_norm", 2), float(call.attrs.epsilon))
    elif kind == "residual_add":
        out = functional.residual_add(arg("relax.add", 0), arg("relax.add", 1))
    elif kind == "embedding":
        out = functional.embedding(arg("relax.take", 0), arg("relax.take", 1))
    else:
        raise ValueError(f"edgebert codegen: no kernel for pattern {pattern}")
    return inputs, out


def _check_args(func: relax.Function, composite: relax.Function, args: list[relax.Expr]) -> None:
    """Our regions pass their parameters straight through to the composite, in order."""
    if [a.same_as(p) for a, p in zip(args, func.params)] != [True] * len(func.params) or len(args) != len(
            composite.params):
        raise ValueError(f"edgebert codegen: unexpected region signature in {func.attrs['global_symbol']}")


@tvm.register_global_func(f"relax.ext.{CODEGEN}")
def edgebert_codegen(funcs: list[relax.Function], options: Any, constant_names: Any) -> list[tvm.runtime.Module]:
    """Build one host library per region function (global symbol = the region's name)."""
    target = host_target()
    modules = []
    for func in funcs:
        pattern, composite, args = _composite(func)
        _check_args(func, composite, args)
        inputs, out = region_compute(pattern, composite)
        modules.append(functional.build_kernel(str(func.attrs["global_symbol"]), inputs, out, target))
    return modules
