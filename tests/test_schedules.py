"""Default CPU schedules: every kernel scheduled, numerics unchanged on awkward shapes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax, s_tir

from edgebert_tvm.target.targets import lowering_pipeline
from edgebert_tvm.importer import InputSpec, import_model
from edgebert_tvm.models.checkpoint import load
from edgebert_tvm.passes.canonicalize import Canonicalize
from edgebert_tvm.target.registry import make_target
from edgebert_tvm.target.cpu import unscheduled_functions
from edgebert_tvm.target.cpu.common import vector_bits
from edgebert_tvm.target.cpu.host import fp32_peak, isa_flags, missing_isa


def _lower(mod: tvm.IRModule) -> tvm.IRModule:
    target = make_target("llvm")
    with target:
        return lowering_pipeline(target)(mod)


def _run(mod: tvm.IRModule, *args: np.ndarray) -> np.ndarray:
    target = make_target("llvm")
    vm = relax.VirtualMachine(tvm.compile(_lower(mod), target, relax_pipeline=None), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in args]).numpy()


def _function(params: dict[str, tuple], body) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    variables = [relax.Var(name, relax.TensorType(shape, "float32")) for name, shape in params.items()]
    with bb.function("main", variables):
        with bb.dataflow():
            out = bb.emit_output(body(*variables))
        bb.emit_func_output(out)
    return bb.finalize()


@pytest.mark.parametrize("model", ["albert-tiny", "tiny-bert"])
def test_every_kernel_of_the_model_is_scheduled(model, tiny_bert_dir):
    checkpoint = load(tiny_bert_dir if model == "tiny-bert" else model)
    lowered = _lower(import_model(checkpoint.model, InputSpec(2, 16)))
    assert unscheduled_functions(lowered) == []


@pytest.mark.real_model
def test_every_minilm_kernel_is_scheduled():
    lowered = _lower(import_model(load("minilm-l6").model, InputSpec(1, 32)))
    assert unscheduled_functions(lowered) == []


def test_an_unscheduled_kernel_is_reported():
    legal = relax.transform.LegalizeOps()(_function({"x": (64, 64)}, lambda x: relax.op.add(x, x)))
    assert unscheduled_functions(legal) == ["add"]
    assert unscheduled_functions(_lower(_function({"x": (64, 64)}, lambda x: relax.op.add(x, x)))) == []


@pytest.mark.parametrize("m, k, n", [(128, 64, 96), (13, 40, 70), (1, 64, 2), (7, 3, 33), (6, 32, 64)])
def test_dense_matmul_with_epilogue_on_awkward_shapes(m, k, n):
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((k, n), dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
    x, r = rng.standard_normal((1, m, k), dtype=np.float32), rng.standard_normal((1, m, n), dtype=np.float32)
    mod = _function({"x": (1, m, k), "r": (1, m, n)},
                    lambda xv, rv: relax.op.add(relax.op.tanh(relax.op.add(relax.op.matmul(xv, relax.const(w)),
                                                                           relax.const(b))), rv))
    np.testing.assert_allclose(_run(mod, x, r), np.tanh(x @ w + b) + r, rtol=1e-5, atol=1e-5)


def test_matmul_whose_epilogue_reads_a_slice_of_the_product():
    """FuseOps puts a strided_slice after the product into the matmul's kernel; written back tile
    by tile, the slice would be written over every row of the tile, past its end."""
    rng = np.random.default_rng(2)
    w, b = rng.standard_normal((32, 24), dtype=np.float32), rng.standard_normal(24, dtype=np.float32)
    x, r = rng.standard_normal((2, 16, 32), dtype=np.float32), rng.standard_normal((2, 16, 24), dtype=np.float32)

    def body(xv, rv):
        product = relax.op.add(relax.op.matmul(xv, relax.const(w)), relax.const(b))
        return relax.op.add(relax.op.strided_slice(product, [1], [0], [1]), relax.op.strided_slice(rv, [1], [0], [1]))

    mod = _function({"x": x.shape, "r": r.shape}, body)
    lowered = _lower(mod)
    s_tir.analysis.OOBChecker()(tvm.IRModule(  # raises on an access past a buffer's end
        {gv: f for gv, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}))
    np.testing.assert_allclose(_run(mod, x, r), (x @ w + b)[:, :1] + r[:, :1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mcpu, bits, rows", [("x86-64-v2", 128, 6), ("znver3", 256, 6), ("skylake-avx512", 512, 8)])
def test_register_tile_follows_the_target_isa(mcpu, bits, rows):
    """The tile is chosen from the target's CPU features, not this machine's: 6 rows of two vectors on
    the 16 registers of SSE and AVX2, 8 on AVX-512's 32; where this CPU can run it, it is right."""
    target = make_target("llvm", mcpu=mcpu)
    assert vector_bits(target) == bits
    rng = np.random.default_rng(3)
    w, x = rng.standard_normal((32, 64), dtype=np.float32), rng.standard_normal((1, 48, 32), dtype=np.float32)
    mod = _function({"x": x.shape}, lambda xv: relax.op.matmul(xv, relax.const(w)))
    with target:
        lowered = lowering_pipeline(target)(mod)
    (matmul,) = [f.script() for gv, f in lowered.functions_items() if "matmul" in gv.name_hint]
    loops = {kind: {int(n) for n in re.findall(rf"T\.{kind}\(T\.int64\((\d+)\)\)", matmul)}
             for kind in ("unroll", "vectorized")}
    assert loops == {"unroll": {rows}, "vectorized": {2 * bits // 32}}
    if not missing_isa(isa_flags(target)):
        vm = relax.VirtualMachine(tvm.compile(lowered, target, relax_pipeline=None), tvm.cpu())
        np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), x @ w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch, m, k, n", [(12, 128, 64, 128), (4, 9, 16, 9), (3, 1, 5, 7)])
def test_batched_matmul(batch, m, k, n):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((batch, m, k), dtype=np.float32), rng.standard_normal((batch, k, n), dtype=np.float32)
    mod = _function({"a": a.shape, "b": b.shape}, relax.op.matmul)
    np.testing.assert_allclose(_run(mod, a, b), a @ b, rtol=1e-5, atol=1e-5)


def _layer_norm_then_scale(n: int):
    gamma, beta = (relax.const(np.linspace(lo, hi, n, dtype=np.float32)) for lo, hi in ((0.5, 1.5), (-1, 1)))
    return lambda x, scale: relax.op.multiply(relax.op.nn.layer_norm(x, gamma, beta, axes=[-1]), scale)


def _masked_softmax(x, mask):
    return relax.op.nn.softmax(relax.op.add(x, mask), axis=-1)


@pytest.mark.parametrize("shape", [(1, 128, 384), (2, 25, 40), (3, 7, 13), (1, 4, 8), (1, 1, 384), (1, 1, 13)])
@pytest.mark.parametrize("kind", ["layer_norm", "softmax"])
def test_row_normalization_with_fused_neighbours(kind, shape):
    """Row lengths that split into 16, 8 and no vector partials (13, 8: reduced serially); one row."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape, dtype=np.float32) * 4 + 2).astype(np.float32)
    other = rng.standard_normal(shape[-1:], dtype=np.float32)
    body = _layer_norm_then_scale(shape[-1]) if kind == "layer_norm" else _masked_softmax
    mod = _function({"x": shape, "o": other.shape}, body)
    lowered = _lower(mod)
    s_tir.analysis.OOBChecker()(tvm.IRModule(
        {gv: f for gv, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}))
    assert unscheduled_functions(lowered) == []
    if kind == "layer_norm":
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        gamma, beta = np.linspace(0.5, 1.5, shape[-1], dtype=np.float32), np.linspace(-1, 1, shape[-1], dtype=np.float32)
        expected = ((x - mean) / np.sqrt(var + 1e-5) * gamma + beta) * other
    else:
        z = x + other
        expected = np.exp(z - z.max(-1, keepdims=True))
        expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(_run(mod, x, other), expected, rtol=1e-4, atol=1e-5)


def test_row_reductions_run_in_vector_partials():
    """A LayerNorm row of 384 is summed in 16 partial sums (one AVX-512 vector) or 8 (AVX2)."""
    lowered = _lower(_function({"x": (1, 32, 384), "o": (384,)}, _layer_norm_then_scale(384)))
    script = "\n".join(f.script() for _, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    assert "_rf_update" in script and "T.vectorized" in script


@pytest.mark.parametrize("l2, depth, panels, expected", [
    (2 << 20, 768, 24, 4),     # 5 panels of 96 KB fit in 25 % of 2 MB; 4 divides 24
    (2 << 20, 384, 24, 8),     # 10 of 48 KB fit
    (2 << 20, 3072, 24, 1),    # one panel of 384 KB is already most of the share
    (1 << 20, 768, 96, 2),
    (2 << 20, 768, 5, 5),      # all panels fit
    (2 << 20, 768, 13, 1),     # 5 would fit, but 13 is prime
])
def test_weight_blocks_fill_a_share_of_l2(monkeypatch, l2, depth, panels, expected):
    from edgebert_tvm.target.cpu import matmul
    monkeypatch.setattr(matmul, "l2_bytes", lambda mcpu: (l2, "test"))
    monkeypatch.setattr(matmul, "L2_SHARE_FOR_B", 0.25)
    assert matmul._panels_per_block(panels, depth, 32, 4, make_target("llvm")) == expected


def test_l2_is_this_machines_only_when_compiling_for_it():
    from tvm.target import codegen
    from edgebert_tvm.target.cpu.host import DEFAULT_L2_BYTES, host_l2_bytes, l2_bytes
    assert l2_bytes("a-cpu-that-is-not-this-one") == (DEFAULT_L2_BYTES, "default (not this machine's CPU)")
    if host_l2_bytes():
        assert l2_bytes(codegen.llvm_get_system_cpu())[0] == host_l2_bytes()


def test_fast_math_error_is_small():
    x = np.linspace(-8, 8, 4096, dtype=np.float32).reshape(4, 1024)
    import math

    erf = np.vectorize(math.erf)
    gelu = _run(_function({"x": x.shape}, relax.op.nn.gelu), x)
    np.testing.assert_allclose(gelu, 0.5 * x * (1 + erf(x / np.sqrt(2))), atol=2e-6)
    np.testing.assert_allclose(_run(_function({"x": x.shape}, relax.op.tanh), x), np.tanh(x), atol=2e-6)
    softmax = _run(_function({"x": x.shape}, lambda v: relax.op.nn.softmax(v, axis=-1)), x)
    expected = np.exp(x - x.max(-1, keepdims=True))
    np.testing.assert_allclose(softmax, expected / expected.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_canonicalize_removes_linear_reshapes_and_power(tiny_bert_dir):
    mod = import_model(load("albert-tiny").model, InputSpec(1, 8))

    def count(m: tvm.IRModule, op: str) -> int:
        found = []
        relax.analysis.post_order_visit(
            m["layer_0"], lambda e: found.append(e) if isinstance(e, relax.Call) and getattr(e.op, "name", "") == op else None
        )
        return len(found)

    after = Canonicalize()(mod)
    assert count(after, "relax.matmul") == count(mod, "relax.matmul") == 8
    assert count(after, "relax.reshape") < count(mod, "relax.reshape") - 8
    assert count(mod, "relax.power") == 1 and count(after, "relax.power") == 0
    inputs = [np.ones((1, 8), np.int64), np.ones((1, 8), np.int64), np.zeros((1, 8), np.int64)]
    target = make_target("llvm")
    results = []
    for m in (mod, after):
        vm = relax.VirtualMachine(tvm.compile(m, target), tvm.cpu())
        results.append(vm["all_exits"](*[tvm.runtime.tensor(a) for a in inputs]).numpy())
    np.testing.assert_allclose(results[0], results[1], atol=1e-5)


def test_constant_weights_are_packed_at_compile_time():
    from edgebert_tvm.target.cpu.common import vector_lanes

    w = np.random.default_rng(2).standard_normal((64, 256), dtype=np.float32)
    lowered = _lower(_function({"x": (1, 12, 64)}, lambda x: relax.op.matmul(x, relax.const(w))))
    shapes = []
    relax.analysis.post_order_visit(
        lowered["main"],
        lambda e: shapes.append(tuple(e.value.shape))
        if isinstance(e, tvm.ir.expr.Constant) and isinstance(e.value, tvm.runtime.Tensor) else None)
    width = 2 * vector_lanes(make_target("llvm"))
    assert (256 // width, 64, width) in shapes and (64, 256) not in shapes


@pytest.mark.parametrize("flags, mcpu, lanes, pipes, gflops", [
    ({"avx2", "fma"}, "znver3", 8, 2, 156.8),  # 2 cores at 2.45 GHz: the AMD EPYC znver3 the project met
    ({"avx512f", "avx2", "fma"}, "znver4", 8, 2, 156.8),  # Zen 4: AVX-512 on 256-bit pipes
    ({"avx512f", "avx2", "fma"}, "znver5", 16, 2, 313.6),
    ({"avx512f", "avx2", "fma"}, "sapphirerapids", 16, 2, 313.6),
    ({"sse4_2"}, "nehalem", 4, 1, 39.2),
])
def test_fp32_peak_follows_the_isa(flags, mcpu, lanes, pipes, gflops):
    peak = fp32_peak(2, 2.45, flags, mcpu)
    assert (peak.lanes, peak.fma_pipes) == (lanes, pipes)
    assert peak.gflops == pytest.approx(gflops)
    assert f"{round(gflops)} GFLOP/s" in str(peak)


def test_measured_peak_kernel_does_the_multiply_adds_it_counts():
    """benchmarks/fma_peak.py: n multiply-adds per lane of every chain on every thread, as FMAs."""
    from benchmarks.fma_peak import CHAINS, fma_kernel

    target = make_target("llvm", 2)
    kernel = fma_kernel(target, 2, 8)
    acc = tvm.runtime.tensor(np.zeros((2, CHAINS, 8), "float32"))
    kernel(acc, 100)
    np.testing.assert_allclose(acc.numpy(), 1 - 0.999 ** 100, rtol=1e-5)  # x_n = 1 - 0.999^n from 0
    if "fma" in Path("/proc/cpuinfo").read_text().split():  # x86 with FMA: the loop is fused multiply-adds
        assert "vfmadd" in kernel.inspect_source("asm")
