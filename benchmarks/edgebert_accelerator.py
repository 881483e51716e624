"""The edgebert accelerator on SST-2 dev: accuracy of the chip's arithmetic, energy per sentence.

1. The default checkpoint compiled with `--target edgebert` (cap 64 at the default lengths, early
   exit at the checkpoint's calibrated threshold; each sentence at its own length): every exit's logits on SST-2 dev from the compiled artifact (the chip's
   AdaptivFloat-8 weights, 16-bit activations in calibrated per-tensor formats) against the PyTorch float model: accuracy at full depth and
   with early exit, agreement of the predicted classes.
   The chip's own exit threshold: calibrated with the chip's arithmetic by the recipe's rule
   (`training.recipe.threshold_within`) on the first CHIP_CALIBRATION_SENTENCES of the recipe's
   held-out training sentences, and its exit-layer predictor rebuilt on them; the chip's exits
   below follow it.
2. The cost model over the same sentences, following each sentence's exit layer as the chip
   computes it: energy and latency per sentence at full depth, with early exit, with early exit +
   DVFS (the entropy predictor picks the operating point for a latency target of the full-depth
   latency), and with the embeddings in DRAM instead of ReRAM eNVM.
3. The paper's ALBERT-base shape (random weights, seq 128): cycles and energy per sentence.

    .venv/bin/python benchmarks/edgebert_accelerator.py --json benchmarks/results/edgebert_accelerator.json \
        --plot benchmarks/results/edgebert_accelerator.png [--limit N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from edgebert_tvm.artifact import Artifact, write_artifact
from edgebert_tvm.compiler import CompileOptions, compile_model
from edgebert_tvm.data import builtin_split, read_tsv, task_for
from edgebert_tvm.evaluate import artifact_all_exits, entropy, evaluate_exits, exit_layers
from edgebert_tvm.models.inference import torch_all_exits
from edgebert_tvm.inputs import encode, load_tokenizer
from edgebert_tvm.exit_predictor import build_predictor, held_out_score
from edgebert_tvm.models.checkpoint import load
from edgebert_tvm.target.edgebert.config import load_config
from edgebert_tvm.target.edgebert.report import accelerator_report, plot_report
from edgebert_tvm.target.edgebert.sentence import chip_workloads
from edgebert_tvm.training.config import RecipeConfig
from edgebert_tvm.training.recipe import held_out_examples, threshold_within

SEQ_LEN = 64
# Of the recipe's 4,000 held-out sentences: the chip's arithmetic runs about 10 sentences a second here.
CHIP_CALIBRATION_SENTENCES = 1000
THRESHOLDS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6]


def compile_to(name: str, options: CompileOptions, directory: Path) -> Artifact:
    checkpoint = load(name)
    start = time.perf_counter()
    compiled = compile_model(checkpoint, options)
    print(f"compiled {name} for edgebert in {time.perf_counter() - start:.0f} s")
    write_artifact(checkpoint, compiled, directory)
    return Artifact.load(directory)


def accuracy(logits: np.ndarray, labels: np.ndarray, layers: np.ndarray | None = None) -> float:
    rows = np.arange(len(labels))
    chosen = logits[:, -1] if layers is None else logits[rows, layers - 1]
    return float((chosen.argmax(-1) == labels).mean())


def ffn_output_range(checkpoint, examples) -> list[dict[str, float]]:
    """Per layer, the float model's largest |FFN output| (what the chip's formats must hold)."""
    import torch

    tokenizer = load_tokenizer(checkpoint.tokenizer_dir / "tokenizer.json", SEQ_LEN)
    arrays = encode(tokenizer, [e.text for e in examples])
    model, seen = checkpoint.model, {}
    hooks = [model.layer_parts(g).ffn_out.register_forward_hook(
        lambda mod, inp, out, g=g: seen.setdefault(g, []).append(out.abs())) for g in range(model.num_layers)]
    with torch.no_grad():
        model(*[torch.from_numpy(arrays[k]) for k in ("input_ids", "attention_mask", "token_type_ids")])
    for hook in hooks:
        hook.remove()
    return [{"layer": g + 1, "max_abs": float(torch.cat(v).max())} for g, v in sorted(seen.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="only the first N dev sentences")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    config = load_config()
    checkpoint = load("edgebert-sst2")
    threshold = float(checkpoint.model.edgebert.extra["exit_predictor"]["threshold"])
    task = task_for("sst2")
    examples = read_tsv(builtin_split(task, "dev"), task, limit=args.limit)
    labels = np.array([e.label for e in examples])

    with tempfile.TemporaryDirectory() as tmp:
        artifact = compile_to("edgebert-sst2", CompileOptions(target="edgebert", seq_len=SEQ_LEN,
                                                              exit_thresholds=[threshold]), Path(tmp) / "sst2")
        chip = artifact_all_exits(artifact, examples)
        recipe = RecipeConfig.from_dict(checkpoint.model.edgebert.extra["recipe"])
        held_out = held_out_examples(recipe)[:CHIP_CALIBRATION_SENTENCES]
        chip_held_out = artifact_all_exits(artifact, held_out)
        fraction_bits = artifact.metadata["accelerator"]["fraction_bits"]
        workloads = chip_workloads(artifact.metadata["accelerator"], "edgebert-sst2")
        tokenizer = load_tokenizer(artifact.tokenizer_path, SEQ_LEN)
        lengths = artifact.row_lengths(encode(tokenizer, [e.text for e in examples])["attention_mask"])
        albert = compile_to("albert-base", CompileOptions(target="edgebert", seq_len=128, lengths=(128,)),
                            Path(tmp) / "albert")
        albert_workloads = chip_workloads(albert.metadata["accelerator"], "albert-base")
    floats = torch_all_exits(checkpoint.model, checkpoint.tokenizer_dir / "tokenizer.json", examples, SEQ_LEN)

    held_out_labels = np.array([e.label for e in held_out])
    chip_threshold = threshold_within(chip_held_out, held_out_labels)
    if chip_threshold is None:
        raise SystemExit("no threshold keeps the chip's held-out accuracy within the recipe's budget")
    predictor = build_predictor(chip_held_out, chip_threshold, recipe.exit_predictor)
    chip_exits, float_exits = exit_layers(chip, chip_threshold), exit_layers(floats, threshold)
    predicted = predictor.predict(entropy(chip[:, 0]))
    report = accelerator_report(workloads, config, chip_exits.tolist(), lengths, predicted.tolist())
    albert_report = accelerator_report(albert_workloads, config, [albert_workloads[128].num_layers])
    runs = report["per_sentence"]
    results = {
        "command": "benchmarks/edgebert_accelerator.py" + (f" --limit {args.limit}" if args.limit else ""),
        "sentences": len(examples), "seq_len": SEQ_LEN, "threshold": threshold, "chip_threshold": chip_threshold,
        "chip_calibration": {"sentences": len(held_out), "held_out_score": held_out_score(
            chip_held_out, chip_threshold, recipe.exit_predictor)},
        "accuracy": {
            "float_full_depth": accuracy(floats, labels), "chip_full_depth": accuracy(chip, labels),
            "float_early_exit": accuracy(floats, labels, float_exits),
            "chip_early_exit": accuracy(chip, labels, chip_exits),  # at the chip's own threshold
            "chip_at_float_threshold": accuracy(chip, labels, exit_layers(chip, threshold)),
            "class_agreement_full_depth": float((floats[:, -1].argmax(-1) == chip[:, -1].argmax(-1)).mean()),
            "max_abs_logit_difference": float(np.abs(floats - chip).max()),
            "mean_abs_logit_difference": float(np.abs(floats - chip).mean()),
        },
        "average_exit_layer": {"float": float(float_exits.mean()), "chip": float(chip_exits.mean())},
        "exit_predictor": {"exact": float((predicted == chip_exits).mean()),
                           "mean_abs_error": float(np.abs(predicted - chip_exits).mean())},
        "energy_uj_per_sentence": {name: run["energy_uj"] for name, run in runs.items()},
        "latency_us_per_sentence": {name: run["latency_us"] for name, run in runs.items()},
        "ratios": {
            "full_depth_over_early_exit": runs["full_depth"]["energy_uj"] / runs["early_exit"]["energy_uj"],
            "early_exit_over_early_exit_dvfs": runs["early_exit"]["energy_uj"] / runs["early_exit_dvfs"]["energy_uj"],
            "full_depth_over_early_exit_dvfs": runs["full_depth"]["energy_uj"] / runs["early_exit_dvfs"]["energy_uj"],
            "dram_over_envm_embedding_energy": report["embeddings"]["dram"]["energy_uj"]
            / report["embeddings"]["envm"]["energy_uj"],
        },
        "dvfs_met_target": runs["early_exit_dvfs"]["met_target"],
        "embeddings_per_sentence": report["embeddings"],
        "minilm_blocks": report["blocks"],
        "minilm_patterns_full_depth": report["patterns_full_depth"],
        "threshold_sweep": {"float": [vars(r) for r in evaluate_exits(floats, labels, THRESHOLDS)],
                            "chip": [vars(r) for r in evaluate_exits(chip, labels, THRESHOLDS)]},
        "float_ffn_output_range_first_64": ffn_output_range(checkpoint, examples[:64]),
        "fraction_bits": fraction_bits,
        "albert_base_seq128": {"full_depth_sentence": albert_report["full_depth_sentence"],
                               "latency_us": albert_report["per_sentence"]["full_depth"]["latency_us"],
                               "embeddings": albert_report["embeddings"], "blocks": albert_report["blocks"]},
    }
    print(json.dumps({k: results[k] for k in ("accuracy", "average_exit_layer", "exit_predictor", "threshold_sweep",
                                              "float_ffn_output_range_first_64",
                                              "energy_uj_per_sentence", "latency_us_per_sentence", "ratios",
                                              "dvfs_met_target", "embeddings_per_sentence")}, indent=2))
    albert_full = results["albert_base_seq128"]
    print(f"ALBERT-base seq 128 full depth: {albert_full['full_depth_sentence']['cycles']:,} cycles, "
          f"{albert_full['full_depth_sentence']['total_energy_pj'] * 1e-6:.1f} uJ, {albert_full['latency_us']:.0f} us")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(args.json)
    if args.plot:
        plot_report(report, args.plot, f"edgebert-sst2 on the edgebert accelerator, SST-2 dev ({len(examples)})")


if __name__ == "__main__":
    main()
