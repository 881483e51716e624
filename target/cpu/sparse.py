"""Sparse kernels for constant weights: block-sparse (BSR) and unstructured (CSR) matmul, and a
gather that decodes a compressed embedding table.

Neither Relax nor topi has a sparse operator any more, so these are written directly as scheduled
TIR (loops already parallel, unrolled and vectorized; `tirx.is_scheduled` keeps the default rules
off them; an opaque block under the root block: Relax's layout-rewrite pass expects that shape of every
PrimFunc). All compute Y[M, N] = X[M, K] @ W[N, K]^T, the form of a linear layer.

- BSR with blocks of `bn` output features x `bk` input features: a tile of `rows` rows of Y times
  one block row of W accumulates in `rows` x `bn` registers; each stored block (kept transposed,
  [bk, bn], so a block column is one vector) is an FMA of a broadcast X value with that vector.
  Knobs: the block shape (fixed by the pruning pattern) and `rows`.
- CSR (any pattern): X is transposed once into [K, M], then each output feature n runs over its
  nonzeros with `width` consecutive rows of Y as the vector, into Y^T, transposed back at the end;
  knob: `width`.
- Embedding gather: values + a bitmask per row + row offsets; a row is decoded by walking its mask.

The numpy converters here define the array layouts the kernels read. Each kernel is TVMScript
parsed once per process, at its first use, with its sizes as parameters, and specialized to each
weight's (`PrimFunc.specialize`, a fraction of a millisecond): a parse takes 50-100 ms, most of it
TVMScript walking the Python stack (250 ms under an import), and a model compile makes one kernel
per sparse weight and length.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tvm
from tvm.script import tirx as T

from .common import SCHEDULED, specialized


@dataclasses.dataclass
class BSRWeight:
    """W[N, K] in blocks of (bn, bk): data[nnzb, bk, bn] (blocks transposed), indices[nnzb] (block
    column), indptr[N / bn + 1]."""

    shape: tuple[int, int]
    block: tuple[int, int]
    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.indices.nbytes + self.indptr.nbytes


@dataclasses.dataclass
class CSRWeight:
    """W[N, K] by rows: data[nnz], indices[nnz] (column), indptr[N + 1]."""

    shape: tuple[int, int]
    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.indices.nbytes + self.indptr.nbytes


def to_bsr(weight: np.ndarray, block: tuple[int, int]) -> BSRWeight:
    """Keep every (bn, bk) block of `weight` that has a nonzero; an all-zero matrix keeps none."""
    n, k = weight.shape
    bn, bk = block
    if n % bn or k % bk:
        raise ValueError(f"block {bn}x{bk} does not tile a {n}x{k} weight")
    blocks = weight.reshape(n // bn, bn, k // bk, bk).transpose(0, 2, 3, 1)  # [N/bn, K/bk, bk, bn]
    kept = np.any(blocks != 0, axis=(2, 3))
    rows, cols = np.nonzero(kept)
    indptr = np.concatenate([[0], np.cumsum(kept.sum(axis=1))]).astype("int32")
    data = np.ascontiguousarray(blocks[rows, cols], dtype=weight.dtype)
    if data.shape[0] == 0:  # keep one zero block so no buffer is empty
        data = np.zeros((1, bk, bn), weight.dtype)
    indices = cols.astype("int32") if cols.size else np.zeros(1, "int32")
    return BSRWeight((n, k), (bn, bk), data, indices, indptr)


def to_csr(weight: np.ndarray) -> CSRWeight:
    rows, cols = np.nonzero(weight)
    indptr = np.concatenate([[0], np.cumsum(np.count_nonzero(weight, axis=1))]).astype("int32")
    data = weight[rows, cols].astype(weight.dtype)
    if data.size == 0:
        return CSRWeight(weight.shape, np.zeros(1, weight.dtype), np.zeros(1, "int32"), indptr)
    return CSRWeight(weight.shape, data, cols.astype("int32"), indptr)


@functools.cache
def _bsr_matmul() -> tvm.tirx.PrimFunc:
    """The BSR kernel with its sizes as parameters (`bsr_matmul` binds them)."""
    @T.prim_func(private=True, s_tir=True)
    def func(x_handle: T.handle, data_handle: T.handle, indices_handle: T.handle, indptr_handle: T.handle,
             y_handle: T.handle, m: T.int32, k: T.int32, n: T.int32, nnzb: T.int32, bk: T.int32, bn: T.int32,
             rows: T.int32):
        T.func_attr(SCHEDULED)
        x = T.match_buffer(x_handle, (m, k))
        data = T.match_buffer(data_handle, (nnzb, bk, bn))
        indices = T.match_buffer(indices_handle, (nnzb,), "int32")
        indptr = T.match_buffer(indptr_handle, (n // bn + 1,), "int32")
        y = T.match_buffer(y_handle, (m, n))
        with T.sblock("root"):
            with T.sblock("kernel"):
                T.reads(x[0:m, 0:k], data[0:nnzb, 0:bk, 0:bn], indices[0:nnzb], indptr[0:n // bn + 1])
                T.writes(y[0:m, 0:n])
                for task in T.parallel(n // bn * (m // rows)):
                    acc = T.alloc_buffer((rows, bn), scope="local")
                    for r in T.unroll(rows):
                        for j in T.vectorized(bn):
                            acc[r, j] = T.float32(0)
                    for b in range(indptr[task // (m // rows)], indptr[task // (m // rows) + 1]):
                        for kk in range(bk):
                            for r in T.unroll(rows):
                                for j in T.vectorized(bn):
                                    acc[r, j] = acc[r, j] + x[task % (m // rows) * rows + r, indices[b] * bk + kk] * data[b, kk, j]
                    for r in T.unroll(rows):
                        for j in T.vectorized(bn):
                            y[task % (m // rows) * rows + r, task // (m // rows) * bn + j] = acc[r, j]

    return func


def bsr_matmul(m: int, weight: BSRWeight, rows: int = 8) -> tvm.tirx.PrimFunc:
    """Y[m, N] = X[m, K] @ W^T for a BSR weight; `rows` rows of Y per register tile."""
    n, k = weight.shape
    bn, bk = weight.block
    return specialized(_bsr_matmul(), m=m, k=k, n=n, nnzb=weight.data.shape[0], bk=bk, bn=bn,
                        rows=_divisor_at_most(m, rows))


@functools.cache
def _csr_matmul() -> tvm.tirx.PrimFunc:
    """The CSR kernel with its sizes as parameters (`csr_matmul` binds them)."""
    @T.prim_func(private=True, s_tir=True)
    def func(x_handle: T.handle, data_handle: T.handle, indices_handle: T.handle, indptr_handle: T.handle,
             y_handle: T.handle, m: T.int32, k: T.int32, n: T.int32, nnz: T.int32, width: T.int32):
        T.func_attr(SCHEDULED)
        x = T.match_buffer(x_handle, (m, k))
        data = T.match_buffer(data_handle, (nnz,))
        indices = T.match_buffer(indices_handle, (nnz,), "int32")
        indptr = T.match_buffer(indptr_handle, (n + 1,), "int32")
        y = T.match_buffer(y_handle, (m, n))
        with T.sblock("root"):
            with T.sblock("kernel"):
                T.reads(x[0:m, 0:k], data[0:nnz], indices[0:nnz], indptr[0:n + 1])
                T.writes(y[0:m, 0:n])
                xt = T.alloc_buffer((k, m))
                for c in T.parallel(k):
                    for i in range(m):
                        xt[c, i] = x[i, c]
                yt = T.alloc_buffer((n, m))
                for task in T.parallel(n * (m // width)):
                    acc = T.alloc_buffer((width,), scope="local")
                    for i in T.vectorized(width):
                        acc[i] = T.float32(0)
                    for p in range(indptr[task // (m // width)], indptr[task // (m // width) + 1]):
                        for i in T.vectorized(width):
                            acc[i] = acc[i] + data[p] * xt[indices[p], task % (m // width) * width + i]
                    for i in T.vectorized(width):
                        yt[task // (m // width), task % (m // width) * width + i] = acc[i]
                for i in T.parallel(m):
                    for j in range(n):
                        y[i, j] = yt[j, i]

    return func


def csr_matmul(m: int, weight: CSRWeight, width: int = 64) -> tvm.tirx.PrimFunc:
    """Y[m, N] = X[m, K] @ W^T for a CSR weight; `width` rows of Y form the vector of one FMA chain."""
    n, k = weight.shape
    return specialized(_csr_matmul(), m=m, k=k, n=n, nnz=weight.data.shape[0], width=_divisor_at_most(m, width))


@dataclasses.dataclass
class MaskedTable:
    """A [V, H] table with most entries zero: the nonzero values row by row, a bitmask [V, H / 32]
    (bit h % 32 of word h // 32 set where entry h is kept) and row offsets [V + 1] into values."""

    shape: tuple[int, int]
    values: np.ndarray
    mask: np.ndarray
    offsets: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.mask.nbytes + self.offsets.nbytes


def to_masked_table(table: np.ndarray) -> MaskedTable:
    v, h = table.shape
    if h % 32:
        raise ValueError(f"a masked table needs a width divisible by 32, got {h}")
    kept = table != 0
    bits = kept.reshape(v, h // 32, 32).astype("uint64") << np.arange(32, dtype="uint64")
    mask = bits.sum(axis=2).astype("uint32")
    offsets = np.concatenate([[0], np.cumsum(kept.sum(axis=1))]).astype("int32")
    values = table[kept].astype(table.dtype)
    if values.size == 0:
        values = np.zeros(1, table.dtype)
    return MaskedTable((v, h), values, mask, offsets)


@functools.cache
def _masked_gather() -> tvm.tirx.PrimFunc:
    """The gather with its sizes as parameters (`masked_gather` binds them)."""
    @T.prim_func(private=True, s_tir=True)
    def func(ids_handle: T.handle, values_handle: T.handle, mask_handle: T.handle, offsets_handle: T.handle,
             out_handle: T.handle, count: T.int32, v: T.int32, h: T.int32, nnz: T.int32):
        T.func_attr(SCHEDULED)
        ids = T.match_buffer(ids_handle, (count,), "int32")
        values = T.match_buffer(values_handle, (nnz,))
        mask = T.match_buffer(mask_handle, (v, h // 32), "uint32")
        offsets = T.match_buffer(offsets_handle, (v + 1,), "int32")
        out = T.match_buffer(out_handle, (count, h))
        with T.sblock("root"):
            with T.sblock("kernel"):
                T.reads(ids[0:count], values[0:nnz], mask[0:v, 0:h // 32], offsets[0:v + 1])
                T.writes(out[0:count, 0:h])
                for t in T.parallel(count):
                    cursor = T.alloc_buffer((1,), "int32", scope="local")
                    row = T.min(T.max(ids[t], 0), v - 1)
                    cursor[0] = offsets[row]
                    for w in range(h // 32):
                        for b in range(32):
                            if (mask[row, w] >> T.uint32(b)) & T.uint32(1) == T.uint32(1):
                                out[t, w * 32 + b] = values[cursor[0]]
                                cursor[0] = cursor[0] + 1
                            else:
                                out[t, w * 32 + b] = T.float32(0)

    return func


def masked_gather(count: int, table: MaskedTable) -> tvm.tirx.PrimFunc:
    """out[t, :] = row ids[t] of the table, decoded from its bitmask and values."""
    v, h = table.shape
    return specialized(_masked_gather(), count=count, v=v, h=h, nnz=table.values.shape[0])


def _divisor_at_most(extent: int, wanted: int) -> int:
    return next(d for d in range(min(wanted, extent), 0, -1) if extent % d == 0)
