"""Tuning records: MetaSchedule's JSON database in a work directory, checked before anything uses it.

Beside it, `default_schedules.json` holds each kernel's default schedule timed by the same runner.
At the end of a tuning run each kernel's best record and its default are timed again, back to back
and interleaved (a busy machine shifts both alike), and that pair is appended as a new line; the
last line of a kernel decides. A kernel's tuned schedule is applied only if it measured faster
than its default, in that back-to-back pair where there is one. (The defaults
are kept out of MetaSchedule's database: its search replays the database's best traces, and a
replayed default trace fails in IndexMap deserialization in TVM 0.27.)

MetaSchedule appends one JSON line per workload and per measured schedule, so a run killed at any
point leaves every record it had committed, plus at most one half-written last line (no newline).
That line is the only damage tolerated: the tuner drops it, with a warning line, before appending
again, and compile ignores it. Anything else that does not parse is a corrupt database: one-line
error, file untouched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import tvm
import tvm_ffi
from tvm import relax
from tvm.s_tir import dlight
from tvm.s_tir import meta_schedule as ms

from ..errors import EdgeBertError

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
DEFAULTS_FILE = "default_schedules.json"


def _read_lines(path: Path) -> tuple[list[str], bool]:
    """Complete lines of `path`, and whether it ends in a half-written record (an interrupted append)."""
    if not path.exists():
        return [], False
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise EdgeBertError(f"{path}: cannot read tuning records ({err})") from None
    lines = text.split("\n")
    partial = lines[-1].strip()
    if partial and not partial.startswith(("[", "{")):  # not the start of a record: no append wrote this
        raise EdgeBertError(f"{path}:{len(lines)}: corrupt tuning database (not a MetaSchedule record); "
                            f"move it away or tune into a new directory")
    return [line for line in lines[:-1] if line.strip()], bool(partial)


def _parse(path: Path, lineno: int, line: str, valid) -> object:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        obj = None
    if obj is None or not valid(obj):
        raise EdgeBertError(f"{path}:{lineno}: corrupt tuning database (not a MetaSchedule record); "
                            f"move it away or tune into a new directory")
    return obj


def _is_workload(obj: object) -> bool:
    return isinstance(obj, list) and len(obj) == 2 and all(isinstance(x, str) for x in obj)


def _is_record(obj: object) -> bool:
    return isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], int) and isinstance(obj[1], list)


def workload_key(mod: tvm.IRModule) -> str:
    return f"{tvm_ffi.structural_hash(mod) & (2**64 - 1):016x}"


@dataclasses.dataclass(frozen=True)
class DefaultTiming:
    """A kernel's default-schedule latency (None: it failed to run) and, once a tuning run has
    re-timed them back to back, its best tuned schedule's latency from the same interleaved runs."""

    ms: float | None
    tuned_ms: float | None = None

    def tuned_wins(self, best_ms: float | None) -> bool:
        """Whether compile should use the tuned schedule whose search-time latency is `best_ms`."""
        if self.tuned_ms is not None:
            return self.ms is None or self.tuned_ms < self.ms
        return best_ms is not None and (self.ms is None or best_ms < self.ms)


def _is_time(value: object) -> bool:
    return value is None or isinstance(value, (int, float))


def read_defaults(work_dir: Path) -> dict[str, DefaultTiming]:
    """Each workload key's last default timing line."""
    path = Path(work_dir) / DEFAULTS_FILE
    lines, _ = _read_lines(path)
    valid = lambda o: isinstance(o, dict) and isinstance(o.get("workload"), str) and (  # noqa: E731
        _is_time(o.get("ms")) and _is_time(o.get("tuned_ms")))
    return {obj["workload"]: DefaultTiming(obj["ms"], obj.get("tuned_ms"))
            for obj in (_parse(path, n, line, valid) for n, line in enumerate(lines, 1))}


