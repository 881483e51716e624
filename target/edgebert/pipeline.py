"""The edgebert target: the host CPU runs what the accelerator does not; before lowering, the module is
partitioned for the chip (BYOC codegen), and the chip's workload per block at each compiled length
and its configuration are recorded for `run --report`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import tvm

from ...data import builtin_split, read_tsv, task_for
from ...errors import EdgeBertError
from ...lengths import suffix
from ..targets import LlvmTarget
from ...rda.activations import CALIBRATION_SENTENCES, ActivationStorage, measure
from .config import parse_config, read_config_file
from .partition import chip_workload, partition_for_edgebert

if TYPE_CHECKING:  # types only: the compiler imports the targets, not the other way round
    from ...compiler import CompileOptions
    from ...models.checkpoint import Checkpoint


class EdgebertTarget(LlvmTarget):
    """The EdgeBERT accelerator model, hosted by this CPU."""

    name = "edgebert"

    def check(self, options: CompileOptions) -> None:
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
        workloads = {length: chip_workload(mod, regions, suffix(length, options.seq_len), model.edgebert.num_labels,
                                           options.exit_thresholds is not None) for length in options.lengths}
        accelerator = {"workloads": {str(n): w.to_dict() for n, w in workloads.items()}, "config": raw_config}
        if options.rda_activations is not None:
            accelerator["activation_storage"] = _measure_activation_storage(checkpoint, options).to_dict()
        return mod, accelerator


def _measure_activation_storage(checkpoint: Checkpoint, options: CompileOptions) -> ActivationStorage:
    """Bytes per activation value with RDA buffers, on the first sentences of the model's task's training set."""
    edgebert = checkpoint.model.edgebert
    if edgebert.task is None or checkpoint.tokenizer_dir is None:
        raise EdgeBertError(f"{checkpoint.source}: --rda-activations measures on the model's task's sentences; "
                            "this checkpoint names no task or has no tokenizer")
    task = task_for(edgebert.task)
    examples = read_tsv(builtin_split(task, "train"), task, limit=CALIBRATION_SENTENCES)
    storage, _ = measure(checkpoint.model.eval(), checkpoint.tokenizer_dir / "tokenizer.json", examples,
                         options.seq_len, options.rda_activations, options.rda_granularity)
    return storage
