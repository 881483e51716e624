"""RDA on the EdgeBERT checkpoint's weights: compression rate against SST-2 dev accuracy.

Every floating parameter of `edgebert-sst2` (the tensors `edgebert.ApproximateRedundantData` rewrites
in the compiled module) is stored the RDA way at each threshold; accuracy is the final layer's on all
872 SST-2 dev sentences at seq 64, in PyTorch with the decoded weights. One threshold is also
compiled with the pass (`--compiled-threshold`, `--rda-storage load`) and run through the artifact,
which must agree; that artifact (library + compressed weight store) is set beside the same checkpoint compiled plain, in size
and in batch-1 latency (interleaved, medians).

    .venv/bin/python benchmarks/rda_weights.py [--thresholds 0 63 255 1023 4095] [--compiled-threshold 255]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgebert_tvm import rda
from edgebert_tvm.fileio import write_json_atomic  # noqa: E402
from edgebert_tvm.data import builtin_split, read_tsv, task_for  # noqa: E402
from edgebert_tvm.models.inference import torch_all_exits  # noqa: E402
from edgebert_tvm.models.checkpoint import load  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
RESULTS = Path(__file__).parent / "results"
SEQ_LEN = 64


def approximate_parameters(model: torch.nn.Module, threshold: float, granularity: rda.Granularity
                           ) -> list[rda.TensorReport]:
    """Replace every floating tensor of rank >= 1 by its RDA-decoded copy (what the pass does)."""
    reports = []
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and tensor.ndim >= 1:
                decoded, report = rda.approximate(tensor.numpy(), threshold, granularity, name)
                tensor.copy_(torch.from_numpy(decoded))
                reports.append(report)
    return reports


def artifact_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.iterdir() if f.name != "tokenizer.json")


def compiled_comparison(threshold: float, granularity: rda.Granularity, examples, labels, rounds: int) -> dict:
    """The pass at one threshold against the same checkpoint compiled plain: SST-2 dev accuracy of
    the artifact, artifact size (library + compressed store), and batch-1 latency, interleaved."""
    from harness import time_interleaved

    from edgebert_tvm.artifact import Artifact, write_artifact
    from edgebert_tvm.compiler import CompileOptions, compile_model
    from edgebert_tvm.evaluate import artifact_all_exits
    from edgebert_tvm.inputs import encode, load_tokenizer

    checkpoint = load("edgebert-sst2")
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {}
        for name, rda_threshold in (("plain", None), ("rda", threshold)):
            options = CompileOptions(seq_len=SEQ_LEN, rda_threshold=rda_threshold, rda_granularity=granularity,
                                     rda_storage="load")
            write_artifact(checkpoint, compile_model(checkpoint, options), Path(tmp) / name)
            artifacts[name] = Artifact.load(Path(tmp) / name)
        sizes = {name: artifact_bytes(Path(tmp) / name) for name in artifacts}
        logits = artifact_all_exits(artifacts["rda"], examples)
        reports = artifacts["rda"].metadata["pass_reports"]["rda"]["summary"]
        sentence = encode(load_tokenizer(artifacts["rda"].tokenizer_path, SEQ_LEN), [examples[0].text])
        runners = {name: (lambda a=a: a.run(sentence)) for name, a in artifacts.items()}
        times = time_interleaved(runners, rounds)
    medians = {name: float(np.median(t)) for name, t in times.items()}
    return {"threshold": threshold, "accuracy": float((logits[:, -1].argmax(-1) == labels).mean()),
            "compression_rate": reports["compression_rate"], "artifact_bytes": sizes,
            "artifact_ratio": sizes["rda"] / sizes["plain"], "median_ms": medians,
            "latency_ratio": medians["rda"] / medians["plain"], "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0, 63, 255, 1023, 4095, 16383])
    parser.add_argument("--granularity", default=rda.DEFAULT_GRANULARITY)
    parser.add_argument("--compiled-threshold", type=float, default=255)
    parser.add_argument("--rounds", type=int, default=30, help="interleaved latency rounds (batch 1)")
    args = parser.parse_args()
    granularity = rda.check_granularity(args.granularity)
    task = task_for("sst2")
    examples = read_tsv(builtin_split(task, "dev"), task)
    labels = np.array([e.label for e in examples])
    rows = []
    for threshold in args.thresholds:
        checkpoint = load("edgebert-sst2")
        reports = approximate_parameters(checkpoint.model, threshold, granularity)
        logits = torch_all_exits(checkpoint.model.eval(), checkpoint.tokenizer_dir / "tokenizer.json", examples,
                                 SEQ_LEN)
        summary = rda.summarize(reports)
        embeddings = [r for r in reports if "word_embeddings" in r.name]
        rows.append({"threshold": threshold, "granularity": granularity, **summary,
                     "accuracy": float((logits[:, -1].argmax(-1) == labels).mean()),
                     "word_embeddings_compression_rate": embeddings[0].compression_rate if embeddings else None,
                     "max_relative_rms_error": max(r.relative_rms_error for r in reports)})
        print(f"threshold {threshold:>7g}: compression {summary['compression_rate']:.2%}, "
              f"SST-2 dev accuracy {rows[-1]['accuracy']:.2%}", flush=True)
    compiled = compiled_comparison(args.compiled_threshold, granularity, examples, labels, args.rounds) \
        if args.compiled_threshold is not None else None
    if compiled:
        print(f"compiled with the pass at threshold {compiled['threshold']:g}: compression "
              f"{compiled['compression_rate']:.2%}, artifact accuracy {compiled['accuracy']:.2%}; artifact "
              f"{compiled['artifact_bytes']['rda'] / 1e6:.1f} MB vs {compiled['artifact_bytes']['plain'] / 1e6:.1f} MB "
              f"plain ({compiled['artifact_ratio']:.3f}x); median latency ratio rda/plain "
              f"{compiled['latency_ratio']:.3f} over {compiled['rounds']} interleaved rounds")
    print(f"\n{'threshold':>9} {'compression':>11} {'accuracy':>9} {'emb. compr.':>11} {'max rel. rms err':>16}")
    for r in rows:
        print(f"{r['threshold']:>9g} {r['compression_rate']:>11.2%} {r['accuracy']:>9.2%} "
              f"{r['word_embeddings_compression_rate']:>11.2%} {r['max_relative_rms_error']:>16.4f}")
    RESULTS.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([100 * r["compression_rate"] for r in rows], [100 * r["accuracy"] for r in rows], "o-")
    for r in rows:
        ax.annotate(f"t={r['threshold']:g}", (100 * r["compression_rate"], 100 * r["accuracy"]), fontsize=7)
    ax.set_xlabel("RDA compression rate of the weights (%)")
    ax.set_ylabel("SST-2 dev accuracy (%)")
    ax.set_title(f"edgebert-sst2, seq {SEQ_LEN}, groups of {granularity}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "rda_weights.png", dpi=120)
    write_json_atomic(RESULTS / "rda_weights.json", {"seq_len": SEQ_LEN, "rows": rows, "compiled": compiled})
    print(f"wrote {RESULTS / 'rda_weights.json'} and .png")


if __name__ == "__main__":
    main()
