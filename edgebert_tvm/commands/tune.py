"""`edgebert-tvmc tune`: MetaSchedule on the kernels `compile` would build for the same options, records
in a resumable work directory, and a report of each kernel's default against its best."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..errors import EdgeBertError
from ..fileio import write_json_atomic
from ..models.checkpoint import load
from ..target.cpu.host import check_mcpu, check_runs_here
from ..target.registry import make_target
from ..tuning import report as tuning_report
from ..tuning.measure import Tracker
from ..tuning.records import open_for_tuning
from ..tuning.tasks import model_tasks
from ..tuning.tune import TuneOptions, tune
from .compile import compile_options


def execute(args: argparse.Namespace) -> None:
    if args.rpc_key and not args.rpc_tracker:
        raise EdgeBertError("--rpc-key needs --rpc-tracker HOST:PORT")
    if args.time_budget is not None and not (math.isfinite(args.time_budget) and args.time_budget > 0):
        raise EdgeBertError(f"--time-budget must be a positive number of minutes, got {args.time_budget}")
    tracker = Tracker.parse(args.rpc_tracker, args.rpc_key) if args.rpc_tracker else None
    if tracker is not None:
        tracker.servers()  # fail now if nothing can measure
    if args.mcpu is not None and tracker is None:  # the kernels are timed here
        check_mcpu(args.mcpu)
        check_runs_here(make_target(args.target, args.num_cores, args.mcpu), "tune")
    work_dir = Path(args.output)
    open_for_tuning(work_dir)  # a corrupt database fails here, untouched, before the long work
    checkpoint = load(args.model)
    tasks, target = model_tasks(checkpoint, compile_options(args))
    if args.kernels is not None:
        tasks = [t for t in tasks if args.kernels.search(t.name)]
        if not tasks:
            raise EdgeBertError(f"no kernel of {checkpoint.source} matches --kernels {args.kernels.pattern!r}")
    tasks = tasks[: args.top_kernels]  # heaviest (calls x FLOPs) first
    print(f"{checkpoint.source}: {len(tasks)} kernels to tune for {args.target}, {args.trials} trials each "
          f"-> {work_dir}", flush=True)
    options = TuneOptions(trials=args.trials, work_dir=work_dir, time_budget_min=args.time_budget, tracker=tracker,
                          population=args.population)
    results = tune(tasks, target, options)
    print(tuning_report.format_table(results))
    write_json_atomic(work_dir / "tuning_report.json", tuning_report.report_json(checkpoint.source, args.target, options, results))
    print(f"records: {work_dir} (apply with `edgebert-tvmc compile {args.model} --tuning-records {work_dir} ...`)")
