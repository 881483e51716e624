"""Sequence lengths: one artifact runs every input length up to its cap, each batch at the length it needs.

The graph is compiled at a few lengths (`default_lengths`: every multiple of 8 from 16 to 64, then
steps of at most 25 %, and the cap; docs/ARCHITECTURE.md, "Sequence lengths"), each a full copy of
the block functions with its own static-shape kernels, merged into one module: the copy at the cap
keeps the plain names (`main`, `all_exits`), the others carry `suffix(length, cap)`. The copies read
the same weights, and the VM's constant pool stores equal constants once, so the library holds the
weights once. A call runs at the smallest compiled length that holds the last real token of every
row of its batch: the keys past it are masked, so cutting (or padding) the batch to that length
changes nothing but the work done. Torch-free: the runtime picks lengths with it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tvm
from tvm import relax

from .errors import EdgeBertError, InternalError
from .passes.deduplicate_prim_funcs import repoint_globals

SHORTEST_DEFAULT = 16  # below it a layer's fixed per-call costs outweigh the tokens saved
STEP = 8  # compiled lengths are multiples of the AVX-512 matmul kernel's row tile
GROWTH = 1.25


def default_lengths(cap: int) -> tuple[int, ...]:
    """16, 24, 32, ..., 64, then steps of at most `GROWTH` (80, 96, 120, ...) below `cap`, then `cap`.

    From 40 tokens on a batch computes at most 1.25x the tokens it needs; SST-2 dev sentences (25
    tokens on average) compute 1.17x theirs, against 1.43x with powers of two (which compile faster:
    ALBERT-base at cap 128, 10.0 s for 4 lengths against 23.2 s for 11, in-process)."""
    lengths, length = [], SHORTEST_DEFAULT
    while length < cap:
        lengths.append(length)
        length = max(length + STEP, int(length * GROWTH) // STEP * STEP)
    return (*lengths, cap)


def check_lengths(lengths: Sequence[int], cap: int) -> tuple[int, ...]:
    """`lengths` sorted, each in [1, cap], the cap among them; else a one-line error."""
    chosen = tuple(sorted(set(lengths)))
    if not chosen or chosen[0] < 1 or chosen[-1] > cap:
        raise EdgeBertError(f"--lengths must lie in [1, {cap}] (the --seq-len), got {list(lengths)}")
    return chosen if chosen[-1] == cap else (*chosen, cap)


def suffix(length: int, cap: int) -> str:
    """What the names of the functions compiled at `length` end with: nothing at the cap."""
    return "" if length == cap else f"__len{length}"


def unsuffixed(name: str) -> str:
    """A function's name as at the cap (`suffix` removed)."""
    return name.split("__len")[0]


def attended_length(attention_mask: np.ndarray) -> int:
    """One past the last token that any row of `attention_mask` (rows, tokens) attends to."""
    attended = np.flatnonzero(attention_mask.any(axis=0))
    return int(attended[-1]) + 1 if attended.size else 1


def length_for(attention_mask: np.ndarray, lengths: Sequence[int]) -> int:
    """The smallest of `lengths` (ascending) that holds every attended token of these rows."""
    needed = attended_length(attention_mask)
    return next((length for length in lengths if length >= needed), lengths[-1])


def fit(array: np.ndarray, length: int) -> np.ndarray:
    """`array` (rows, tokens) cut or zero-padded (padding: id 0, mask 0) to `length` tokens."""
    if array.shape[1] >= length:
        return np.ascontiguousarray(array[:, :length])
    return np.pad(array, ((0, 0), (0, length - array.shape[1])))


def with_suffix(mod: tvm.IRModule, tail: str) -> tvm.IRModule:
    """`mod` with `tail` appended to the name and global symbol of every function."""
    if not tail:
        return mod
    bb = relax.BlockBuilder()  # makes the new GlobalVars, typed by their functions
    renamed = {gv: bb.add_func(func, gv.name_hint + tail) for gv, func in mod.functions_items()}
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            func = repoint_globals(func, renamed)
        if func.attrs is not None and "global_symbol" in func.attrs:
            func = func.with_attr("global_symbol", renamed[gv].name_hint)
        bb.update_func(renamed[gv], func)
    return tvm.IRModule(dict(bb.get().functions_items()), attrs=mod.attrs)


def merged(modules: Sequence[tvm.IRModule]) -> tvm.IRModule:
    """One module of every function of `modules` (their names distinct), with the last one's attributes."""
    functions = {gv: func for mod in modules for gv, func in mod.functions_items()}
    names = [gv.name_hint for gv in functions]
    if len(set(names)) != len(names):
        raise InternalError("lengths.merged: two compiled lengths define the same function name")
    return tvm.IRModule(functions, attrs=modules[-1].attrs)
