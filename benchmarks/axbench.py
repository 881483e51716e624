"""AxBench-style workloads as TVM programs, on real images and signals, with AxBench's quality metrics.

The RDA paper measures approximate storage on AxBench (sobel, jpeg, kmeans, fft). These are the
same computations written in TE, each stage one PrimFunc given a default CPU schedule by our rules
(`target/cpu`: elementwise kernels vectorized and parallel, reductions by dlight's CPU rule) and
built with `tvm.compile` for llvm:

- sobel: 3x3 Sobel gradient magnitude of a grey image, clamped to 255 (borders replicate).
- jpeg: JFIF RGB -> YCbCr, 8x8 DCT-II, quantisation with the JPEG tables at quality 50, then the
  decoder (dequantise, inverse DCT, YCbCr -> RGB); the image a JPEG round trip returns (entropy
  coding is lossless and left out).
- kmeans: colour segmentation as in AxBench: k = 6 clusters of RGB pixels, 10 Lloyd iterations
  from fixed initial pixels; every pixel becomes its centroid's colour.
- fft: radix-2 decimation-in-time FFT of 8192 samples of a real signal.

Inputs are real data shipped by packages: scikit-image's bundled photographs (`skimage.data`) and
the membrane-potential recording in matplotlib's sample data. Images are stored 8-bit, RGB planar
(3, H, W) so a group holds one channel's neighbouring pixels; the signal is float32.
Quality, as AxBench reports it: images by normalised RMSE (RMSE / 255, in %), fft by mean relative
error of the output bins |Y' - Y| / |Y| (in %), each against the exact program's output.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import tvm
from tvm import s_tir, te
from tvm.s_tir import dlight

from edgebert_tvm.target.registry import make_target
from edgebert_tvm.target.cpu import schedule_rules, unscheduled_functions

GREY_IMAGES = ("camera", "coins", "moon")
RGB_IMAGES = ("astronaut", "coffee", "chelsea")
KMEANS_K = 6
KMEANS_ITERATIONS = 10
FFT_SIZE = 8192
# JPEG Annex K tables (quality 50).
JPEG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float32).reshape(8, 8)
JPEG_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32, np.float32).reshape(8, 8)


# ---- real data ------------------------------------------------------------------------------------

def grey_image(name: str) -> np.ndarray:
    """A bundled scikit-image photograph, 8-bit grey (H, W)."""
    from skimage import color, data

    image = getattr(data, name)()
    return image if image.ndim == 2 else (color.rgb2gray(image) * 255).round().astype(np.uint8)


def rgb_image(name: str) -> np.ndarray:
    """A bundled scikit-image colour photograph, 8-bit planar (3, H, W) cropped to multiples of 8."""
    from skimage import data

    image = getattr(data, name)()[..., :3]
    h, w = image.shape[0] // 8 * 8, image.shape[1] // 8 * 8
    return np.ascontiguousarray(image[:h, :w].transpose(2, 0, 1))


def signal() -> np.ndarray:
    """The first 8192 samples of matplotlib's membrane-potential recording (float32)."""
    from matplotlib import cbook

    with cbook.get_sample_data("membrane.dat") as f:
        return np.fromfile(f, dtype=np.float32)[:FFT_SIZE].copy()


# ---- quality metrics (AxBench) --------------------------------------------------------------------

def image_nrmse(exact: np.ndarray, approx: np.ndarray) -> float:
    """RMSE of the pixel values over the 8-bit range, in %."""
    diff = np.asarray(approx, np.float64) - np.asarray(exact, np.float64)
    return float(np.sqrt(np.mean(diff**2)) / 255 * 100)


def mean_relative_error(exact: np.ndarray, approx: np.ndarray) -> float:
    """Mean over the complex output bins of |approx - exact| / |exact| (bins with exact 0 skipped), in %."""
    exact_c = exact[..., 0].astype(np.float64) + 1j * exact[..., 1]
    approx_c = approx[..., 0].astype(np.float64) + 1j * approx[..., 1]
    keep = np.abs(exact_c) > 0
    return float(np.mean(np.abs(approx_c - exact_c)[keep] / np.abs(exact_c)[keep]) * 100)


# ---- building -------------------------------------------------------------------------------------

