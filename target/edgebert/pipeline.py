"""The edgebert target: the host CPU runs what the accelerator does not; before lowering, the module is
partitioned for the chip (BYOC codegen), each region call's fixed-point format calibrated on the
chip's own arithmetic (formats.py), the chip's own exit threshold calibrated on its logits (where
the threshold is the checkpoint's), and the chip's workload per block at each compiled length, its
formats and its configuration recorded for `run --report`."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import tvm
from tqdm import tqdm
from tvm import relax

from ...artifact import Artifact
from ...contract import ALL_EXITS
from ...data import Example, Task, builtin_split, read_tsv, task_for
from ...errors import EdgeBertError, InternalError
from ...evaluate import artifact_all_exits
from ...inputs import encode, load_tokenizer
from ...lengths import fit, suffix
from ...passes import SetExitThresholds
from ...training.config import RecipeConfig
from ...training.recipe import exits_calibrated_on, held_out_examples, training_examples
from ..targets import LlvmTarget, build
from ...rda.activations import CALIBRATION_SENTENCES, ActivationStorage, measure
from .config import parse_config, read_config_file
from .formats import Site, add_registers, calibration_module, choose_formats, observe_peaks
from .functional import WORD_BITS
from .partition import chip_workload, partition_for_edgebert

if TYPE_CHECKING:  # types only: the compiler imports the targets, not the other way round
    from ...compiler import CompileOptions
    from ...models.checkpoint import Checkpoint
    from ...models.config import EdgeBertConfig
    from ...models.modeling import EdgeBertForSequenceClassification


class EdgebertTarget(LlvmTarget):
    """The EdgeBERT accelerator model, hosted by this CPU."""

    name = "edgebert"

    def check(self, options: CompileOptions, model: EdgeBertForSequenceClassification) -> None:
        _calibration_task(model.edgebert)  # fails now if there is nothing to choose formats from
        if options.mcpu is not None:
            raise EdgeBertError("--mcpu is for llvm and cuda: the edgebert chip's functional model is built for "
                                "this CPU, which runs it at compile time to calibrate the chip")
        if options.fuse_qkv:
            raise EdgeBertError("--fuse-qkv is for llvm and cuda: the edgebert chip's patterns take one matmul per "
                                "projection")
        if options.span_folding not in (None, "auto"):
            raise EdgeBertError("--span-folding is for llvm and cuda: the edgebert chip applies spans in its "
                                "softmax unit")
        if options.rda_storage == "load":
            raise EdgeBertError("--rda-storage load is for llvm and cuda: the edgebert chip's regions take constant weights")
        if options.sparse:
            raise EdgeBertError("--sparse is for llvm: the edgebert chip gates zero weights in its own MAC array")
        if options.weight_format is not None:
            raise EdgeBertError("--weights is for llvm and cuda: the edgebert chip stores its weights as AdaptivFloat-8 "
                                "itself (its matmul patterns would not match quantized kernels)")

    def before_lowering(self, mod: tvm.IRModule, checkpoint: Checkpoint,
                        options: CompileOptions) -> tuple[tvm.IRModule, dict]:
        """Partition for the accelerator and record its workload and configuration for `run --report`."""
        raw_config = read_config_file(options.accelerator_config)
        parse_config(raw_config, options.accelerator_config or "default accelerator configuration")
        model = checkpoint.model
        mod, regions = partition_for_edgebert(mod)
        start = time.perf_counter()
        formats = self._calibrate(mod, checkpoint, options)
        calibration_seconds = time.perf_counter() - start

        def register(site: Site) -> tuple[int, int]:
            if site not in formats:
                raise InternalError(f"edgebert: region call {site} was not seen in calibration")
            return formats[site], WORD_BITS

        mod = relax.transform.RunCodegen()(add_registers(mod, register)[0])
        exits = self._calibrate_exits(mod, checkpoint, options)
        if exits is not None and exits["threshold"] is not None:
            mod = SetExitThresholds(exits["threshold"])(mod)
        workloads = {length: chip_workload(mod, regions, suffix(length, options.seq_len), model.edgebert.num_labels)
                     for length in options.lengths}
        accelerator = {"workloads": {str(n): w.to_dict() for n, w in workloads.items()}, "config": raw_config,
                       "fraction_bits": {f"{block}/{position}": bits for (block, position), bits in sorted(formats.items())},
                       "calibration_seconds": round(calibration_seconds, 1)}
        if exits is not None:
            accelerator["exit_calibration"] = exits
        if options.rda_activations is not None:
            accelerator["activation_storage"] = _measure_activation_storage(checkpoint, options).to_dict()
        return mod, accelerator

    def _calibrate(self, mod: tvm.IRModule, checkpoint: Checkpoint, options: CompileOptions) -> dict[Site, int]:
        """Each region call's fraction bits, from a calibration build of `all_exits` at the longest length."""
        calibration, sites = calibration_module(mod)
        target = tvm.target.Target.current()
        lowered = self.lowering(target)(relax.transform.RunCodegen()(calibration))
        vm = relax.VirtualMachine(build(lowered, target), tvm.cpu())
        batches = _calibration_batches(checkpoint, options)
        return choose_formats(observe_peaks(calibration, sites, vm, tqdm(batches, desc="calibrating the chip's formats",
                                                                  unit="batch", leave=False)))

    def _calibrate_exits(self, mod: tvm.IRModule, checkpoint: Checkpoint, options: CompileOptions) -> dict[str, Any] | None:
        """The chip's own exit threshold and exit-layer predictor, where the threshold compiled in is
        the checkpoint's: the recipe's rule (the largest threshold within its accuracy budget of full
        depth) on the chip's logits for the recipe's held-out training sentences, each at its own
        length, from a build of every length's `all_exits` out of `mod` (its regions compiled, in
        their chosen formats). None where the threshold is the user's or the checkpoint records no
        held-out sentences."""
        recipe = checkpoint.model.edgebert.extra.get("recipe")
        if "exit_thresholds" not in options.from_checkpoint or not isinstance(recipe, dict) or \
                checkpoint.tokenizer_dir is None:
            return None
        config = RecipeConfig.from_dict(recipe)
        held_out = held_out_examples(config)[:CHIP_EXIT_SENTENCES]
        if not held_out:
            return None
        start = time.perf_counter()
        entries = [ALL_EXITS + suffix(length, options.seq_len) for length in options.lengths]
        target = tvm.target.Target.current()
        chip = relax.transform.DeadCodeElimination(entries)(mod)
        vm = relax.VirtualMachine(build(self.lowering(target)(chip), target), tvm.cpu())
        # run as an artifact runs (rows chunked by length), with the checkpoint's tokenizer
        inputs = {"input": {"batch": options.batch, "seq_len": options.seq_len, "lengths": list(options.lengths)}}
        logits = artifact_all_exits(Artifact(checkpoint.tokenizer_dir, inputs, vm, tvm.cpu()), held_out,
                                    desc="calibrating the chip's exit threshold")
        threshold, predictor, score = exits_calibrated_on(logits, np.array([e.label for e in held_out]),
                                                          statistic=config.exit_predictor)
        return {"threshold": threshold, "checkpoint_thresholds": list(options.exit_thresholds), "sentences": len(held_out),
                "predictor": None if predictor is None else dataclasses.asdict(predictor), "held_out_score": score,
                "seconds": round(time.perf_counter() - start, 1)}


