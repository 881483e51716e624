"""Tuning tasks: the kernels of a model exactly as the default schedules would see them.

The model goes through the same front half as `compile` (import, `edgebert_passes(options)`, so
sparse, span-shortened or AdaptivFloat kernels are what gets tuned) and the target's lowering
passes up to its default-schedule pass; every distinct PrimFunc there is one task.
"""

from __future__ import annotations

import dataclasses

import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.analysis import estimate_tir_flops

from ..compiler import CompileOptions, graph_module
from ..target.targets import lowering_passes
from ..errors import EdgeBertError
from ..models.checkpoint import Checkpoint
from .records import schedule_point


@dataclasses.dataclass
class Task:
    """One kernel to tune: its workload (an IRModule with `main`), its call sites in the module
    (MetaSchedule's task weight) and FLOPs per call."""

    name: str
    mod: tvm.IRModule
    weight: int
    flops: float


def unscheduled_module(checkpoint: Checkpoint, options: CompileOptions) -> tuple[tvm.IRModule, tvm.target.Target]:
    """The module as it reaches the target's default-schedule pass."""
    mod, target, *_ = graph_module(checkpoint, options)
    passes = lowering_passes(target)
    with target:
        mod = tvm.transform.Sequential(passes[: schedule_point(passes)])(mod)
    return mod, target


def _reads_indices(func: tvm.tirx.PrimFunc) -> bool:
    """Integer inputs are indices (token ids in an embedding gather): measured on random data they
    would read out of bounds, which crashes the process that times them. Gathers have no FLOPs
    to tune anyway; they keep their default schedule."""
    inputs = ms.arg_info.ArgInfo.from_prim_func(func)[:-1]  # destination-passing style: the output is last
    return any(str(arg.dtype).startswith(("int", "uint")) for arg in inputs)


def extract_tasks(mod: tvm.IRModule, target: tvm.target.Target) -> list[Task]:
    """Distinct PrimFuncs of `mod` (structurally equal kernels are one task), heaviest first."""
    tasks = []
    for extracted in ms.relax_integration.extract_tasks(mod, target):
        workload = extracted.dispatched[0]
        if workload["main"].attrs.get("tirx.is_scheduled", False) or _reads_indices(workload["main"]):
            continue  # scheduled by an earlier pass, or a gather (see _reads_indices)
        flops = float(estimate_tir_flops(workload))
        tasks.append(Task(extracted.task_name, workload, int(extracted.weight), flops))
    if not tasks:
        raise EdgeBertError("the model has no kernel to tune")
    return sorted(tasks, key=lambda t: (-t.weight * t.flops, t.name))


def model_tasks(checkpoint: Checkpoint, options: CompileOptions) -> tuple[list[Task], tvm.target.Target]:
    mod, target = unscheduled_module(checkpoint, options)
    return extract_tasks(mod, target), target
