"""`relax.ext.edgebert`: each partitioned region becomes a compiled kernel of the chip's arithmetic.

RunCodegen hands over the functions annotated `Codegen: edgebert`; each holds one call to a
composite function named after its pattern. The region is translated into its pattern's kernel
(patterns.py: a TE definition of `functional.py`) and built for the host CPU as a destination-passing PrimFunc under
the region's global symbol. The returned modules are ordinary TVM-built libraries: they are linked
into the exported artifact and load in a fresh process with nothing registered by hand (Python
packed functions would not survive export: docs/ARCHITECTURE.md, "TVM 0.27 facts").
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax

from . import functional
from .patterns import Region, pattern
from ..cpu.host import host_target

CODEGEN = "edgebert"


def composite_call(func: relax.Function) -> tuple[str, relax.Function, list[relax.Expr]]:
    """(pattern name, composite function, its call's arguments) of one annotated region."""
    local: dict[relax.Var, relax.Function] = {}
    for binding in (b for block in func.body.blocks for b in block.bindings):
        if isinstance(binding.value, relax.Function):
            local[binding.var] = binding.value
        elif isinstance(binding.value, relax.Call):
            call = binding.value
    inner = local.get(call.op, call.op)
    return str(inner.attrs["Composite"]), inner, list(call.args)


def _check_args(func: relax.Function, composite: relax.Function, args: list[relax.Expr]) -> None:
    """Our regions pass their parameters straight through to the composite, in order."""
    if [a.same_as(p) for a, p in zip(args, func.params)] != [True] * len(func.params) or len(args) != len(
            composite.params):
        raise ValueError(f"edgebert codegen: unexpected region signature in {func.attrs['global_symbol']}")


@tvm.register_global_func(f"relax.ext.{CODEGEN}")
def edgebert_codegen(funcs: list[relax.Function], options: Any, constant_names: Any) -> list[tvm.runtime.Module]:
    """One host library holding every region's kernel (global symbol = the region's name)."""
    kernels = {}
    for func in funcs:
        name, composite, args = composite_call(func)
        _check_args(func, composite, args)
        region = Region(composite)
        symbol = str(func.attrs["global_symbol"])
        kernels[symbol] = functional.kernel_func(symbol, region.inputs, pattern(name).kernel(region))
    return [functional.build_kernels(kernels, host_target())] if kernels else []
