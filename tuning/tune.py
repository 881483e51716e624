"""The tuning loop: MetaSchedule's evolutionary search with its XGBoost cost model, task by task, in
rounds, resumable, within a time budget.

Before searching, each task's default schedule (what `compile` would use) is measured with the
same runner. At the end (also when the time budget runs out) every task's best record and its
default are built again and timed back to back, interleaved, `RETIME_PAIRS` times; the medians
are the report's "default" and "tuned" columns and decide, at compile time, whether the tuned
schedule replaces the default (records.py). Search-time latencies alone cannot decide that: the
default was timed once, perhaps at another load than the candidates.
Tasks are then tuned in rounds of `trials_per_round` trials each, the kernels that take the most
of a model run first, so a time budget is spent where it matters. Each round is one MetaSchedule
run on one task with one shared cost model; every measured candidate is appended to the JSON
database as it is measured, so a killed run resumes from the records it left (trials already in
the database count towards `--trials`).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import tvm
from tqdm import tqdm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from ..target.targets import lowering_passes
from ..errors import EdgeBertError
from .measure import Tracker, WorkerPoolBuilder, make_runner
from .records import (FAILED_SECONDS, DefaultTiming, append_default, mean_ms, open_for_tuning, read_defaults,
                      schedule_point, workload_key)
from .tasks import Task



@dataclasses.dataclass
class TuneOptions:
    trials: int  # per task, default-schedule record not included
    work_dir: Path
    time_budget_min: float | None = None
    tracker: Tracker | None = None
    trials_per_round: int = 32
    population: int = 512  # evolutionary search population per round (MetaSchedule's default)
    build_workers: int | None = None  # candidate build processes (default: measure.default_build_workers)
    seed: int = 0


RETIME_PAIRS = 5


@dataclasses.dataclass
class TaskResult:
    name: str
    weight: int
    flops: float
    default_ms: float | None
    best_ms: float | None  # MetaSchedule's best during the search
    tuned_ms: float | None  # that record re-timed back to back with the default (None: not re-timed)
    trials: int

    @property
    def compiled_ms(self) -> float | None:
        """What `compile --tuning-records` uses: the tuned schedule only if it beat the default."""
        timing = DefaultTiming(self.default_ms, self.tuned_ms)
        if not timing.tuned_wins(self.best_ms):
            return self.default_ms
        return self.tuned_ms if self.tuned_ms is not None else self.best_ms

    @property
    def speedup(self) -> float | None:
        if self.default_ms is None or self.compiled_ms is None:
            return None
        return self.default_ms / self.compiled_ms


def default_schedule(task: Task, target: tvm.target.Target) -> tvm.s_tir.Schedule | None:
    """The schedule the target's default-schedule pass gives this kernel (first rule that applies)."""
    passes = lowering_passes(target)
    rules = passes[schedule_point(passes)].rules
    func = task.mod["main"]
    for rule in rules:
        sch = rule.apply(func, target, False)
        if isinstance(sch, list):
            sch = sch[0] if sch else None
        if sch is not None:
            return sch
    return None


class TaskState:
    """A task's records: trials so far, default and best latency."""

    def __init__(self, task: Task, database: ms.database.Database, defaults: dict[str, float | None]) -> None:
        self.task = task
        self.key = workload_key(task.mod)
        self.workload = database.commit_workload(task.mod)
        self.default_recorded = self.key in defaults
        timing = defaults.get(self.key, DefaultTiming(None))
        self.default_ms, self.tuned_ms = timing.ms, timing.tuned_ms
        self.logger = None
        self.best_ms: float | None = None
        self.trials = 0
        self.exhausted = False
        for record in database.get_all_tuning_records():
            if record.workload.same_as(self.workload):
                self.add(mean_ms(record))

    def add(self, ms_: float | None) -> None:
        self.trials += 1
        if ms_ is not None and (self.best_ms is None or ms_ < self.best_ms):
            self.best_ms = ms_

    def result(self) -> TaskResult:
        t = self.task
        return TaskResult(t.name, t.weight, t.flops, self.default_ms, self.best_ms, self.tuned_ms, self.trials)


@derived_object
class _Progress(ms.measure_callback.PyMeasureCallback):
    """Counts measured candidates into the task's state and the progress bar."""

    def __init__(self, state: TaskState, bar: tqdm) -> None:
        super().__init__()
        self.state = state
        self.bar = bar
        self.measured = 0

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        for result in runner_results:
            secs = [float(x) for x in result.run_secs or []]
            self.state.add(sum(secs) / len(secs) * 1e3 if secs and max(secs) < FAILED_SECONDS else None)
            self.measured += 1
            self.bar.update(1)
        self.bar.set_postfix_str(f"{self.state.task.name[:40]} best {self.state.best_ms or float('nan'):.3f} ms")


