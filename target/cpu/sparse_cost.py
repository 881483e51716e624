"""When does a sparse kernel beat our dense matmul? A cost model measured on the target.

Each kernel kind (dense, CSR, BSR per block shape) is timed on two encoder shapes at a few
densities, and fitted as time = a * M (K + N) + b * (multiply-adds it performs): `a` covers the
per-row work that does not shrink with sparsity (CSR's transposes, writing Y), `b` the cost of one
multiply-add. A BSR kernel performs M x (kept blocks x block size) multiply-adds, CSR M x nnz,
dense M x N x K. The fit is stored as JSON in the cache directory ($EDGEBERT_TVM_CACHE or
~/.cache/edgebert-tvm), keyed by what the timings depend on (the target, this CPU, the TVM and LLVM
that built the kernels), and computed on first use (about half a minute on an idle machine).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import tvm
from tqdm import tqdm
from tvm import relax
from tvm.target import codegen

from ...errors import EdgeBertError
from ...fileio import cache_dir, write_json_atomic
from ..targets import lowering_pipeline
from .host import describe_host
from .sparse import bsr_matmul, csr_matmul, to_bsr, to_csr

BSR_BLOCKS = ((32, 32), (16, 16), (16, 1))
CALIBRATION_SHAPES = ((128, 384, 1536), (128, 1536, 384))  # (M, K, N)
CALIBRATION_DENSITIES = (0.05, 0.2, 0.5, 0.8)
FORMAT_VERSION = 3


def kind_name(block: tuple[int, int] | None) -> str:
    """'csr' for unstructured (None), 'bsr32x32' for a block shape."""
    return "csr" if block is None else f"bsr{block[0]}x{block[1]}"


@dataclasses.dataclass
class CostModel:
    """Fitted (a, b) per kernel kind, in seconds; see the module docstring."""

    target: str
    coefficients: dict[str, tuple[float, float]]

    def predict(self, kind: str, m: int, k: int, n: int, macs: float) -> float:
        a, b = self.coefficients[kind]
        return a * m * (k + n) + b * macs


def target_key(target: tvm.target.Target) -> str:
    """A file-name-safe name for the timings' circumstances: the target's CPU and thread count in words,
    then a digest of the full target, this CPU, and the TVM and LLVM versions that built the kernels."""
    identity = json.dumps([str(target), describe_host(), tvm.__version__, codegen.llvm_version_major()])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
    return f"{target.kind.name}-{target.attrs.get('mcpu', 'generic')}-{int(target.attrs.get('num-cores', 0))}c-{digest}"


def cost_model_path(target: tvm.target.Target) -> Path:
    return cache_dir() / f"sparsity-cost-{target_key(target)}.json"


def load_cost_model(target: tvm.target.Target, path: Path | None = None) -> CostModel:
    """The target's cost model from `path` (default: the cache), calibrating and saving it if absent."""
    path = path or cost_model_path(target)
    if not path.exists():
        model = calibrate(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"version": FORMAT_VERSION, "target": model.target, "coefficients": model.coefficients})
        return model
    try:
        data = json.loads(path.read_text())
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {FORMAT_VERSION}")
        coefficients = {str(k): (float(v[0]), float(v[1])) for k, v in data["coefficients"].items()}
        missing = {"dense", "csr", *(kind_name(b) for b in BSR_BLOCKS)} - set(coefficients)
        if missing:
            raise ValueError(f"no coefficients for {', '.join(sorted(missing))}")
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise EdgeBertError(f"{path}: corrupt sparsity cost model ({err}); delete it to recalibrate") from None
    return CostModel(str(data.get("target", "")), coefficients)


def _best_seconds(run: Callable[[], None], repeat: int = 15) -> float:
    """The fastest of `repeat` calls: on a shared machine the other processes only ever add time."""
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.min(times))


