"""The edgebert accelerator on SST-2 dev: accuracy of the chip's arithmetic, energy per sentence.

1. The default checkpoint compiled with `--target edgebert` as `compile` deploys it (cap 64 at the
   default lengths; each sentence at its own length): every exit's logits on SST-2 dev from the
   compiled artifact (the chip's AdaptivFloat-8 weights, 16-bit activations in calibrated
   per-tensor formats) against the PyTorch float model: accuracy at full depth and with early
   exit, agreement of the predicted classes. The chip's exits follow its own threshold and
   predictor, which the compile calibrated with the chip's arithmetic on the recipe's held-out
   training sentences (`accelerator.exit_calibration` in metadata.json); the exit layers
   the artifact's `main` takes (the entropy unit's decisions) are compared with that rule
   applied to the chip's logits in float.
2. The cost model over the same sentences, following each sentence's exit layer as the chip
   computes it: energy and latency per sentence at full depth, with early exit, with early exit +
   DVFS (the entropy predictor picks the operating point for a latency target of the full-depth
   latency; and with a predictor that is always right, the most DVFS can save at that target),
   and with the embeddings in DRAM instead of ReRAM eNVM.
3. The paper's ALBERT-base shape (random weights, seq 128): cycles and energy per sentence.

    .venv/bin/python benchmarks/edgebert_accelerator.py --json benchmarks/results/edgebert_accelerator-shipped.json \
        --plot benchmarks/results/edgebert_accelerator-shipped.png [--limit N]
    .venv/bin/python benchmarks/edgebert_accelerator.py --tables benchmarks/results/edgebert_accelerator-shipped.json

The run ends with the README's two tables (accuracy, energy per sentence); `--tables` prints them
again from a saved result.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from edgebert_tvm.artifact import Artifact, write_artifact
from edgebert_tvm.compiler import FROM_CHECKPOINT, CompileOptions, compile_model
from edgebert_tvm.data import builtin_split, read_tsv, task_for
from edgebert_tvm.evaluate import artifact_all_exits, entropy, evaluate_exits, exit_layers
from edgebert_tvm.models.inference import torch_all_exits
from edgebert_tvm.inputs import encode, load_tokenizer
from edgebert_tvm.exit_predictor import ExitPredictor
from edgebert_tvm.models.checkpoint import load
from edgebert_tvm.target.edgebert.config import load_config
from edgebert_tvm.target.edgebert.report import accelerator_report, plot_report
from edgebert_tvm.target.edgebert.sentence import chip_workloads

SEQ_LEN = 64
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


def tables(results: dict) -> str:
    """The README's tables: accuracy of the float model and of the chip, and energy per sentence."""
    acc, layers, energy = results["accuracy"], results["average_exit_layer"], results["energy_uj_per_sentence"]
    latency, runs, ratios = results["latency_us_per_sentence"], results["sentences"], results["ratios"]
    t, chip_t = results["threshold"], results["chip_threshold"]
    exit_bound = 6 / layers["chip"]
    dvfs_bound, perfect = results["dvfs_bound"], results["dvfs_perfect_predictor"]
    rows = [
        "| SST-2 dev, all {runs} | float model (PyTorch) | the chip's arithmetic |".format(runs=runs),
        "|---|---|---|",
        f"| full depth | {acc['float_full_depth']:.2%} | {acc['chip_full_depth']:.2%} (same class for "
        f"{acc['class_agreement_full_depth']:.1%}) |",
        f"| early exit, each at its own threshold ({t:g} float, {chip_t:g} chip) | {acc['float_early_exit']:.2%} "
        f"(avg exit {layers['float']:.2f} of 6) | {acc['chip_early_exit']:.2%} (avg exit {layers['chip']:.2f}) |",
        "",
        "| per sentence (cost model) | energy | latency |",
        "|---|---|---|",
        f"| full depth (6 layers) | {energy['full_depth']:.1f} uJ | {latency['full_depth']:.0f} us |",
        f"| early exit (the chip's exit layers) | {energy['early_exit']:.1f} uJ ({ratios['full_depth_over_early_exit']:.2f}x "
        f"less; bound 6 / {layers['chip']:.2f} = {exit_bound:.2f}x: {ratios['full_depth_over_early_exit'] / exit_bound:.0%}) "
        f"| {latency['early_exit']:.0f} us |",
        f"| early exit + DVFS (target: full-depth latency) | {energy['early_exit_dvfs']:.1f} uJ "
        f"({ratios['early_exit_over_early_exit_dvfs']:.2f}x less than exits; bound {dvfs_bound:.2f}x: "
        f"{ratios['early_exit_over_early_exit_dvfs'] / dvfs_bound:.0%}) | {latency['early_exit_dvfs']:.0f} us, "
        f"{results['dvfs_met_target']:.1%} within target |",
        f"| early exit + DVFS with a predictor that is always right (the ceiling at this target) | "
        f"{perfect['energy_uj']:.1f} uJ ({energy['early_exit'] / perfect['energy_uj']:.2f}x less than exits: "
        f"{energy['early_exit'] / perfect['energy_uj'] / dvfs_bound:.0%} of the bound) | {perfect['latency_us']:.0f} us, "
        f"{perfect['met_target']:.1%} within target |",
        f"| early exit, weights from DRAM instead of the weight SRAM | {energy['early_exit_dram_weights']:.1f} uJ "
        f"({energy['early_exit_dram_weights'] / energy['early_exit']:.2f}x) | {latency['early_exit_dram_weights']:.0f} us |",
        f"| embeddings: eNVM / DRAM | {results['embeddings_per_sentence']['envm']['energy_uj']:.2f} / "
        f"{results['embeddings_per_sentence']['dram']['energy_uj']:.2f} uJ ({ratios['dram_over_envm_embedding_energy']:.1f}x) "
        f"| equal bandwidths assumed |",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="only the first N dev sentences")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--tables", type=Path, help="print the README's tables from this saved result and stop")
    args = parser.parse_args()
    if args.tables:
        print(tables(json.loads(args.tables.read_text())))
        return
    config = load_config()
    checkpoint = load("edgebert-sst2")
    threshold = float(checkpoint.model.edgebert.extra["exit_predictor"]["threshold"])
    task = task_for("sst2")
    examples = read_tsv(builtin_split(task, "dev"), task, limit=args.limit)
    labels = np.array([e.label for e in examples])

    with tempfile.TemporaryDirectory() as tmp:
        artifact = compile_to("edgebert-sst2", CompileOptions(target="edgebert", seq_len=SEQ_LEN,
                                                              exit_thresholds=FROM_CHECKPOINT), Path(tmp) / "sst2")
        chip = artifact_all_exits(artifact, examples)
        calibration = artifact.metadata["accelerator"]["exit_calibration"]
        tokenizer = load_tokenizer(artifact.tokenizer_path, SEQ_LEN)
        encoded = encode(tokenizer, [e.text for e in examples])
        chip_main_exits = artifact.run(encoded).exit_layer  # as the entropy unit decides them
        fraction_bits = artifact.metadata["accelerator"]["fraction_bits"]
        workloads = chip_workloads(artifact.metadata["accelerator"], "edgebert-sst2")
        lengths = artifact.row_lengths(encoded["attention_mask"])
        albert = compile_to("albert-base", CompileOptions(target="edgebert", seq_len=128, lengths=(128,)),
                            Path(tmp) / "albert")
        albert_workloads = chip_workloads(albert.metadata["accelerator"], "albert-base")
    floats = torch_all_exits(checkpoint.model, checkpoint.tokenizer_dir / "tokenizer.json", examples, SEQ_LEN)

    chip_threshold = calibration["threshold"]
    if chip_threshold is None:
        raise SystemExit("no threshold kept the chip's held-out accuracy within the recipe's budget")
    predictor = ExitPredictor(**calibration["predictor"])
    chip_exits, float_exits = np.asarray(chip_main_exits), exit_layers(floats, threshold)
    predicted = predictor.predict(entropy(chip[:, 0]))
    report = accelerator_report(workloads, config, chip_exits.tolist(), lengths, predicted.tolist())
    # DVFS's ceiling at this target: a predictor that is always right
    perfect = accelerator_report(workloads, config, chip_exits.tolist(), lengths, chip_exits.tolist())
    # the same with every sentence at the longest length: no slack from short sentences
    longest = accelerator_report(workloads, config, chip_exits.tolist(), None, chip_exits.tolist())["per_sentence"]
    albert_report = accelerator_report(albert_workloads, config, [albert_workloads[128].num_layers])
    runs = report["per_sentence"]
    results = {
        "command": "benchmarks/edgebert_accelerator.py" + (f" --limit {args.limit}" if args.limit else ""),
        "sentences": len(examples), "seq_len": SEQ_LEN, "threshold": threshold, "chip_threshold": chip_threshold,
        "chip_calibration": {k: calibration[k] for k in ("sentences", "held_out_score", "seconds")},
        # the entropy unit's decisions (PWL exp and log) against the same rule in float on the chip's logits
        "entropy_unit_agreement": float((chip_exits == exit_layers(chip, chip_threshold)).mean()),
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
        "dvfs_perfect_predictor": perfect["per_sentence"]["early_exit_dvfs"],
        "dvfs_perfect_predictor_at_longest_length": {
            "early_exit_uj": longest["early_exit"]["energy_uj"], "dvfs_uj": longest["early_exit_dvfs"]["energy_uj"],
            "met_target": longest["early_exit_dvfs"]["met_target"]},
        "dvfs_bound": (config.dvfs_points[0].voltage / min(p.voltage for p in config.dvfs_points)) ** 2,
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
                                              "dvfs_met_target", "dvfs_perfect_predictor",
                                              "dvfs_perfect_predictor_at_longest_length",
                                              "embeddings_per_sentence")}, indent=2))
    print(tables(results))
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
