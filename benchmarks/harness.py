"""Shared pieces of the peer benchmarks: the deployed model, the peers' runners, interleaved timing.

Every peer runs the same computation (embeddings, every encoder layer, the final classifier) on
the same inputs with the same number of threads; times are per call, in milliseconds.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import tvm
from torch import nn
from tqdm import tqdm
from tvm import relax

from fma_peak import measured_fp32_gflops

from edgebert_tvm.compiler import CompileOptions, compile_model
from edgebert_tvm.fileio import write_json_atomic
from edgebert_tvm.importer import InputSpec, import_model
from edgebert_tvm.models.checkpoint import Checkpoint
from edgebert_tvm.target.cpu.common import vector_bits
from edgebert_tvm.target.cpu.host import describe_host, host_fp32_peak
from edgebert_tvm.target.registry import make_target

INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")
Runner = Callable[[], np.ndarray]


class Deployed(nn.Module):
    """What a deployed EdgeBERT model without early exit computes: the final exit's logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        hidden, bias = self.model.embed(input_ids, token_type_ids, attention_mask)
        for index in range(self.model.num_layers):
            hidden = self.model.layer(index, hidden, bias)
        return self.model.exit_logits(self.model.num_layers - 1, hidden)


def set_threads(threads: int) -> None:
    """One thread count for every peer (TVM reads TVM_NUM_THREADS when its pool starts)."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def machine(threads: int) -> str:
    """The CPU every number of a run comes from: its model, LLVM's name, ISA flags and fp32 peak, as
    computed from the reported clock and as measured (fma_peak.py)."""
    return (f"{describe_host()}; {host_fp32_peak(threads)}; measured "
            f"{measured_fp32_gflops(threads):.0f} GFLOP/s on {threads} threads")


# The variables that cap the ISA PyTorch's kernels use (ATen's own, MKL's GEMMs, oneDNN's); set before
# torch is imported. ONNX Runtime has none: MLAS takes the widest this CPU has.
TORCH_ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def peer_isas(mcpu: str | None) -> str:
    """Which vector ISA each peer was allowed, in words: ours by `--mcpu`, PyTorch by its variables."""
    target = make_target("llvm", mcpu=mcpu)
    caps = ", ".join(f"{v}={os.environ[v]}" for v in TORCH_ISA_VARIABLES if v in os.environ)
    return (f"ours compiled for {target.attrs['mcpu']} ({vector_bits(target)}-bit vectors); PyTorch "
            f"{caps or 'uncapped (this CPU widest)'}; ONNX Runtime this CPU's widest (MLAS dispatches on cpuid)")


def write_report(path: str | Path, report: dict) -> None:
    """A benchmark's JSON results, written whole (`fileio.write_json_atomic`), its folder made if needed."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, report)
    print(f"wrote {out}")


def make_inputs(batch: int, seq_len: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, min(vocab, 20000), size=(batch, seq_len), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def torch_runner(model: nn.Module, inputs: dict[str, np.ndarray]) -> Runner:
    tensors = [torch.from_numpy(inputs[k]) for k in INPUT_ORDER]

    def run() -> np.ndarray:
        with torch.no_grad():
            return model(*tensors).numpy()

    return run


def torch_compile_runner(model: nn.Module, inputs: dict[str, np.ndarray]) -> Runner:
    """torch.compile's kernels, cached per set of PyTorch's ISA caps (its cache is not keyed by them):
    an uncapped run right after one under ATEN_CPU_CAPABILITY=avx2 died in inductor's code with
    "double free or corruption", and ran once that cache was removed."""
    caps = [f"{v}-{os.environ[v]}" for v in TORCH_ISA_VARIABLES if v in os.environ]
    if caps and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / f"torchinductor-{'-'.join(caps)}")
    run = torch_runner(torch.compile(model), inputs)
    run()  # compiles
    return run


def ort_session(model: nn.Module, inputs: dict[str, np.ndarray], threads: int, profile: bool = False):
    """ONNX Runtime session of `model` as its users export it: dynamic batch and sequence axes (any
    input shape runs, at its own length), all graph optimisations; `profile`: ORT's per-node profiler on."""
    import onnxruntime as ort

    path = Path(tempfile.mkdtemp()) / "model.onnx"
    dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUT_ORDER}
    with torch.no_grad():
        torch.onnx.export(model, tuple(torch.from_numpy(inputs[k]) for k in INPUT_ORDER), str(path),
                          input_names=list(INPUT_ORDER), output_names=["logits"], dynamic_axes=dynamic,
                          dynamo=False, opset_version=17)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = profile
    options.profile_file_prefix = str(path.parent / "profile")  # beside the model, not in the working directory
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_runner(model: nn.Module, inputs: dict[str, np.ndarray], threads: int) -> Runner:
    session = ort_session(model, inputs, threads)
    return lambda: session.run(None, inputs)[0]


def _vm_runner(executable: tvm.runtime.Executable, inputs: dict[str, np.ndarray]) -> Runner:
    vm = relax.VirtualMachine(executable, tvm.cpu())
    args = [tvm.runtime.tensor(inputs[k]) for k in INPUT_ORDER]
    return lambda: vm["main"](*args)[0].numpy()


def edgebert_tvm_runner(checkpoint: Checkpoint, inputs: dict[str, np.ndarray], threads: int,
                        tuning_records: Path | None = None, mcpu: str | None = None) -> Runner:
    batch, seq_len = inputs["input_ids"].shape
    compiled = compile_model(checkpoint, CompileOptions(batch=batch, seq_len=seq_len, num_cores=threads,
                                                        tuning_records=tuning_records, mcpu=mcpu))
    return _vm_runner(compiled.executable, inputs)


def stock_tvm_runner(checkpoint: Checkpoint, inputs: dict[str, np.ndarray], threads: int) -> Runner:
    """The same Relax module through TVM's own default pipeline (no schedules on CPU)."""
    batch, seq_len = inputs["input_ids"].shape
    mod = import_model(checkpoint.model, InputSpec(batch, seq_len))
    return _vm_runner(tvm.compile(mod, make_target("llvm", threads)), inputs)


SETTLE_S = 0.5


def time_interleaved(runners: dict[str, Runner], rounds: int, single_shot: frozenset[str] = frozenset(),
                     block_ms: float = 0.0) -> dict[str, list[float]]:
    """Call every runner in its own block per round, rotating the order; `single_shot` runners (too
    slow to repeat) are timed once, in the first round.

    Thread pools spin for a while after a call and sleep after that; on two cores a spinning pool
    steals the next peer's cores (TVM's spun for well over 50 ms here), and waking a sleeping one
    took ~10 ms (OpenMP). So each block comes after a pause in which the previous peer's pool
    goes quiet, and starts with one untimed call of the same runner, so that its own pool is awake as
    it would be in a serving loop. A block times one call, or with `block_ms` calls back to back
    until that long has passed: a call of a millisecond or less, timed alone after the pause, measured
    how fast a virtual CPU wakes up (2-3x its time in a loop, for every peer alike, on a KVM guest).
    """
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for round_index in tqdm(range(rounds), desc="rounds", leave=False):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            if name in single_shot and times[name]:
                continue
            time.sleep(SETTLE_S)
            if name not in single_shot:
                runners[name]()
            block_start = time.perf_counter()
            while True:
                start = time.perf_counter()
                runners[name]()
                end = time.perf_counter()
                times[name].append((end - start) * 1e3)
                if name in single_shot or (end - block_start) * 1e3 >= block_ms:
                    break
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)