def build(funcs: dict[str, tvm.tirx.PrimFunc], target: tvm.target.Target | None = None) -> tvm.runtime.Module:
    """Schedule every PrimFunc with our default CPU rules and build them into one library."""
    target = target or make_target("llvm")
    mod = tvm.IRModule({name: func.with_attr("global_symbol", name) for name, func in funcs.items()})
    with target:
        mod = dlight.ApplyDefaultSchedule(*schedule_rules())(mod)
    left = unscheduled_functions(mod)
    if left:
        raise RuntimeError(f"AxBench kernels left unscheduled: {left}")
    return tvm.compile(mod, target)


def _tensor(array: np.ndarray) -> tvm.runtime.Tensor:
    return tvm.runtime.tensor(np.ascontiguousarray(array), tvm.cpu())


def _run(lib: tvm.runtime.Module, name: str, *arrays: np.ndarray | tvm.runtime.Tensor,
         out: tuple[tuple[int, ...], str]) -> tvm.runtime.Tensor:
    result = tvm.runtime.empty(out[0], out[1], tvm.cpu())
    lib[name](*[a if isinstance(a, tvm.runtime.Tensor) else _tensor(a) for a in arrays], result)
    return result


# ---- sobel ----------------------------------------------------------------------------------------

def sobel_func(height: int, width: int) -> tvm.tirx.PrimFunc:
    image = te.placeholder((height, width), "uint8", name="image")

    def pixel(i: tvm.tirx.PrimExpr, j: tvm.tirx.PrimExpr) -> tvm.tirx.PrimExpr:
        i = tvm.tirx.max(tvm.tirx.min(i, height - 1), 0)
        j = tvm.tirx.max(tvm.tirx.min(j, width - 1), 0)
        return image[i, j].astype("float32")

    def magnitude(i: tvm.tirx.PrimExpr, j: tvm.tirx.PrimExpr) -> tvm.tirx.PrimExpr:
        p = {(di, dj): pixel(i + di, j + dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)}
        gx = (p[-1, 1] + 2 * p[0, 1] + p[1, 1]) - (p[-1, -1] + 2 * p[0, -1] + p[1, -1])
        gy = (p[1, -1] + 2 * p[1, 0] + p[1, 1]) - (p[-1, -1] + 2 * p[-1, 0] + p[-1, 1])
        return tvm.tirx.min(te.sqrt(gx * gx + gy * gy), tvm.tirx.const(255.0, "float32"))

    out = te.compute((height, width), magnitude, name="sobel")
    return te.create_prim_func([image, out])


def sobel_reference(image: np.ndarray) -> np.ndarray:
    p = np.pad(image.astype(np.float32), 1, mode="edge")
    h, w = image.shape
    s = lambda di, dj: p[1 + di: 1 + di + h, 1 + dj: 1 + dj + w]  # noqa: E731
    gx = (s(-1, 1) + 2 * s(0, 1) + s(1, 1)) - (s(-1, -1) + 2 * s(0, -1) + s(1, -1))
    gy = (s(1, -1) + 2 * s(1, 0) + s(1, 1)) - (s(-1, -1) + 2 * s(-1, 0) + s(-1, 1))
    return np.minimum(np.sqrt(gx * gx + gy * gy), 255).astype(np.float32)


# ---- jpeg -----------------------------------------------------------------------------------------

def dct_matrix() -> np.ndarray:
    """Orthonormal 8-point DCT-II: C[u, x] = a(u) cos((2x + 1) u pi / 16)."""
    u, x = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    c = np.cos((2 * x + 1) * u * np.pi / 16) * np.sqrt(2 / 8)
    c[0] /= np.sqrt(2)
    return c.astype(np.float32)


# JFIF colour transforms as (3, 4): three coefficients and an offset per output channel.
TO_YCC = np.array([[0.299, 0.587, 0.114, -128.0], [-0.168736, -0.331264, 0.5, 0.0],
                   [0.5, -0.418688, -0.081312, 0.0]], np.float32)
TO_RGB = np.array([[1.0, 0.0, 1.402, 128.0], [1.0, -0.344136, -0.714136, 128.0], [1.0, 1.772, 0.0, 128.0]],
                  np.float32)


def _colour(matrix: np.ndarray, planes: np.ndarray) -> np.ndarray:
    return np.einsum("ck,khw->chw", matrix[:, :3], planes.astype(np.float32)) + matrix[:, 3, None, None]


