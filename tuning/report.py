"""The per-task table at the end of a tuning run, and the same as JSON (`tuning_report.json`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..target.cpu.host import describe_host
from .records import FAILED_SECONDS
from .tune import TaskResult, TuneOptions


def model_ms(results: list[TaskResult], tuned: bool) -> float | None:
    """Sum of call sites x latency: a proxy for one run of every Relax function (`main` and
    `all_exits` both count; ALBERT's shared layer counts once), without the VM's overheads."""
    times = [r.weight * (r.compiled_ms if tuned else r.default_ms) for r in results
             if r.default_ms is not None and r.compiled_ms is not None]
    return sum(times) if times else None


def _ms(value: float | None) -> str:
    if value is not None and value >= FAILED_SECONDS * 1e3:
        return f"{'failed':>10s}"
    return f"{value:10.4f}" if value is not None else f"{'-':>10s}"


def format_table(results: list[TaskResult], name_width: int = 48) -> str:
    lines = [f"{'kernel':{name_width}s} {'sites':>5s} {'MFLOP':>9s} {'default ms':>10s} {'best tuned':>10s} "
             f"{'re-timed':>10s} {'compiled':>10s} {'speedup':>7s} {'trials':>6s}"]
    for r in results:
        name = r.name if len(r.name) <= name_width else r.name[: name_width - 3] + "..."
        speedup = f"{r.speedup:6.2f}x" if r.speedup is not None else f"{'-':>7s}"
        lines.append(f"{name:{name_width}s} {r.weight:5d} {r.flops / 1e6:9.2f} {_ms(r.default_ms)} {_ms(r.best_ms)} "
                     f"{_ms(r.tuned_ms)} {_ms(r.compiled_ms)} {speedup} {r.trials:6d}")
    before, after = model_ms(results, tuned=False), model_ms(results, tuned=True)
    if before and after:
        lines.append(f"{'all kernels (call sites x latency)':{name_width}s} {'':5s} "
                     f"{sum(r.weight * r.flops for r in results) / 1e6:9.1f} {_ms(before)} {'':10s} {'':10s} {_ms(after)} "
                     f"{before / after:6.2f}x {sum(r.trials for r in results):6d}")
    lines.append("(default: the schedule `compile` uses without records, re-timed beside the best record; best tuned: "
                 "MetaSchedule's best during the search; re-timed: that record timed back to back with the default; "
                 "compiled: what `compile --tuning-records` uses, the tuned schedule only where it beat the default)")
    return "\n".join(lines)


def report_json(model: str, target: str, options: TuneOptions, results: list[TaskResult]) -> dict[str, Any]:
    return {
        "model": model, "target": target, "machine": describe_host(), "trials_per_task": options.trials,
        "time_budget_min": options.time_budget_min,
        "rpc_tracker": dataclasses.asdict(options.tracker) if options.tracker else None,
        "model_kernel_ms": {"default": model_ms(results, False), "tuned": model_ms(results, True)},
        "tasks": [dataclasses.asdict(r) | {"compiled_ms": r.compiled_ms, "speedup": r.speedup} for r in results],
    }