def device_type(target: tvm.target.Target) -> str:
    return "cuda" if target.kind.name == "cuda" else "cpu"


def _build(state: TaskState, sch: tvm.s_tir.Schedule, target, builder, what: str) -> ms.runner.RunnerInput:
    (built,) = builder.build([ms.builder.BuilderInput(sch.mod, target)])
    if built.error_msg:
        raise EdgeBertError(f"{state.task.name}: the {what} schedule does not build ({built.error_msg.splitlines()[-1]})")
    args_info = ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
    return ms.runner.RunnerInput(built.artifact_path, device_type(target), args_info)


def _time(inputs: list[ms.runner.RunnerInput], runner, name: str) -> list[float | None]:
    """One timing (ms) per input, in order; None for an input that failed to run."""
    times = []
    for future in runner.run(inputs):
        result = future.result()
        if result.error_msg:
            tqdm.write(f"{name}: a schedule failed to run ({result.error_msg.splitlines()[-1]})")
        secs = [float(x) for x in result.run_secs or []]
        times.append(sum(secs) / len(secs) * 1e3 if secs and not result.error_msg else None)
    return times


def _cleanup(inputs: list[ms.runner.RunnerInput]) -> None:
    for runner_input in inputs:
        shutil.rmtree(Path(runner_input.artifact_path).parent, ignore_errors=True)


def _measure_default(state: TaskState, target, work_dir: Path, builder, runner) -> None:
    """Time the default schedule with the tuning runner, once per work directory."""
    if state.default_recorded:
        return
    sch = default_schedule(state.task, target)
    if sch is None:
        return
    inputs = [_build(state, sch, target, builder, "default")]
    (state.default_ms,) = _time(inputs, runner, state.task.name)
    _cleanup(inputs)
    state.default_recorded = True
    append_default(work_dir, state.key, state.task.name, DefaultTiming(state.default_ms))