def jpeg_funcs(height: int, width: int) -> dict[str, tvm.tirx.PrimFunc]:
    """Four kernels: colour transform, forward DCT + quantise + dequantise, inverse DCT, back to RGB."""
    shape = (3, height, width)
    rgb = te.placeholder(shape, "float32", name="rgb")  # 8-bit pixels loaded as floats
    # Colour matrices come in as tensors: a per-channel Select in a vectorized loop crashes llvm codegen here.
    to_ycc = te.placeholder((3, 4), "float32", name="to_ycc")  # rows: Y (level-shifted), Cb, Cr; column 3: offset
    ycc_out = te.compute(shape, lambda c, i, j: to_ycc[c, 0] * rgb[0, i, j] + to_ycc[c, 1] * rgb[1, i, j]
                         + to_ycc[c, 2] * rgb[2, i, j] + to_ycc[c, 3], name="ycc")

    def transform(src: te.Tensor, c8: te.Tensor, along_rows: bool, forward: bool, name: str) -> te.Tensor:
        """One 1-D 8-point pass inside every 8x8 block (the sum written out: 8 multiply-adds per value)."""

        def body(c: tvm.tirx.PrimExpr, i: tvm.tirx.PrimExpr, j: tvm.tirx.PrimExpr) -> tvm.tirx.PrimExpr:
            pos = j if along_rows else i
            start, u = pos // 8 * 8, pos % 8
            terms = []
            for t in range(8):
                value = src[c, i, start + t] if along_rows else src[c, start + t, j]
                terms.append((c8[u, t] if forward else c8[t, u]) * value)
            return sum(terms[1:], terms[0])

        return te.compute(shape, body, name=name)

    c8 = te.placeholder((8, 8), "float32", name="dct")
    funcs = {}
    for forward in (True, False):
        for along_rows in (True, False):
            src = te.placeholder(shape, "float32", name="src")
            name = f"jpeg_{'f' if forward else 'i'}dct_{'rows' if along_rows else 'cols'}"
            funcs[name] = te.create_prim_func([src, c8, transform(src, c8, along_rows, forward, name)])
    table = te.placeholder((3, 8, 8), "float32", name="quant")
    quant_in = te.placeholder(shape, "float32", name="coefficients")
    dequant = te.compute(shape, lambda c, i, j: te.round(quant_in[c, i, j] / table[c, i % 8, j % 8])
                         * table[c, i % 8, j % 8], name="dequantized")
    ycc_back = te.placeholder(shape, "float32", name="pixels")
    to_rgb = te.placeholder((3, 4), "float32", name="to_rgb")
    low, high = tvm.tirx.const(0.0, "float32"), tvm.tirx.const(255.0, "float32")
    rgb_out = te.compute(shape, lambda c, i, j: te.round(tvm.tirx.max(tvm.tirx.min(
        to_rgb[c, 0] * ycc_back[0, i, j] + to_rgb[c, 1] * ycc_back[1, i, j] + to_rgb[c, 2] * ycc_back[2, i, j]
        + to_rgb[c, 3], high), low)), name="rgb_out")
    return {
        **funcs,
        "jpeg_ycc": te.create_prim_func([rgb, to_ycc, ycc_out]),
        "jpeg_quantize": te.create_prim_func([quant_in, table, dequant]),
        "jpeg_rgb": te.create_prim_func([ycc_back, to_rgb, rgb_out]),
    }


def jpeg_tables() -> np.ndarray:
    return np.stack([JPEG_LUMA, JPEG_CHROMA, JPEG_CHROMA])


