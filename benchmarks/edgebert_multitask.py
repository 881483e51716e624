"""Two tasks on one edgebert chip: SST-2 and QNLI encoders sharing one eNVM embedding table.

EdgeBERT keeps the word embeddings, which every task shares, in ReRAM eNVM and loads a task's
encoder into on-chip SRAM when the chip switches to it. The recipe makes that sharing possible: it
prunes the backbone's word embeddings by magnitude once and freezes them, so two students of one
backbone store the same table. This benchmark checks it and costs it:

1. the shipped `edgebert-sst2` and a QNLI student (`--qnli DIR`) store the same table as the chip
   holds it (AdaptivFloat-8 values under one bias register, bit for bit), so one eNVM table serves
   both, and how many eNVM bytes one table per task would take instead;
2. each compiled with `--target edgebert` as `compile` deploys it (the chip's own exit threshold):
   the weight SRAM's contents and the cost of switching to the task (loading its weights);
3. QNLI on the chip: accuracy of the float model and the chip at full depth and with exits, and
   energy per pair (full depth, exits, exits + DVFS).

QNLI has only its dev set here (5,463 pairs). The student is trained by the recipe on a seeded
3,500 of them; the other 1,963 are the recipe's held-out pairs, on which the float threshold was
calibrated and, on the first 1,000, the chip's. Accuracy is measured on the remaining 963, which
neither training nor the chip's calibration saw (the float threshold, one number, did):

    .venv/bin/edgebert-tvmc train -o build/edgebert-qnli --backbone minilm-l6 --task qnli \\
        --train-file ../shared/data/glue/QNLI/dev.tsv --max-examples 3500 --max-seq-len 128 --epochs 3 \\
        --lr 8e-5 --pruning magnitude --offramp-epochs 3 --offramp-lr 3e-3
    .venv/bin/python benchmarks/edgebert_multitask.py --qnli build/edgebert-qnli \\
        --json benchmarks/results/edgebert_multitask.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from edgebert_tvm.artifact import Artifact, write_artifact
from edgebert_tvm.compiler import FROM_CHECKPOINT, CompileOptions, compile_model
from edgebert_tvm.evaluate import artifact_all_exits, entropy, exit_layers
from edgebert_tvm.exit_predictor import ExitPredictor
from edgebert_tvm.inputs import encode, load_tokenizer
from edgebert_tvm.models.checkpoint import load
from edgebert_tvm.models.inference import torch_all_exits
from edgebert_tvm.target.edgebert.config import load_config
from edgebert_tvm.target.edgebert.cost import Embedding, op_cost
from edgebert_tvm.target.edgebert.partition import hw8_round
from edgebert_tvm.target.edgebert.report import accelerator_report
from edgebert_tvm.target.edgebert.sentence import chip_workloads
from edgebert_tvm.target.cpu.host import describe_host
from edgebert_tvm.training.config import RecipeConfig
from edgebert_tvm.training.recipe import held_out_examples
from edgebert_tvm.target.edgebert.pipeline import CHIP_EXIT_SENTENCES

UJ = 1e-6
TASKS = {"sst2": ("edgebert-sst2", 64, None), "qnli": (None, 128, (32, 48, 64, 96, 128))}


def chip_table(checkpoint) -> np.ndarray:
    """The word-embedding table as the chip stores it in eNVM."""
    weight = checkpoint.model.backbone.embeddings.word_embeddings.weight.detach().numpy()
    return hw8_round(weight)


def compile_chip(checkpoint, seq_len: int, lengths, directory: Path) -> Artifact:
    options = CompileOptions(target="edgebert", seq_len=seq_len, exit_thresholds=FROM_CHECKPOINT,
                             **({"lengths": lengths} if lengths else {}))
    write_artifact(checkpoint, compile_model(checkpoint, options), directory)
    return Artifact.load(directory)


def accuracy(logits: np.ndarray, labels: np.ndarray, layers: np.ndarray | None = None) -> float:
    chosen = logits[:, -1] if layers is None else logits[np.arange(len(labels)), layers - 1]
    return float((chosen.argmax(-1) == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qnli", type=Path, required=True, help="the QNLI student's checkpoint directory")
    parser.add_argument("--limit", type=int, help="only the first N evaluation pairs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    config = load_config()
    checkpoints = {"sst2": load("edgebert-sst2"), "qnli": load(str(args.qnli))}
    tables = {task: chip_table(c) for task, c in checkpoints.items()}
    shared = bool(np.array_equal(tables["sst2"], tables["qnli"]))
    print(f"the chip's embedding tables of the two tasks are {'identical' if shared else 'DIFFERENT'}")

    recipe = RecipeConfig.from_dict(checkpoints["qnli"].model.edgebert.extra["recipe"])
    pairs = held_out_examples(recipe)[CHIP_EXIT_SENTENCES:][:args.limit]
    labels = np.array([e.label for e in pairs])
    results: dict = {"command": "benchmarks/edgebert_multitask.py", "host": describe_host(),  # the chip's arithmetic is integer: its numbers do not depend on it
                     "embedding_table_shared": shared, "qnli_evaluation_pairs": len(pairs), "tasks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {task: compile_chip(checkpoints[task], TASKS[task][1], TASKS[task][2], Path(tmp) / task)
                     for task in checkpoints}
        chip = artifact_all_exits(artifacts["qnli"], pairs)
        tokenizer = load_tokenizer(artifacts["qnli"].tokenizer_path, TASKS["qnli"][1])
        encoded = encode(tokenizer, [e.text for e in pairs], [e.text_pair for e in pairs])
        chip_exits = np.asarray(artifacts["qnli"].run(encoded).exit_layer)
        lengths = artifacts["qnli"].row_lengths(encoded["attention_mask"])
        metadata = {task: a.metadata for task, a in artifacts.items()}
    qnli = checkpoints["qnli"]
    floats = torch_all_exits(qnli.model, qnli.tokenizer_dir / "tokenizer.json", pairs, TASKS["qnli"][1])
    float_threshold = float(qnli.model.edgebert.exit_thresholds[0])
    calibration = metadata["qnli"]["accelerator"]["exit_calibration"]
    predictor = ExitPredictor(**calibration["predictor"])
    report = accelerator_report(chip_workloads(metadata["qnli"]["accelerator"], "qnli"), config, chip_exits.tolist(),
                                lengths, predictor.predict(entropy(chip[:, 0])).tolist())
    runs = report["per_sentence"]
    results["qnli"] = {
        "float_threshold": float_threshold, "chip_threshold": calibration["threshold"],
        "accuracy": {"float_full_depth": accuracy(floats, labels), "chip_full_depth": accuracy(chip, labels),
                     "float_early_exit": accuracy(floats, labels, exit_layers(floats, float_threshold)),
                     "chip_early_exit": accuracy(chip, labels, chip_exits)},
        "average_exit_layer": {"float": float(exit_layers(floats, float_threshold).mean()),
                               "chip": float(chip_exits.mean())},
        "energy_uj_per_pair": {name: run["energy_uj"] for name, run in runs.items()},
        "latency_us_per_pair": {name: run["latency_us"] for name, run in runs.items()},
        "dvfs_met_target": runs["early_exit_dvfs"]["met_target"],
    }
    for task, meta in metadata.items():
        workloads = chip_workloads(meta["accelerator"], task)
        longest = workloads[max(workloads)]
        memory = longest.memory_map(config)
        load_cost = memory.load_cost(config)
        results["tasks"][task] = {
            "seq_len": TASKS[task][1], "weight_bytes": sum(memory.block_bytes.values()),
            "resident_bytes": memory.resident_bytes, "spilled": list(memory.spilled),
            "switch_to_task": {"energy_uj": load_cost.total_energy * UJ,
                               "latency_us": load_cost.cycles / config.nominal.frequency * 1e6},
        }
    embedding = next(r["op"] for r in chip_workloads(metadata["sst2"]["accelerator"], "sst2")[64].blocks["embeddings"]
                     if isinstance(r["op"], Embedding))
    table = tables["sst2"]
    table_bytes = float(np.count_nonzero(table)) + table.size / 8  # AF8 code per nonzero + 1-bit mask
    results["envm_bytes"] = {"one_shared_table": table_bytes, "one_table_per_task": 2 * table_bytes}
    results["embedding_lookup_uj_per_token"] = op_cost(Embedding(1, embedding.width, embedding.density),
                                                       config).total_energy * UJ
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = args.json.with_name(f".{args.json.name}.tmp")
        tmp_path.write_text(json.dumps(results, indent=2) + "\n")
        tmp_path.replace(args.json)


if __name__ == "__main__":
    main()
