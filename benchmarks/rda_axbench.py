"""RDA on AxBench-style TVM programs: compression rate of the stored input against output quality.

For every workload and real input (scikit-image photographs, matplotlib's membrane recording), the
input is stored the RDA way at each threshold of the sweep, the compiled TVM program runs on the
decoded input, and its output is compared with the program's output on the exact input (AxBench's
metrics). Prints a table beside the paper's numbers, writes benchmarks/results/rda_axbench.json and
a plot of quality against compression.

    .venv/bin/python benchmarks/rda_axbench.py [--granularity 8]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from edgebert_tvm import rda  # noqa: E402

import axbench  # noqa: E402 (benchmarks/axbench.py: the workloads)
from edgebert_tvm.fileio import write_json_atomic  # noqa: E402

RESULTS = Path(__file__).parent / "results"
IMAGE_SWEEP = (0, 7, 15, 31, 63, 127)
FFT_SWEEP = (0, 15, 63, 127, 255, 1023, 4095)


def cases() -> list[tuple[axbench.Workload, str, np.ndarray, tuple[int, ...]]]:
    out = []
    for name in axbench.GREY_IMAGES:
        image = axbench.grey_image(name)
        out.append((axbench.sobel_workload(image.shape), name, image, IMAGE_SWEEP))
    for name in axbench.RGB_IMAGES:
        image = axbench.rgb_image(name)
        out.append((axbench.jpeg_workload(image.shape), name, image, IMAGE_SWEEP))
        out.append((axbench.kmeans_workload(image.shape), name, image, IMAGE_SWEEP))
    out.append((axbench.fft_workload(), "membrane", axbench.signal(), FFT_SWEEP))
    return out


def measure(granularity: rda.Granularity) -> list[dict]:
    rows = []
    todo = cases()
    for workload, data_name, data, sweep in tqdm(todo, desc="workloads"):
        exact = workload.run(data)
        for threshold in sweep:
            decoded, report = rda.approximate(data, threshold, granularity, data_name)
            rows.append({"workload": workload.name, "input": data_name, "shape": list(data.shape),
                         "dtype": str(data.dtype), "threshold": threshold, "granularity": granularity,
                         "compression_rate": report.compression_rate, "patterns": report.patterns,
                         "quality_loss": workload.quality(exact, workload.run(decoded)), "metric": workload.metric,
                         "paper_threshold": workload.paper_threshold,
                         "paper_compression_rate": workload.paper_compression})
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'workload':8} {'input':10} {'thr':>5} {'compression':>11} {'paper':>7}  quality loss"]
    for r in rows:
        paper = f"{r['paper_compression_rate']:.2%}" if r["paper_compression_rate"] and \
            r["threshold"] == r["paper_threshold"] else ""
        lines.append(f"{r['workload']:8} {r['input']:10} {r['threshold']:>5} {r['compression_rate']:>11.2%} "
                     f"{paper:>7}  {r['quality_loss']:.3f} ({r['metric']})")
    return "\n".join(lines)


def at_paper_threshold(rows: list[dict]) -> list[dict]:
    """Mean over inputs per workload at the paper's threshold."""
    out = []
    for name in dict.fromkeys(r["workload"] for r in rows):
        picked = [r for r in rows if r["workload"] == name and r["threshold"] == r["paper_threshold"]]
        out.append({"workload": name, "threshold": picked[0]["paper_threshold"],
                    "compression_rate": float(np.mean([r["compression_rate"] for r in picked])),
                    "paper_compression_rate": picked[0]["paper_compression_rate"],
                    "quality_loss": float(np.mean([r["quality_loss"] for r in picked])),
                    "metric": picked[0]["metric"], "inputs": [r["input"] for r in picked]})
    return out


def plot(rows: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, group in _by(rows, lambda r: (r["workload"], r["input"])).items():
        ax = axes[1] if key[0] == "fft" else axes[0]
        ax.plot([100 * r["compression_rate"] for r in group], [r["quality_loss"] for r in group], "o-",
                label=f"{key[0]} / {key[1]}")
        for r in group:
            if r["threshold"] == r["paper_threshold"]:
                ax.plot(100 * r["compression_rate"], r["quality_loss"], "k*", markersize=11)
    for ax, ylabel in zip(axes, ("output NRMSE (%)", "mean relative error (%)")):
        ax.set_xlabel("RDA compression rate of the input (%)")
        ax.set_ylabel(ylabel)
        ax.set_yscale("symlog", linthresh=0.1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title("images (thresholds 0..127; * = 63)")
    axes[1].set_title("fft (thresholds 0..4095; * = 127)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _by(rows: list[dict], key) -> dict:
    groups: dict = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--granularity", default=rda.DEFAULT_GRANULARITY)
    args = parser.parse_args()
    granularity = rda.check_granularity(args.granularity)
    rows = measure(granularity)
    print(table(rows))
    summary = at_paper_threshold(rows)
    print("\nat the paper's thresholds (mean over inputs):")
    for s in summary:
        paper = f"{s['paper_compression_rate']:.2%}" if s["paper_compression_rate"] else "n/a"
        print(f"  {s['workload']:7} t={s['threshold']:<4} compression {s['compression_rate']:.2%} (paper {paper}), "
              f"quality loss {s['quality_loss']:.3f} {s['metric']}")
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if granularity == rda.DEFAULT_GRANULARITY else f"_g{granularity}"
    plot(rows, RESULTS / f"rda_axbench{suffix}.png")
    write_json_atomic(RESULTS / f"rda_axbench{suffix}.json", {"rows": rows, "at_paper_threshold": summary})
    print(f"\nwrote {RESULTS / f'rda_axbench{suffix}.json'} and .png")


if __name__ == "__main__":
    main()