def kernel_runner(func: tvm.tirx.PrimFunc, arrays: list[np.ndarray], target: tvm.target.Target) -> Callable[[], None]:
    """Build one kernel and return a call with its arguments bound (the output is the last array)."""
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    args = [tvm.runtime.tensor(a) for a in arrays]
    main = lib["main"]
    return lambda: main(*args)


def dense_runner(x: np.ndarray, weight: np.ndarray, target: tvm.target.Target) -> Callable[[], np.ndarray]:
    """Our dense path for X @ W^T (W constant): the graph form the importer emits, our CPU pipeline."""
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            wt = bb.emit(relax.op.permute_dims(relax.const(weight), [1, 0]))
            out = bb.emit_output(relax.op.matmul(xv, wt))
        bb.emit_func_output(out)
    with target:
        mod = lowering_pipeline(target)(bb.finalize())
    vm = relax.VirtualMachine(tvm.compile(mod, target, relax_pipeline=None), tvm.cpu())
    arg = tvm.runtime.tensor(x)
    return lambda: vm["main"](arg).numpy()


def sparse_runner(x: np.ndarray, weight: np.ndarray, block: tuple[int, int] | None,
                  target: tvm.target.Target) -> tuple[Callable[[], None], int]:
    """The CSR (block None) or BSR kernel for X @ W^T, and the multiply-adds it performs."""
    m = x.shape[0]
    out = np.zeros((m, weight.shape[0]), "float32")
    if block is None:
        csr = to_csr(weight)
        return kernel_runner(csr_matmul(m, csr), [x, csr.data, csr.indices, csr.indptr, out], target), \
            m * int(csr.indptr[-1])
    bsr = to_bsr(weight, block)
    kept = int(bsr.indptr[-1])
    return kernel_runner(bsr_matmul(m, bsr), [x, bsr.data, bsr.indices, bsr.indptr, out], target), \
        m * kept * block[0] * block[1]


def block_pruned(rng: np.random.Generator, shape: tuple[int, int], block: tuple[int, int], density: float) -> np.ndarray:
    """A random weight with `density` of its blocks kept."""
    n, k = shape
    keep = rng.random((n // block[0], k // block[1])) < density
    weight = rng.standard_normal(shape).astype("float32")
    return weight * np.repeat(np.repeat(keep, block[0], 0), block[1], 1)


def calibrate(target: tvm.target.Target, shapes: tuple[tuple[int, int, int], ...] = CALIBRATION_SHAPES,
              densities: tuple[float, ...] = CALIBRATION_DENSITIES) -> CostModel:
    """Time every kernel kind on the calibration shapes (M, K, N) and densities; least-squares fit."""
    rng = np.random.default_rng(0)
    kinds: list[tuple[int, int] | None] = [None, *BSR_BLOCKS]
    points: dict[str, list[tuple[float, float, float]]] = {"dense": []}
    work = [(shape, block, d) for shape in shapes for block in kinds for d in densities]
    for m, k, n in tqdm(shapes, desc="sparsity cost model: dense", leave=False):
        x = rng.standard_normal((m, k)).astype("float32")
        seconds = _best_seconds(dense_runner(x, rng.standard_normal((n, k)).astype("float32"), target))
        points["dense"].append((m * (k + n), m * n * k, seconds))
    for (m, k, n), block, density in tqdm(work, desc="sparsity cost model: sparse kernels", leave=False):
        x = rng.standard_normal((m, k)).astype("float32")
        run, macs = sparse_runner(x, block_pruned(rng, (n, k), block or (1, 1), density), block, target)
        points.setdefault(kind_name(block), []).append((m * (k + n), macs, _best_seconds(run)))
    coefficients = {}
    for kind, rows in points.items():  # least squares on relative error: small and large times count alike
        seconds = np.array([r[2] for r in rows])
        design = np.array([[r[0], r[1]] for r in rows], dtype="float64") / seconds[:, None]
        fit, *_ = np.linalg.lstsq(design, np.ones_like(seconds), rcond=None)
        coefficients[kind] = (max(float(fit[0]), 0.0), max(float(fit[1]), 1e-15))
    return CostModel(str(target), coefficients)
