"""Per-tensor fraction bits: the shift registers that keep the chip's 16-bit activations in range.

One fixed format cannot serve every tensor: Q10 saturates at +-32, while MiniLM's FFN output at
[CLS] reaches about 200 and attention probabilities want every bit below 1. So, as fixed-point
accelerators do, each tensor the chip stores gets its own format, chosen at compile time:

1. every region call gets a shift-register argument (output fraction bits, word bits, call number),
   the last parameter of its region function (functional.py reads the first two; the number
   names the call site to the calibration run);
2. the partitioned module at the longest compiled length is built once with every register in the
   wide calibration format (Q15 in 32-bit words: nothing saturates) and run on calibration
   sentences, the VM's instrument recording each call's largest |output|;
3. each call gets the most fraction bits whose 16-bit range holds what it saw, and the module is
   rebuilt with those registers.
A region whose output is bounded by its shapes alone (the entropy unit's: at most ln(labels) nats)
takes its format from that bound instead, at every step (`AcceleratorPattern.output_bound`).

A call site is (block function, position among its region calls); a block's copies at the other
compiled lengths (edgebert_tvm/lengths.py) share its formats. docs/ARCHITECTURE.md, "The accelerator
model", says why calibration runs the chip's own arithmetic rather than the float model.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Iterable, Mapping

import numpy as np
import tvm
from tvm import IRModule, relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ...contract import ALL_EXITS
from ...lengths import unsuffixed
from .codegen import CODEGEN, composite_call
from .patterns import pattern
from .functional import CALIBRATION_BITS, INPUT_FRAC, MAX_FRAC, MIN_FRAC, WORD_BITS

Site = tuple[str, int]  # (block function without its length suffix, position among its region calls)
REGISTER_TYPE = relax.TensorType([3], "int64")


def fraction_bits(peak: float) -> int:
    """The most fraction bits (MIN_FRAC..MAX_FRAC) whose signed 16-bit range holds |values| <= peak."""
    integer_bits = max(0, math.floor(math.log2(peak)) + 1) if peak > 0 else 0
    return min(MAX_FRAC, max(MIN_FRAC, WORD_BITS - 1 - integer_bits))


def _region_functions(mod: IRModule) -> dict[tvm.ir.GlobalVar, relax.Function]:
    return {gv: func for gv, func in mod.functions_items()
            if isinstance(func, relax.Function) and func.attrs is not None and func.attrs.get("Codegen") == CODEGEN}


def _with_register_parameter(func: relax.Function) -> relax.Function:
    """A region function (and its composite) with the shift register appended to its parameters."""
    _, composite, _ = composite_call(func)
    inner = relax.Function([*composite.params, relax.Var("shift_register", REGISTER_TYPE)], composite.body,
                           composite.ret_ty, attrs=composite.attrs)
    register = relax.Var("shift_register", REGISTER_TYPE)
    local, output = relax.Var("local_func"), relax.Var("output", func.ret_ty)
    body = relax.SeqExpr([relax.BindingBlock([relax.VarBinding(local, inner),
                                              relax.VarBinding(output, relax.Call(local, [*func.params, register]))])],
                         output)
    return relax.Function([*func.params, register], body, func.ret_ty, attrs=func.attrs)


@mutator
class _AddRegisters(PyExprMutator):
    """Gives each region function a register parameter and each region call its register, a constant;
    `sites[n]` is the site of call number n."""

    def __init__(self, mod: IRModule, register: Callable[[Site], tuple[int, int]]) -> None:
        self.regions = _region_functions(mod)
        super().__init__(IRModule({gv: f for gv, f in mod.functions_items() if gv not in self.regions}, attrs=mod.attrs))
        self.mod_, self.register = mod, register
        self.block, self.position = "", 0
        self.sites: list[Site] = []
        # new GlobalVars: a GlobalVar's type holds its function's parameters
        self.retyped = {gv: self.builder_.add_func(_with_register_parameter(func), gv.name_hint)
                        for gv, func in self.regions.items()}

    def transform(self) -> IRModule:
        for gv, func in self.mod_.functions_items():
            if gv not in self.regions and isinstance(func, relax.Function):
                self.block, self.position = unsuffixed(gv.name_hint), 0
                self.builder_.update_func(gv, self.visit_expr(func))
        return relax.transform.Normalize()(self.builder_.get())

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        if call.op not in self.retyped:
            return super().visit_call_(call)
        site = (self.block, self.position)
        bound = pattern(composite_call(self.regions[call.op])[0]).output_bound
        register = (fraction_bits(bound(list(call.args))), WORD_BITS) if bound else self.register(site)
        value = relax.const(np.array([*register, len(self.sites)], "int64"), "int64")
        self.sites.append(site)
        self.position += 1
        return relax.Call(self.retyped[call.op], [*(self.visit_expr(a) for a in call.args), value], call.attrs)


def add_registers(mod: IRModule, register: Callable[[Site], tuple[int, int]]) -> tuple[IRModule, list[Site]]:
    """`mod` (partitioned, before RunCodegen) with every region call given `register(site)` and its
    number; the site of each call number."""
    adder = _AddRegisters(mod, register)
    return adder.transform(), adder.sites


def calibration_module(mod: IRModule) -> tuple[IRModule, list[Site]]:
    """`all_exits` at the longest length and what it calls, every register in the calibration format."""
    mod, sites = add_registers(mod, lambda site: (INPUT_FRAC, CALIBRATION_BITS))
    return relax.transform.DeadCodeElimination([ALL_EXITS])(mod), sites


def observe_peaks(mod: IRModule, sites: list[Site], vm: relax.VirtualMachine,
                  batches: Iterable[list[tvm.runtime.Tensor]]) -> dict[Site, float]:
    """Run `all_exits` of the calibration build `vm` (of `mod`) on each batch: the largest |output|
    of each region call site, found by the call number in its register."""
    regions = {gv.name_hint for gv in _region_functions(mod)}
    peaks: dict[Site, float] = defaultdict(float)

    def instrument(func, symbol: str, before_run: bool, ret_value, *args) -> int:
        if symbol in regions and not before_run:  # destination-passing: (inputs..., register, output)
            site = sites[int(args[-2].numpy()[2])]
            peaks[site] = max(peaks[site], float(np.abs(args[-1].numpy()).max()))
        return 0  # VMInstrumentReturnKind.NO_OP

    vm.set_instrument(instrument)
    for batch in batches:
        vm[ALL_EXITS](*batch)
    return dict(peaks)


def choose_formats(peaks: Mapping[Site, float]) -> dict[Site, int]:
    return {site: fraction_bits(peak) for site, peak in peaks.items()}