def append_default(work_dir: Path, key: str, name: str, timing: DefaultTiming) -> None:
    entry = {"workload": key, "task": name, "ms": timing.ms}
    if timing.tuned_ms is not None:
        entry["tuned_ms"] = timing.tuned_ms
    with open(Path(work_dir) / DEFAULTS_FILE, "a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def mean_ms(record: ms.database.TuningRecord) -> float | None:
    secs = [float(s) for s in record.run_secs or []]
    return sum(secs) / len(secs) * 1e3 if secs and max(secs) < FAILED_SECONDS else None


FAILED_SECONDS = 1e9  # MetaSchedule records a candidate that failed to build or run as 1e10 s


def read_database(work_dir: Path, target_kind: str | None = None) -> ms.database.MemoryDatabase:
    """The complete records of `work_dir` in memory; the files are not modified.

    With `target_kind` (applying records at compile time), only that kind's records, and only for
    kernels whose best record beat their default schedule (`DefaultTiming.tuned_wins`). Records
    of another kind of target never apply: a CPU schedule of a kernel is no schedule for the same kernel on a GPU.
    """
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        raise EdgeBertError(f"{work_dir}: not a tuning directory (run `edgebert-tvmc tune ... -o {work_dir}`)")
    paths = work_dir / WORKLOAD_FILE, work_dir / RECORD_FILE
    if not paths[0].exists():
        raise EdgeBertError(f"{work_dir}: no {WORKLOAD_FILE}; not a tuning directory")
    workload_lines, _ = _read_lines(paths[0])
    record_lines, _ = _read_lines(paths[1])
    defaults = read_defaults(work_dir)
    workloads = []
    for lineno, line in enumerate(workload_lines, 1):
        obj = _parse(paths[0], lineno, line, _is_workload)
        try:
            workloads.append(ms.database.Workload.from_json(obj))
        except Exception as err:  # noqa: BLE001 (TVM raises its own error types for bad IR)
            raise EdgeBertError(f"{paths[0]}:{lineno}: corrupt workload ({str(err).splitlines()[-1]})") from None
    records: list[list[ms.database.TuningRecord]] = [[] for _ in workloads]
    for lineno, line in enumerate(record_lines, 1):
        index, record = _parse(paths[1], lineno, line, _is_record)
        if not 0 <= index < len(workloads):
            raise EdgeBertError(f"{paths[1]}:{lineno}: record of workload {index}, but {paths[0].name} has "
                                f"{len(workloads)}; corrupt tuning database")
        try:
            records[index].append(ms.database.TuningRecord.from_json(record, workloads[index]))
        except Exception as err:  # noqa: BLE001
            raise EdgeBertError(f"{paths[1]}:{lineno}: corrupt tuning record ({str(err).splitlines()[-1]})") from None
    database = ms.database.MemoryDatabase()
    for workload, found in zip(workloads, records):
        if target_kind is not None:
            found = [r for r in found if r.target is not None and r.target.kind.name == target_kind]
            times = [t for t in map(mean_ms, found) if t is not None]
            timing = defaults.get(workload_key(workload.mod), DefaultTiming(None))
            if not times or not timing.tuned_wins(min(times)):
                continue
        committed = database.commit_workload(workload.mod)
        for record in found:
            database.commit_tuning_record(ms.database.TuningRecord(
                record.trace, committed, record.run_secs, record.target, record.args_info))
    return database


def open_for_tuning(work_dir: Path) -> ms.database.JSONDatabase:
    """The work directory's JSON database, to append to; created if missing, resumed if present.

    The whole database is checked first (`read_database`); only then is a half-written last line,
    left by a run that was killed mid-append, cut off so that new records start on a line of their own.
    """
    work_dir = Path(work_dir)
    if work_dir.exists() and not work_dir.is_dir():
        raise EdgeBertError(f"{work_dir}: exists and is not a directory")
    work_dir.mkdir(parents=True, exist_ok=True)
    if (work_dir / WORKLOAD_FILE).exists() or (work_dir / RECORD_FILE).exists():
        read_database(work_dir)
    read_defaults(work_dir)
    for path in (work_dir / WORKLOAD_FILE, work_dir / RECORD_FILE, work_dir / DEFAULTS_FILE):
        if _read_lines(path)[1]:
            text = path.read_bytes()
            with open(path, "r+b") as f:
                f.truncate(text.rfind(b"\n") + 1)
                os.fsync(f.fileno())
            print(f"edgebert-tvmc: warning: {path}: dropped a half-written last record (a killed run)", file=sys.stderr)
    return ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=True)


TUNED_ATTR = "edgebert.tuned"
SCHEDULED_ATTR = "tirx.is_scheduled"


def _scheduled(func: tvm.tirx.PrimFunc) -> bool:
    return bool(func.attrs is not None and func.attrs.get(SCHEDULED_ATTR, False))


@tvm.transform.module_pass(opt_level=0, name="edgebert.ApplyTuningRecords")
class ApplyTuningRecords:
    """MetaSchedule's `MetaScheduleApplyDatabase` on the records of a tuning directory: every
    PrimFunc with a record for the current target gets its best schedule and is marked scheduled
    (so the default schedules that follow leave it alone) and `edgebert.tuned`."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = Path(work_dir)
        read_database(self.work_dir)  # fail now, with the file's name and line, not mid-pipeline

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        target = tvm.target.Target.current(allow_none=False)
        with read_database(self.work_dir, target.kind.name):
            tuned = relax.transform.MetaScheduleApplyDatabase()(mod)
        for gv, func in tuned.functions_items():
            if isinstance(func, tvm.tirx.PrimFunc) and _scheduled(func) and not _scheduled(mod[gv]):
                tuned[gv] = func.with_attr(TUNED_ATTR, True)
        return tuned


def tuned_functions(mod: tvm.IRModule) -> list[str]:
    """Names of the PrimFuncs whose schedule came from tuning records."""
    return sorted(gv.name_hint for gv, func in mod.functions_items()
                  if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None and func.attrs.get(TUNED_ATTR, False))


def schedule_point(passes: list[tvm.transform.Pass]) -> int:
    """Index of the pass that gives kernels their default schedules (where tuned ones must go in): the
    target's `dlight.ApplyDefaultSchedule`, found by type (its rules are the defaults tuning times)."""
    for index, p in enumerate(passes):
        if isinstance(p, dlight.ApplyDefaultSchedule):
            return index
    raise EdgeBertError("this target's pipeline has no default-schedule pass; it cannot use tuning records")


def apply_records(passes: list[tvm.transform.Pass], work_dir: Path) -> list[tvm.transform.Pass]:
    """`passes` with the records of `work_dir` applied just before the default schedules."""
    point = schedule_point(passes)
    return [*passes[:point], ApplyTuningRecords(work_dir), *passes[point:]]
