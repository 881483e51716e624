"""This CPU's fp32 peak, measured: independent multiply-add chains in vector registers on every thread.

The computed peak (target/cpu/host.py:fp32_peak) multiplies the clock the OS reports, and a VM
reports its nominal clock while its cores boost past it: on a 2-vCPU AMD EPYC (znver5) our GEMMs
reached 95-124 % of the nominal-clock peak. This kernel times what the cores do: CHAINS independent
accumulators of the widest vectors the ISA has, each multiplied and added N times, one copy per
thread of TVM's pool, built by TVM's LLVM backend for the host. GEMM fractions of peak are taken
against it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import numpy as np
import tvm
from tvm.script import tirx as T

from edgebert_tvm.target.cpu.common import vector_lanes
from edgebert_tvm.target.registry import make_target

CHAINS = 12  # independent accumulators: two FMA pipes of latency up to 6, in 12 of AVX2's 16 registers


def fma_kernel(target: tvm.target.Target, threads: int, lanes: int) -> tvm.runtime.Module:
    """`main(acc, n)`: each of `threads` threads multiplies-and-adds its CHAINS x `lanes` accumulators
    n times (x -> 0.999 x + 0.001), in registers."""
    @T.prim_func
    def fma_chains(acc_out: T.Buffer((threads, CHAINS, lanes), "float32"), n: T.int32):
        for t in T.parallel(threads):
            acc = T.alloc_buffer((CHAINS, lanes), "float32", scope="local")
            for j in T.unroll(CHAINS):
                for lane in T.vectorized(lanes):
                    acc[j, lane] = acc_out[t, j, lane]
            for _ in range(n):
                for j in T.unroll(CHAINS):
                    for lane in T.vectorized(lanes):
                        acc[j, lane] = acc[j, lane] * T.float32(0.999) + T.float32(0.001)
            for j in T.unroll(CHAINS):
                for lane in T.vectorized(lanes):
                    acc_out[t, j, lane] = acc[j, lane]

    return tvm.tirx.build(tvm.IRModule({"main": fma_chains}), target=target)


def fma_call(threads: int, seconds: float) -> tuple[Callable[[], None], float]:
    """A call of the FMA loop on `threads` threads taking about `seconds`, and the FLOPs it does: a
    peer that can be timed in the same interleaved rounds as the kernels it is the peak of."""
    pool = tvm.get_global_func("runtime.NumThreads")()
    if pool < threads:  # the parallel loop would run on `pool` threads and count `threads`' work
        raise ValueError(f"TVM's thread pool has {pool} threads, fewer than {threads}: set TVM_NUM_THREADS first "
                         "(harness.set_threads)")
    target = make_target("llvm", threads)
    lanes = vector_lanes(target)
    kernel = fma_kernel(target, threads, lanes)
    acc = tvm.runtime.tensor(np.ones((threads, CHAINS, lanes), "float32"))
    kernel(acc, 1)  # the first call also loads the function: untimed
    n = 1000
    while True:  # grow n until one run takes a tenth of `seconds`
        start = time.perf_counter()
        kernel(acc, n)
        elapsed = time.perf_counter() - start
        if elapsed > seconds / 10:
            break
        n *= 4
    n = int(n * seconds / elapsed)
    return (lambda: kernel(acc, n)), threads * n * CHAINS * lanes * 2


@functools.cache
def measured_fp32_gflops(threads: int, seconds: float = 0.25, repeat: int = 5) -> float:
    """The best of `repeat` timed runs of about `seconds` each (others on the machine only ever slow it);
    measured once per process, as every benchmark's machine line names it."""
    call, flops = fma_call(threads, seconds)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9
