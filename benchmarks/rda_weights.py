"""RDA on the EdgeBERT checkpoint's weights: compression rate against SST-2 dev accuracy.

Every floating parameter of `edgebert-sst2` (the tensors `edgebert.ApproximateRedundantData` rewrites
in the compiled module) is stored the RDA way at each threshold; accuracy is the final layer's on all
872 SST-2 dev sentences at seq 64, in PyTorch with the decoded weights. One threshold is also
compiled with the pass (`--compiled-threshold`) and run through the artifact, which must agree.

    .venv/bin/python benchmarks/rda_weights.py [--thresholds 0 63 255 1023 4095] [--compiled-threshold 1023]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgebert_tvm import rda
from edgebert_tvm.cli import write_json_atomic  # noqa: E402
from edgebert_tvm.data import builtin_split, read_tsv, task_for  # noqa: E402
from edgebert_tvm.evaluate import torch_all_exits  # noqa: E402
from edgebert_tvm.models.checkpoint import load  # noqa: E402

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


def compiled_accuracy(threshold: float, granularity: rda.Granularity, examples, labels) -> dict:
    from edgebert_tvm.artifact import Artifact, write_artifact
    from edgebert_tvm.compiler import CompileOptions, compile_model
    from edgebert_tvm.evaluate import artifact_all_exits

    checkpoint = load("edgebert-sst2")
    options = CompileOptions(batch=8, seq_len=SEQ_LEN, rda_threshold=threshold, rda_granularity=granularity)
    compiled = compile_model(checkpoint, options)
    with tempfile.TemporaryDirectory() as tmp:
        write_artifact(checkpoint, compiled, options, Path(tmp) / "artifact")
        logits = artifact_all_exits(Artifact.load(Path(tmp) / "artifact"), examples)
    return {"threshold": threshold, "accuracy": float((logits[:, -1].argmax(-1) == labels).mean()),
            "compression_rate": compiled.reports["rda"]["summary"]["compression_rate"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0, 63, 255, 1023, 4095, 16383])
    parser.add_argument("--granularity", default=rda.DEFAULT_GRANULARITY)
    parser.add_argument("--compiled-threshold", type=float, default=1023)
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
    compiled = compiled_accuracy(args.compiled_threshold, granularity, examples, labels) \
        if args.compiled_threshold is not None else None
    if compiled:
        print(f"compiled with the pass at threshold {compiled['threshold']:g}: compression "
              f"{compiled['compression_rate']:.2%}, accuracy {compiled['accuracy']:.2%}")
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
