"""edgebert.ApproximateRedundantData: store the model's constant tensors the RDA way.

Every floating constant tensor (weights, biases, embeddings, LayerNorm parameters; not scalars) in a
block function of the structured module goes through the RDA codec (`edgebert_tvm.rda`): groups
of `granularity` values along the last axis, matched against zero / repeated / two-base patterns
within `threshold` units of the tensor's 16-bit grid, stored exactly otherwise. A tensor is grouped
on its own and every block function is one layer, so no group straddles a tensor or a layer.

The kernels compute with exactly what the compressed store holds; the module's "rda" report (contract
`with_report`) lists each tensor's compression rate and error. Where the store lives:
- `at_load=False`: each constant becomes the values its RDA storage decodes to (decoded at compile
  time; the library embeds them, so the artifact does not shrink).
- `at_load=True`: each constant becomes a lookup in TVM's runtime tensor cache
  (`vm.builtin.tensor_cache.get`) under a content-addressed key, and the module carries the
  `rda.Encoded` tensors (`weight_store.attach`); the artifact writes those in their compressed format (`rda.Encoded.to_bytes`) and
  decodes them into the cache when it loads (rda/weight_store.py). The library holds no copy. A
  constant that is only transposed (a linear layer's weight) is looked up as that transpose
  (`views`), made once at load.
With threshold 0 only the lossless patterns match and every constant is unchanged.

Place in the pipeline: after every pass that rewrites weights (span folding, FuseQKV, sparsity,
AdaptivFloat), so it stores what the model finally computes with, and before FoldEntropyExit.
`at_load` needs a target whose artifact holds a tensor cache (llvm, cuda), not the edgebert chip.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .. import rda
from ..rda import weight_store
from ..contract import block_functions, with_report


def _approximable(value: tvm.runtime.Tensor) -> bool:
    """Floating tensors with at least one axis: the model's stored numbers, not scalar constants."""
    return len(value.shape) >= 1 and tvm.runtime.DataType(value.dtype).type_code in (
        tvm.runtime.DataTypeCode.FLOAT, tvm.runtime.DataTypeCode.BFLOAT)


_PERMUTE_DIMS = tvm.ir.Op.get("relax.permute_dims")


@mutator
class _ReplaceConstants(PyExprMutator):
    """Swap each approximable constant for its RDA-decoded copy or a tensor-cache lookup of it (a
    shared tensor is encoded once). With lookups, a transposed constant (a linear layer's weight)
    is looked up already transposed: the view is made once at load, not on every call."""

    def __init__(self, pass_: "ApproximateRedundantData", prefix: str,
                 done: dict[tvm.runtime.Tensor, tuple[relax.Expr | str, rda.TensorReport]],
                 store: weight_store.Store) -> None:
        super().__init__()
        self.pass_, self.prefix, self.done, self.store = pass_, prefix, done, store
        self.count = 0

    def _store(self, value: tvm.runtime.Tensor) -> relax.Expr | str:
        """The decoded constant, or (at load) the cache key of the compressed tensor."""
        if value not in self.done:
            name = f"{self.prefix}/const{self.count}"
            self.count += 1
            x = value.numpy()
            encoded = rda.encode(x, self.pass_.threshold, self.pass_.granularity)
            decoded = rda.decode(encoded)
            if self.pass_.at_load:
                stored: relax.Expr | str = weight_store.cache_key(encoded)
                self.store.tensors[stored] = encoded
            else:
                stored = relax.const(np.ascontiguousarray(decoded), value.dtype)
            self.done[value] = (stored, rda.report(name, x, encoded, decoded))
        return self.done[value][0]

    def _read(self, view: str) -> None:
        if view not in self.store.views:
            self.store.views.append(view)

    def visit_generic_const_(self, op: tvm.ir.GenericConst) -> relax.Expr:
        if not _approximable(op.value):
            return op
        stored = self._store(op.value)
        if isinstance(stored, str):
            self._read(stored)
            return weight_store.lookup(stored, tuple(op.value.shape), str(op.value.dtype))
        return stored

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        arg = call.args[0] if len(call.args) == 1 else None
        if not (self.pass_.at_load and call.op.same_as(_PERMUTE_DIMS) and isinstance(arg, tvm.ir.expr.Constant)
                and _approximable(arg.value)):
            return super().visit_call_(call)
        shape = tuple(arg.value.shape)
        axes = [int(a) for a in call.attrs.axes] if call.attrs.axes is not None else list(range(len(shape)))[::-1]
        view = weight_store.view_key(self._store(arg.value), axes)
        self._read(view)
        return weight_store.lookup(view, tuple(shape[a] for a in axes), str(arg.value.dtype))


@tvm.transform.module_pass(opt_level=0, name="edgebert.ApproximateRedundantData")
class ApproximateRedundantData:
    """RDA storage for the constants of every block (`threshold` >= 0, `granularity` >= 1 or "layer"),
    decoded at compile time or, with `at_load`, kept compressed for the artifact to decode at load."""

    def __init__(self, threshold: float, granularity: rda.Granularity = rda.DEFAULT_GRANULARITY,
                 at_load: bool = False) -> None:
        self.threshold = rda.check_threshold(threshold)
        self.granularity = rda.check_granularity(granularity)
        self.at_load = at_load

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        done: dict[tvm.runtime.Tensor, tuple[relax.Expr, rda.TensorReport]] = {}
        store = weight_store.Store({}, [])  # with at_load: cache key -> compressed tensor, and the views read
        updated = {}
        for gv, func in block_functions(mod).items():
            updated[gv] = _ReplaceConstants(self, gv.name_hint, done, store).visit_expr(func)
        tensors = [entry for _, entry in done.values()]
        result = tvm.IRModule({gv: updated.get(gv, func) for gv, func in mod.functions_items()}, attrs=mod.attrs)
        result = with_report(result, "rda", {
            "threshold": self.threshold, "granularity": self.granularity, "storage": "load" if self.at_load else "compile",
            "summary": rda.summarize(tensors), "tensors": [dataclasses.asdict(t) for t in tensors]})
        if self.at_load:
            store.views.sort()
            result = weight_store.attach(result, store)
        return result
