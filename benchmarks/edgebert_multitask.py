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
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from edgebert_accelerator import accuracy, compile_to  # noqa: E402

from edgebert_tvm.compiler import FROM_CHECKPOINT, CompileOptions
from edgebert_tvm.evaluate import artifact_all_exits, entropy, exit_layers
from edgebert_tvm.exit_predictor import ExitPredictor
from edgebert_tvm.inputs import encode, load_tokenizer
from edgebert_tvm.models.checkpoint import load
from edgebert_tvm.models.inference import torch_all_exits
from edgebert_tvm.target.edgebert.config import load_config
from edgebert_tvm.target.edgebert.cost import MASK_BITS, WEIGHT_BYTES
from edgebert_tvm.target.edgebert.partition import hw8_round
from edgebert_tvm.target.edgebert.report import accelerator_report
from edgebert_tvm.target.edgebert.sentence import chip_workloads
from edgebert_tvm.target.cpu.host import describe_host
from edgebert_tvm.training.config import RecipeConfig
from edgebert_tvm.training.recipe import held_out_examples
from edgebert_tvm.target.edgebert.pipeline import CHIP_EXIT_SENTENCES

SEQ_LEN = {"sst2": 64, "qnli": 128}
LENGTHS = {"sst2": None, "qnli": (32, 48, 64, 96, 128)}  # None: compile's default lengths


def chip_table(checkpoint) -> np.ndarray:
    """The word-embedding table as the chip stores it in eNVM."""
    weight = checkpoint.model.backbone.embeddings.word_embeddings.weight.detach().numpy()
    return hw8_round(weight)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qnli", type=Path, required=True, help="the QNLI student's checkpoint directory")
    parser.add_argument("--limit", type=int, help="only the first N evaluation pairs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    config = load_config()
    names = {"sst2": "edgebert-sst2", "qnli": str(args.qnli)}
    checkpoints = {task: load(name) for task, name in names.items()}
    tables = {task: chip_table(c) for task, c in checkpoints.items()}
    shared = bool(np.array_equal(tables["sst2"], tables["qnli"]))
    print(f"the chip's embedding tables of the two tasks are {'identical' if shared else 'DIFFERENT'}")

    recipe = RecipeConfig.from_dict(checkpoints["qnli"].model.edgebert.extra["recipe"])
    pairs = held_out_examples(recipe)[CHIP_EXIT_SENTENCES:][:args.limit]
    labels = np.array([e.label for e in pairs])
    # the chip's arithmetic is integer: its numbers do not depend on the host CPU, named all the same
    results: dict = {"command": "benchmarks/edgebert_multitask.py", "host": describe_host(),
                     "embedding_table_shared": shared, "qnli_evaluation_pairs": len(pairs), "tasks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {task: compile_to(name, CompileOptions(target="edgebert", seq_len=SEQ_LEN[task],
                                                           exit_thresholds=FROM_CHECKPOINT,
                                                           **({"lengths": LENGTHS[task]} if LENGTHS[task] else {})),
                                      Path(tmp) / task) for task, name in names.items()}
        chip = artifact_all_exits(artifacts["qnli"], pairs)
        tokenizer = load_tokenizer(artifacts["qnli"].tokenizer_path, SEQ_LEN["qnli"])
        encoded = encode(tokenizer, [e.text for e in pairs], [e.text_pair for e in pairs])
        chip_exits = np.asarray(artifacts["qnli"].run(encoded).exit_layer)
        lengths = artifacts["qnli"].row_lengths(encoded["attention_mask"])
        metadata = {task: a.metadata for task, a in artifacts.items()}
    qnli = checkpoints["qnli"]
    floats = torch_all_exits(qnli.model, qnli.tokenizer_dir / "tokenizer.json", pairs, SEQ_LEN["qnli"])
    float_threshold = float(qnli.model.edgebert.exit_thresholds[0])
    float_exits = exit_layers(floats, float_threshold)
    calibration = metadata["qnli"]["accelerator"]["exit_calibration"]
    predictor = ExitPredictor(**calibration["predictor"])
    report = accelerator_report(chip_workloads(metadata["qnli"]["accelerator"], "qnli"), config, chip_exits.tolist(),
                                lengths, predictor.predict(entropy(chip[:, 0])).tolist())
    runs = report["per_sentence"]
    results["qnli"] = {
        "float_threshold": float_threshold, "chip_threshold": calibration["threshold"],
        "accuracy": {"float_full_depth": accuracy(floats, labels), "chip_full_depth": accuracy(chip, labels),
                     "float_early_exit": accuracy(floats, labels, float_exits),
                     "chip_early_exit": accuracy(chip, labels, chip_exits)},
        "average_exit_layer": {"float": float(float_exits.mean()),
                               "chip": float(chip_exits.mean())},
        "energy_uj_per_pair": {name: run["energy_uj"] for name, run in runs.items()},
        "latency_us_per_pair": {name: run["latency_us"] for name, run in runs.items()},
        "dvfs_met_target": runs["early_exit_dvfs"]["met_target"],
    }
    sst2 = chip_workloads(metadata["sst2"]["accelerator"], "sst2")
    reports = {"qnli": report, "sst2": accelerator_report(sst2, config, [sst2[max(sst2)].num_layers])}
    for task in metadata:  # the report's memory map: what the SRAM holds, what loading it costs
        memory = reports[task]["memory_map"]
        results["tasks"][task] = {"seq_len": SEQ_LEN[task], "weight_bytes": memory["task_weight_bytes"],
                                  "resident_bytes": memory["resident_bytes"], "spilled": memory["spilled"],
                                  "switch_to_task": memory["task_switch"]}
    table = tables["sst2"]  # stored as the cost model stores it: a code per nonzero and a mask bit per entry
    table_bytes = np.count_nonzero(table) * WEIGHT_BYTES + table.size * MASK_BITS / 8
    results["envm_bytes"] = {"one_shared_table": table_bytes, "one_table_per_task": 2 * table_bytes}
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = args.json.with_name(f".{args.json.name}.tmp")
        tmp_path.write_text(json.dumps(results, indent=2) + "\n")
        tmp_path.replace(args.json)


if __name__ == "__main__":
    main()