def jpeg_reference(rgb: np.ndarray) -> np.ndarray:
    c = dct_matrix()
    _, h, w = rgb.shape
    blocks = _colour(TO_YCC, rgb).reshape(3, h // 8, 8, w // 8, 8)
    coef = np.einsum("ux,cixjy,vy->ciujv", c, blocks, c)
    q = jpeg_tables()[:, None, :, None, :]
    coef = np.round(coef / q) * q
    out = _colour(TO_RGB, np.einsum("ux,ciujv,vy->cixjy", c, coef, c).reshape(3, h, w))
    return np.round(np.clip(out, 0, 255)).astype(np.float32)


# ---- kmeans ---------------------------------------------------------------------------------------

def kmeans_funcs(pixels: int, k: int = KMEANS_K) -> dict[str, tvm.tirx.PrimFunc]:
    """Assignment (nearest centroid per pixel) and update (per-cluster sums and counts) kernels."""
    image = te.placeholder((3, pixels), "uint8", name="image")
    centroids = te.placeholder((k, 3), "float32", name="centroids")

    def nearest(n: tvm.tirx.PrimExpr) -> tvm.tirx.PrimExpr:
        px = [image[c, n].astype("float32") for c in range(3)]
        dist = [sum((px[c] - centroids[j, c]) * (px[c] - centroids[j, c]) for c in range(3)) for j in range(k)]
        best, best_d = tvm.tirx.const(0, "int32"), dist[0]
        for j in range(1, k):  # strictly smaller wins: ties keep the lowest index, like numpy's argmin
            best = tvm.tirx.Select(dist[j] < best_d, tvm.tirx.const(j, "int32"), best)
            best_d = tvm.tirx.min(dist[j], best_d)
        return best

    labels = te.compute((pixels,), nearest, name="labels")
    labels_in = te.placeholder((pixels,), "int32", name="labels")
    n = te.reduce_axis((0, pixels), name="n")
    sums = te.compute((k, 4), lambda j, c: te.sum(tvm.tirx.Select(
        labels_in[n] == j, tvm.tirx.Select(c < 3, image[tvm.tirx.min(c, 2), n].astype("float32"), 1.0), 0.0),
        axis=n), name="sums")
    return {"kmeans_assign": te.create_prim_func([image, centroids, labels]),
            "kmeans_update": _parallel_sum(te.create_prim_func([image, labels_in, sums]), "sums")}


def _parallel_sum(func: tvm.tirx.PrimFunc, block: str, chunks: int = 64) -> tvm.tirx.PrimFunc:
    """A long reduction to few outputs (no default rule takes it): rfactor into `chunks` partial sums in parallel."""
    sch = s_tir.Schedule(func)
    *_, n = sch.get_loops(sch.get_sblock(block))
    outer, _ = sch.split(n, factors=[chunks, None])
    partial = sch.rfactor(outer, factor_axis=0)
    *spatial, chunk, _ = sch.get_loops(partial)
    sch.reorder(chunk, *spatial)
    sch.parallel(chunk)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def kmeans_initial(image: np.ndarray, k: int = KMEANS_K) -> np.ndarray:
    """Fixed initial centroids: k pixels evenly spaced through the image."""
    flat = image.reshape(3, -1)
    return flat[:, np.linspace(0, flat.shape[1] - 1, k).astype(int)].T.astype(np.float32)


def _kmeans_step(centroids: np.ndarray, sums: np.ndarray) -> np.ndarray:
    counts = sums[:, 3:]
    return np.where(counts > 0, sums[:, :3] / np.maximum(counts, 1), centroids).astype(np.float32)


def kmeans_reference(image: np.ndarray, k: int = KMEANS_K, iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    flat = image.reshape(3, -1).astype(np.float32)
    centroids = kmeans_initial(image, k)
    for _ in range(iterations):
        labels = ((flat.T[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
        sums = np.zeros((k, 4), np.float32)
        np.add.at(sums, labels, np.concatenate([flat.T, np.ones((flat.shape[1], 1), np.float32)], 1))
        centroids = _kmeans_step(centroids, sums)
    labels = ((flat.T[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    return centroids[labels].T.reshape(image.shape)


# ---- fft ------------------------------------------------------------------------------------------

def fft_funcs(size: int = FFT_SIZE) -> dict[str, tvm.tirx.PrimFunc]:
    """Bit-reversal load, and one butterfly stage parameterised by its half-width (a kernel per stage)."""
    stages = int(math.log2(size))
    x = te.placeholder((size,), "float32", name="x")
    perm = te.placeholder((size,), "int32", name="perm")
    load = te.compute((size, 2), lambda i, c: tvm.tirx.Select(c == 0, x[perm[i]], 0.0), name="load")
    funcs = {"fft_load": te.create_prim_func([x, perm, load])}
    twiddle = te.placeholder((size // 2, 2), "float32", name="twiddle")
    for s in range(stages):
        half = 1 << s
        prev = te.placeholder((size, 2), "float32", name="prev")

        out = te.compute((size, 2), _butterfly(prev, twiddle, half, size), name=f"stage{s}")
        funcs[f"fft_stage{s}"] = te.create_prim_func([prev, twiddle, out])
    return funcs


def _butterfly(prev: te.Tensor, twiddle: te.Tensor, half: int, size: int
               ) -> Callable[[tvm.tirx.PrimExpr, tvm.tirx.PrimExpr], tvm.tirx.PrimExpr]:
    """Stage of half-width `half`: pairs (a, a + half) become a + w b and a - w b, w = e^(-2 pi i k / 2half)."""

    def value(i: tvm.tirx.PrimExpr, c: tvm.tirx.PrimExpr) -> tvm.tirx.PrimExpr:
        top = (i % (2 * half)) < half
        a = tvm.tirx.Select(top, i, i - half)
        b = a + half
        w = (i % half) * (size // (2 * half))
        wr, wi = twiddle[w, 0], twiddle[w, 1]
        t = tvm.tirx.Select(c == 0, wr * prev[b, 0] - wi * prev[b, 1], wr * prev[b, 1] + wi * prev[b, 0])
        return tvm.tirx.Select(top, prev[a, c] + t, prev[a, c] - t)

    return value


def fft_tables(size: int = FFT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    bits = int(math.log2(size))
    perm = np.array([int(f"{i:0{bits}b}"[::-1], 2) for i in range(size)], np.int32)
    angle = -2 * np.pi * np.arange(size // 2) / size
    return perm, np.stack([np.cos(angle), np.sin(angle)], 1).astype(np.float32)


def fft_reference(x: np.ndarray) -> np.ndarray:
    y = np.fft.fft(x.astype(np.float64))
    return np.stack([y.real, y.imag], -1).astype(np.float32)


# ---- the workloads --------------------------------------------------------------------------------

@dataclasses.dataclass
class Workload:
    """One AxBench program: its stored input's layout, the compiled run, and its quality metric."""

    name: str
    paper_threshold: int
    paper_compression: float | None  # the RDA paper's approximate compression rate (fraction)
    metric: str
    run: Callable[[np.ndarray], np.ndarray]
    quality: Callable[[np.ndarray, np.ndarray], float]


def sobel_workload(shape: tuple[int, int]) -> Workload:
    lib = build({"sobel": sobel_func(*shape)})
    return Workload("sobel", 63, 0.6720, "image NRMSE %",
                    lambda image: _run(lib, "sobel", image, out=(shape, "float32")).numpy(), image_nrmse)


def jpeg_workload(shape: tuple[int, int, int]) -> Workload:
    lib = build(jpeg_funcs(shape[1], shape[2]))
    c8, tables, to_ycc, to_rgb = (_tensor(t) for t in (dct_matrix(), jpeg_tables(), TO_YCC, TO_RGB))

    def run(rgb: np.ndarray) -> np.ndarray:
        out = (shape, "float32")
        ycc = _run(lib, "jpeg_ycc", rgb.astype(np.float32), to_ycc, out=out)
        coef = _run(lib, "jpeg_fdct_cols", _run(lib, "jpeg_fdct_rows", ycc, c8, out=out), c8, out=out)
        deq = _run(lib, "jpeg_quantize", coef, tables, out=out)
        pixels = _run(lib, "jpeg_idct_cols", _run(lib, "jpeg_idct_rows", deq, c8, out=out), c8, out=out)
        return _run(lib, "jpeg_rgb", pixels, to_rgb, out=out).numpy()

    return Workload("jpeg", 63, 0.6188, "image NRMSE %", run, image_nrmse)


def kmeans_workload(shape: tuple[int, int, int]) -> Workload:
    pixels = shape[1] * shape[2]
    lib = build(kmeans_funcs(pixels))

    def run(image: np.ndarray) -> np.ndarray:
        flat = _tensor(image.reshape(3, -1))
        centroids = kmeans_initial(image)
        for _ in range(KMEANS_ITERATIONS):
            labels = _run(lib, "kmeans_assign", flat, centroids, out=((pixels,), "int32"))
            centroids = _kmeans_step(centroids, _run(lib, "kmeans_update", flat, labels, out=((KMEANS_K, 4), "float32")).numpy())
        labels = _run(lib, "kmeans_assign", flat, centroids, out=((pixels,), "int32")).numpy()
        return centroids[labels].T.reshape(shape)

    return Workload("kmeans", 63, 0.2507, "image NRMSE %", run, image_nrmse)


def fft_workload(size: int = FFT_SIZE) -> Workload:
    lib = build(fft_funcs(size))
    perm, twiddle = (_tensor(t) for t in fft_tables(size))

    def run(x: np.ndarray) -> np.ndarray:
        out = ((size, 2), "float32")
        state = _run(lib, "fft_load", x, perm, out=out)
        for s in range(int(math.log2(size))):
            state = _run(lib, f"fft_stage{s}", state, twiddle, out=out)
        return state.numpy()

    return Workload("fft", 127, None, "mean relative error %", run, mean_relative_error)
