"""edgebert.FoldSparsity: run pruned constant weights through sparse kernels where that pays.

In every encoder layer function, each `matmul(x, permute_dims(W))` with a constant W is measured
(density, and the fraction of blocks kept for each candidate block shape) and the target's cost
model (target/cpu/sparse_cost.py, measured on this CPU) predicts the time of our dense matmul, the
CSR kernel and the BSR kernel per block shape. The fastest wins if it beats dense by `min_speedup`;
the matmul becomes a `call_tir` to that kernel with W's compressed arrays as constants. Bias, GELU
and residual epilogues stay separate Relax ops, so they remain correct whatever the choice.

Pruned embedding tables (the word embeddings, 60% zeros in EdgeBERT) are stored as values plus a
bitmask and gathered by a decoding kernel, when that is smaller than the dense table.

The per-matrix choices are the module's "sparsity" report (contract `with_report`).

Place in the pipeline: after FoldAttentionSpan and FuseQKV, before QuantizeWeightsAdaptivFloat
(refused together: sparse kernels read float32 values), ApproximateRedundantData and FoldEntropyExit;
llvm only (its kernels and measured cost model are CPU ones).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ...contract import EMBEDDINGS, LAYER, block_functions, with_report
from ...errors import EdgeBertError
from .common import static_shape
from .sparse import bsr_matmul, csr_matmul, masked_gather, to_bsr, to_csr, to_masked_table
from .sparse_cost import BSR_BLOCKS, CostModel, kind_name, load_cost_model

DENSE_ENOUGH = 0.9  # a kernel that skips less than this much work is not sparse: keep dense


def _constant_array(expr: relax.Expr) -> np.ndarray | None:
    if isinstance(expr, tvm.ir.expr.Constant) and isinstance(expr.value, tvm.runtime.Tensor):
        return expr.value.numpy()
    return None


def kept_blocks(weight: np.ndarray, block: tuple[int, int]) -> int:
    """Number of (bn, bk) blocks of `weight` holding a nonzero."""
    n, k = weight.shape
    return int(np.any(weight.reshape(n // block[0], block[0], k // block[1], block[1]) != 0, axis=(1, 3)).sum())


def choose_kernel(weight: np.ndarray, m: int, cost: CostModel, min_speedup: float) -> dict:
    """The predicted time of each kernel kind for X[m, K] @ W^T and the one chosen."""
    n, k = weight.shape
    nnz = int(np.count_nonzero(weight))
    predicted = {"dense": cost.predict("dense", m, k, n, m * n * k)}
    if nnz / weight.size <= DENSE_ENOUGH:
        predicted["csr"] = cost.predict("csr", m, k, n, m * nnz)
        for block in BSR_BLOCKS:
            if n % block[0] == 0 and k % block[1] == 0:
                kept = kept_blocks(weight, block) * block[0] * block[1]
                if kept <= DENSE_ENOUGH * weight.size:  # else it is a dense kernel in disguise
                    predicted[kind_name(block)] = cost.predict(kind_name(block), m, k, n, m * kept)
    best = min(predicted, key=predicted.get)
    if predicted[best] * min_speedup > predicted["dense"]:
        best = "dense"
    return {"shape": [n, k], "rows": m, "density": nnz / weight.size, "choice": best,
            "predicted_us": {kind: round(t * 1e6, 2) for kind, t in predicted.items()}}


def _block_of(kind: str) -> tuple[int, int]:
    rows, cols = kind[3:].split("x")
    return int(rows), int(cols)


@mutator
class _Rewriter(PyExprMutator):
    """Replaces the chosen matmuls and embedding gathers in one function at a time."""

    def __init__(self, mod: tvm.IRModule, pass_: "FoldSparsity", cost: CostModel) -> None:
        super().__init__(mod)
        self.options, self.cost = pass_, cost
        self.function = ""
        self.choices: list[dict] = []

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D102
        call = self.visit_expr_post_order(call)
        if call.op == tvm.ir.Op.get("relax.matmul"):
            return self._matmul(call)
        if call.op == tvm.ir.Op.get("relax.take") and self.options.compress_embeddings:
            return self._take(call)
        return call

    def _matmul(self, call: relax.Call) -> relax.Expr:
        x, rhs = call.args
        bound = self.lookup_binding(rhs) if isinstance(rhs, relax.Var) else None
        if not (isinstance(bound, relax.Call) and bound.op == tvm.ir.Op.get("relax.permute_dims")):
            return call
        weight = _constant_array(bound.args[0])
        x_shape = static_shape(x)
        if weight is None or weight.ndim != 2 or x_shape is None or len(x_shape) != 2 or weight.dtype != "float32":
            return call
        if bound.attrs.axes is not None and [int(a) for a in bound.attrs.axes] != [1, 0]:
            return call
        m = x_shape[0]
        choice = choose_kernel(weight, m, self.cost, self.options.min_speedup)
        choice["function"] = self.function
        self.choices.append(choice)
        kind = choice["choice"]
        if kind == "dense":
            return call
        if kind == "csr":
            sparse = to_csr(weight)
            func = csr_matmul(m, sparse, self.options.csr_width)
        else:
            sparse = to_bsr(weight, _block_of(kind))
            func = bsr_matmul(m, sparse, self.options.bsr_rows)
        choice["bytes"] = {"dense": weight.nbytes, "sparse": sparse.nbytes}
        gv = self.builder_.add_func(func, f"sparse_matmul_{kind}")
        args = [x, *(relax.const(a) for a in (sparse.data, sparse.indices, sparse.indptr))]
        return relax.call_tir(gv, args, relax.TensorType((m, weight.shape[0]), "float32"))

    def _take(self, call: relax.Call) -> relax.Expr:
        table, ids = call.args
        array = _constant_array(table)
        id_shape = static_shape(ids)
        if (array is None or array.ndim != 2 or array.dtype != "float32" or array.shape[1] % 32 or id_shape is None
                or len(id_shape) != 1 or int(call.attrs.axis) != 0 or ids.ty.dtype != "int32"):
            return call
        density = float(np.count_nonzero(array)) / array.size
        if density > 0.75:  # values + bitmask only shrink a table that is mostly zeros
            return call
        compressed = to_masked_table(array)
        self.choices.append({"function": self.function, "shape": list(array.shape), "density": density,
                             "choice": "masked_gather", "bytes": {"dense": array.nbytes, "sparse": compressed.nbytes}})
        gv = self.builder_.add_func(masked_gather(id_shape[0], compressed), "masked_gather")
        args = [ids, *(relax.const(a) for a in (compressed.values, compressed.mask, compressed.offsets))]
        return relax.call_tir(gv, args, relax.TensorType((id_shape[0], array.shape[1]), "float32"))


@tvm.transform.module_pass(opt_level=0, name="edgebert.FoldSparsity")
class FoldSparsity:
    """Sparse kernels for pruned constant weights in the layer blocks, compressed pruned embeddings.

    `cost_model`: default, the current target's (measured on first use). `min_speedup`: how much
    faster than dense a sparse kernel must be predicted to be. `bsr_rows`, `csr_width`: the
    kernels' tile knobs (rows of Y per BSR register tile, rows of Y per CSR vector).
    """

    def __init__(self, cost_model: CostModel | None = None, min_speedup: float = 1.1, compress_embeddings: bool = True,
                 bsr_rows: int = 8, csr_width: int = 64) -> None:
        if min_speedup <= 0 or bsr_rows < 1 or csr_width < 1:
            raise EdgeBertError("FoldSparsity: min_speedup must be > 0, bsr_rows and csr_width >= 1")
        self.cost_model = cost_model
        self.min_speedup = min_speedup
        self.compress_embeddings = compress_embeddings
        self.bsr_rows = bsr_rows
        self.csr_width = csr_width

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        cost = self.cost_model
        if cost is None:
            target = tvm.target.Target.current()
            if target is None or target.kind.name != "llvm":
                raise EdgeBertError("FoldSparsity needs a CPU (llvm) target in scope or an explicit cost model")
            cost = load_cost_model(target)
        rewriter = _Rewriter(mod, self, cost)
        for gv, func in {**block_functions(mod, LAYER), **block_functions(mod, EMBEDDINGS)}.items():
            rewriter.function = gv.name_hint
            rewritten = rewriter.visit_expr(func)
            rewriter.builder_.update_func(gv, relax.analysis.remove_all_unused(rewritten))
        result = rewriter.builder_.get()
        return with_report(result, "sparsity", rewriter.choices)
