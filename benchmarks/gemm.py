"""GEMM micro-benchmark on the encoder shapes: achieved GFLOP/s of edgebert-tvm, PyTorch and ORT, and
each one's fraction of this CPU's fp32 peak as measured by an FMA loop (fma_peak.py; the peak computed
from the reported clock, target/cpu/host.py:fp32_peak, is printed beside it).

Each is `x @ W + b` with W a constant weight, the way the encoder's dense layers run; ours goes
through the same pipeline as a whole model (graph clean-up, fusion, default schedules).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import tvm
from tvm import relax

sys.path.insert(0, str(Path(__file__).parent))

from fma_peak import fma_call  # noqa: E402
from harness import median, time_interleaved  # noqa: E402

from edgebert_tvm.target.cpu.host import host_fp32_peak  # noqa: E402
from edgebert_tvm.target.targets import lowering_pipeline  # noqa: E402
from edgebert_tvm.target.registry import make_target  # noqa: E402

# (M, K, N): ALBERT-base's / BERT-base's dense layers, then MiniLM-L6's, at sequence 128.
BLOCK_MS = 20.0  # each peer's calls back to back for this long per round (harness.time_interleaved)

PEAK = "fma peak"

SHAPES = [(128, 768, 768), (128, 768, 3072), (128, 3072, 768), (128, 384, 384), (128, 384, 1536), (128, 1536, 384)]


def _ours(x: np.ndarray, w: np.ndarray, b: np.ndarray, threads: int, mcpu: str | None = None):
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.add(relax.op.matmul(xv, relax.const(w)), relax.const(b)))
        bb.emit_func_output(out)
    target = make_target("llvm", threads, mcpu)
    with target:
        mod = lowering_pipeline(target)(bb.finalize())
    vm = relax.VirtualMachine(tvm.compile(mod, target, relax_pipeline=None), tvm.cpu())
    arg, main = tvm.runtime.tensor(x), vm["main"]
    return lambda: np.from_dlpack(main(arg))  # no copy, as torch's .numpy() and ORT's outputs


def _ort(x: np.ndarray, w: np.ndarray, b: np.ndarray, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "b"], ["out"])],
        "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [x.shape[0], w.shape[1]])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"x": x})[0]


def gemm_benchmark(threads: int, rounds: int, mcpu: str | None = None) -> list[dict]:
    """Each shape's peers and the FMA loop in the same interleaved rounds, so a GEMM's fraction of
    peak is taken against the peak as the machine ran at that moment (a VM's vCPU stalls for
    seconds at times: one run's peak, measured alone before the GEMMs, read half of what it was)."""
    rng = np.random.default_rng(0)
    results = []
    peak_call, peak_flops = fma_call(threads, BLOCK_MS / 4e3)
    print(f"\nGEMMs, GFLOP/s and (in brackets) the fraction of this CPU's fp32 peak as measured in the same rounds "
          f"(an FMA loop on {threads} threads; computed from the reported clock: {host_fp32_peak(threads)})")
    print(f"{'M x K x N':>18s} {'edgebert-tvm':>16s} {'pytorch':>16s} {'onnxruntime':>16s} {'peak':>6s} "
          f"{'ours/torch':>11s} {'ours/ORT':>9s}")
    for m, k, n in SHAPES:
        x, w, b = (rng.standard_normal(s, dtype=np.float32) for s in ((m, k), (k, n), (n,)))
        xt, wt, bt = (torch.from_numpy(a) for a in (x, w, b))
        runners = {
            "edgebert-tvm": _ours(x, w, b, threads, mcpu),
            "pytorch": lambda: torch.addmm(bt, xt, wt).numpy(),
            "onnxruntime": _ort(x, w, b, threads),
        }
        expected = x @ w + b
        for name, run in runners.items():
            np.testing.assert_allclose(run(), expected, rtol=1e-3, atol=1e-3, err_msg=name)
        times = time_interleaved({**runners, PEAK: peak_call}, rounds, block_ms=BLOCK_MS)
        peak = peak_flops / (median(times.pop(PEAK)) * 1e-3) / 1e9
        gflops = {name: 2 * m * k * n / (median(t) * 1e-3) / 1e9 for name, t in times.items()}
        ratio = gflops["edgebert-tvm"] / gflops["pytorch"]
        cells = "".join(f"{g:9.1f} ({g / peak:4.0%})" for g in gflops.values())
        print(f"{f'{m} x {k} x {n}':>18s} {cells} {peak:6.0f} {ratio:10.2f}x "
              f"{gflops['edgebert-tvm'] / gflops['onnxruntime']:8.2f}x")
        fraction = {peer: g / peak for peer, g in gflops.items()}
        results.append({"shape": [m, k, n], "gflops": gflops, "measured_peak_gflops": peak,
                        "fraction_of_measured_peak": fraction, "ours_over_torch": ratio})
    return results