CHIP_EXIT_SENTENCES = 1000  # held-out sentences the chip's threshold is calibrated on (about 80 s on 2 cores)
RANDOM_CALIBRATION_ROWS = 8


def _calibration_task(edgebert: EdgeBertConfig) -> Task:
    """The task whose training sentences calibrate the chip (SST-2 for a model that names none),
    refused where it has no built-in train split and the checkpoint records no recipe to read one from."""
    task = task_for(edgebert.task or "sst2")
    if "train" not in task.splits and not isinstance(edgebert.extra.get("recipe"), dict):
        raise EdgeBertError(f"no sentences to calibrate the chip's formats on: the checkpoint's task {task.name} has "
                            "no built-in train split and the checkpoint records no recipe with a train file")
    return task


def _calibration_examples(checkpoint: Checkpoint) -> list[Example]:
    """The first training sentences of the model's task; for a task without a built-in train split
    (QNLI here), the first its recipe trained on."""
    task = _calibration_task(checkpoint.model.edgebert)
    if "train" in task.splits:
        return read_tsv(builtin_split(task, "train"), task, limit=CALIBRATION_SENTENCES)
    return training_examples(RecipeConfig.from_dict(checkpoint.model.edgebert.extra["recipe"]))[:CALIBRATION_SENTENCES]


def _calibration_batches(checkpoint: Checkpoint, options: CompileOptions) -> list[list[tvm.runtime.Tensor]]:
    """`all_exits`'s inputs at the longest length, `options.batch` rows each: calibration sentences, or
    a few rows of seeded random token ids for a model without a tokenizer (random-weight shapes: no
    text means more, and their ranges settle within a few rows)."""
    if checkpoint.tokenizer_dir is not None:
        examples = _calibration_examples(checkpoint)
        tokenizer = load_tokenizer(checkpoint.tokenizer_dir / "tokenizer.json", options.seq_len)
        arrays = encode(tokenizer, [e.text for e in examples], [e.text_pair for e in examples])
    else:
        rng = np.random.default_rng(0)
        shape = (RANDOM_CALIBRATION_ROWS, options.seq_len)
        arrays = {"input_ids": rng.integers(0, checkpoint.model.config.vocab_size, shape), "attention_mask":
                  np.ones(shape, np.int64), "token_type_ids": np.zeros(shape, np.int64)}
    rows = len(arrays["input_ids"]) // options.batch * options.batch or options.batch
    names = ("input_ids", "attention_mask", "token_type_ids")
    padded = {name: np.resize(fit(arrays[name], options.seq_len), (rows, options.seq_len)) for name in names}
    return [[tvm.runtime.tensor(padded[name][start:start + options.batch]) for name in names]
            for start in range(0, rows, options.batch)]


def _measure_activation_storage(checkpoint: Checkpoint, options: CompileOptions) -> ActivationStorage:
    """Bytes per activation value with RDA buffers, on the first sentences of the model's task's training set."""
    edgebert = checkpoint.model.edgebert
    if edgebert.task is None or checkpoint.tokenizer_dir is None:
        raise EdgeBertError(f"{checkpoint.source}: --rda-activations measures on the model's task's sentences; "
                            "this checkpoint names no task or has no tokenizer")
    storage, _ = measure(checkpoint.model.eval(), checkpoint.tokenizer_dir / "tokenizer.json", _calibration_examples(checkpoint),
                         options.seq_len, options.rda_activations, options.rda_granularity)
    return storage