def _median(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else float(np.median(values))


def _retime(state: TaskState, target, work_dir: Path, database, builder, runner) -> None:
    """Time the best record and the default back to back, interleaved, and record both medians (a
    best record that no longer builds or runs is recorded as failed, so it never replaces the default)."""
    default = default_schedule(state.task, target)
    best = database.query_schedule(state.task.mod, target, state.task.name)
    if default is None or best is None or state.best_ms is None:
        return
    inputs = [_build(state, default, target, builder, "default")]
    try:
        inputs.append(_build(state, best, target, builder, "tuned"))
        pairs = [_time(inputs, runner, state.task.name) for _ in range(RETIME_PAIRS)]
        tuned = _median([t for _, t in pairs])
    except EdgeBertError as err:
        tqdm.write(str(err))
        pairs, tuned = [_time(inputs, runner, state.task.name)], None
    _cleanup(inputs)
    state.default_ms = _median([times[0] for times in pairs])
    state.tuned_ms = tuned if tuned is not None else FAILED_SECONDS * 1e3
    append_default(work_dir, state.key, state.task.name, DefaultTiming(state.default_ms, state.tuned_ms))


def _tune_round(state: TaskState, trials: int, target, options: TuneOptions, database, builder, runner,
                cost_model, bar: tqdm, round_index: int) -> int:
    """One MetaSchedule run of `trials` candidates on one task; returns how many were measured."""
    task = state.task
    context = ms.TuneContext(mod=task.mod, target=target, space_generator="post-order-apply",
                             search_strategy=ms.search_strategy.EvolutionarySearch(
                                 population_size=options.population, init_min_unmeasured=min(50, options.population)),
                             task_name=task.name, logger=state.logger,
                             rand_state=options.seed * 7919 + round_index, num_threads="physical").clone()
    progress = _Progress(state, bar)
    ms.tune.tune_tasks(tasks=[context], task_weights=[1.0], work_dir=str(options.work_dir),
                       max_trials_global=trials, max_trials_per_task=trials, num_trials_per_iter=trials,
                       builder=builder, runner=runner, database=database, cost_model=cost_model,
                       measure_callbacks=[*ms.MeasureCallback.create("default"), progress],
                       task_scheduler="round-robin")
    return progress.measured


# Source "files" no module is loaded from, on the stack while the package imports: `inspect.getmodule`
# answers None for them, but only after scanning all of sys.modules, every time ("<string>":
# TVMScript's evaluator runs compiled strings).
_MODULELESS_FILES = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>", "<ast>", "<string>")


def _mark_moduleless_files() -> None:
    """Record `_MODULELESS_FILES` and the files of the caller's frames that belong to no module (a
    notebook cell, code a test runner executes from a string such as pytest-xdist's remote.py) as
    having none, so that `inspect.getmodule` stops rescanning sys.modules for them."""
    for name in _MODULELESS_FILES:
        inspect.modulesbyfile.setdefault(name, "")  # sys.modules.get("") is None, as the scan finds
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if name not in inspect.modulesbyfile and inspect.getmodule(frame, name) is None:
            inspect.modulesbyfile[name] = ""
        frame = frame.f_back


# The tensor intrinsics an llvm target's schedule rules can name; the package also registers cuda's
# and rocm's (2.7 s of its 2.9), which only a GPU target needs.
_CPU_INTRINSICS = ("x86", "arm_cpu", "riscv_cpu", "hexagon")


def import_tensor_intrinsics(target: tvm.target.Target) -> None:
    """Register the tensor intrinsics `target` can use (every TuneContext imports
    `tvm.s_tir.tensor_intrin`, whose package registers every target's) in 0.3 s for llvm, 3 s for
    cuda, instead of 25-40 s.

    Each of the package's ~500 TVMScript functions calls `inspect.stack()`, which looks up the module
    of every frame; the frames of importlib and of parsed ASTs belong to no module, and each such
    lookup scans all of sys.modules (torch and transformers make it thousands long). Recording in
    `inspect.modulesbyfile` that those files have no module (`_mark_moduleless_files`) makes each
    lookup a dictionary hit, 10x faster. Then only the target's intrinsics are registered:
    the package is entered without running its `__init__`, which only imports every submodule, so
    TuneContext's import finds it and only the submodules for the target are imported.
    """
    _mark_moduleless_files()
    package = "tvm.s_tir.tensor_intrin"
    if package not in sys.modules:
        sys.modules[package] = importlib.util.module_from_spec(importlib.util.find_spec(package))
    for name in _CPU_INTRINSICS if target.kind.name == "llvm" else ("cuda", "rocm", *_CPU_INTRINSICS):
        importlib.import_module(f"{package}.{name}")


def tune(tasks: list[Task], target: tvm.target.Target, options: TuneOptions) -> list[TaskResult]:
    """Tune `tasks` into `options.work_dir`; returns each task's default and best latency and trials."""
    import_tensor_intrinsics(target)
    global_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    global_logger.setLevel(logging.WARNING)  # the per-task logs go to work_dir/logs
    # MetaSchedule's logging config lists this logger's current handlers by name; one left by an earlier
    # run in this process (or by a host application) has no entry in the new config and breaks it.
    global_logger.handlers.clear()
    database = open_for_tuning(options.work_dir)
    builder = WorkerPoolBuilder(workers=options.build_workers)
    try:
        return _tune(tasks, target, options, database, builder, make_runner(options.tracker))
    finally:
        builder.close()


def _tune(tasks: list[Task], target: tvm.target.Target, options: TuneOptions, database, builder,
          runner) -> list[TaskResult]:
    """The run itself, with the build workers up: defaults timed, rounds until trials or budget, re-timing."""
    start = time.monotonic()
    deadline = start + options.time_budget_min * 60 if options.time_budget_min else None
    defaults = read_defaults(options.work_dir)
    states = [TaskState(task, database, defaults) for task in tasks]
    for state, logger in zip(states, ms.logging.get_loggers_from_work_dir(str(options.work_dir), [t.name for t in tasks])):
        state.logger = logger
    for state in tqdm(states, desc="default schedules", unit="task", leave=False):
        _measure_default(state, target, options.work_dir, builder, runner)
    # The kernels that take most of a model run first (by measured default time, else FLOPs).
    states.sort(key=lambda s: -(s.task.weight * (s.default_ms if s.default_ms is not None else s.task.flops * 1e-9)))
    cost_model = ms.CostModel.create("xgb", num_tuning_cores=target.attrs.get("num-cores", 1), tree_method="auto")
    remaining = sum(max(options.trials - s.trials, 0) for s in states)
    with tqdm(total=remaining, desc="tuning", unit="trial") as bar:
        round_index = 0
        while any(not s.exhausted and s.trials < options.trials for s in states):
            for state in states:
                if state.exhausted or state.trials >= options.trials:
                    continue
                if deadline is not None and time.monotonic() >= deadline:
                    bar.write(f"time budget of {options.time_budget_min:g} min reached; rerun to continue")
                    return _finish(states, target, options.work_dir, database, builder, runner)
                trials = min(options.trials_per_round, options.trials - state.trials)
                measured = _tune_round(state, trials, target, options, database, builder, runner, cost_model,
                                       bar, round_index)
                if measured == 0:  # the search space has nothing new to offer
                    state.exhausted = True
                    bar.total -= options.trials - state.trials
                    bar.refresh()
                round_index += 1
    return _finish(states, target, options.work_dir, database, builder, runner)


def _finish(states: list[TaskState], target, work_dir: Path, database, builder, runner) -> list[TaskResult]:
    for state in tqdm(states, desc="re-timing best vs default", unit="task", leave=False):
        _retime(state, target, work_dir, database, builder, runner)
    return [s.result() for s in states]
