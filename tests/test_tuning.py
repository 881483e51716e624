"""Tuning: resume after a kill, records applied at compile (checked against PyTorch), a corrupt
database refused untouched, measurement through a loopback RPC tracker, cuda compile-only, build
workers that hang or die replaced, and a tuner started inside a process whose thread pools are busy."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from tvm import te
from tvm.s_tir import meta_schedule as ms

from edgebert_tvm import cli
from edgebert_tvm.compiler import CompileOptions, compile_model
from edgebert_tvm.errors import EdgeBertError
from edgebert_tvm.models.checkpoint import load
from edgebert_tvm.tuning import build_worker
from edgebert_tvm.tuning.measure import Tracker, WorkerPoolBuilder
from edgebert_tvm.tuning.records import (DEFAULTS_FILE, RECORD_FILE, WORKLOAD_FILE, DefaultTiming, append_default,
                                         open_for_tuning, read_database, read_defaults)
from edgebert_tvm.tuning.tasks import model_tasks
from edgebert_tvm.tuning.tune import import_tensor_intrinsics

from .conftest import random_inputs, run_cli, torch_exits

pytestmark = pytest.mark.tuning

MODEL = ["albert-tiny", "--seq-len", "16"]
QUICK = ["--top-kernels", "1", "--population", "32"]


def _records(work_dir: Path) -> int:
    path = work_dir / RECORD_FILE
    return len(path.read_text().splitlines()) if path.exists() else 0


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_killed_run_resumes_and_records_apply_at_compile(tmp_path):
    work = tmp_path / "tune"
    args = ["tune", *MODEL, *QUICK, "--trials", "6", "-o", str(work)]
    proc = subprocess.Popen([sys.executable, "-m", "edgebert_tvm.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while _records(work) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = _records(work)
    assert before >= 3, "the tuner wrote no records before it was killed"

    assert cli.main(args) == 0  # resumes: same command
    assert _records(work) >= before
    report = json.loads((work / "tuning_report.json").read_text())
    assert [t["trials"] for t in report["tasks"]] == [6]  # trials from before the kill counted
    assert all(t["default_ms"] > 0 and t["best_ms"] > 0 and t["tuned_ms"] > 0 for t in report["tasks"])
    assert len(read_database(work).get_all_tuning_records()) == _records(work)

    # The back-to-back re-timing decides: a kernel whose best record lost to its default there keeps
    # the default, whatever the search measured.
    checkpoint = load("albert-tiny")
    defaults = read_defaults(work)
    assert len(defaults) == 1 and all(t.tuned_ms is not None for t in defaults.values())
    for key, timing in defaults.items():
        append_default(work, key, "slower", DefaultTiming(timing.ms, 2 * timing.ms))
    assert compile_model(checkpoint, CompileOptions(seq_len=16, tuning_records=work)).tuned == []

    # Without default timings every tuned record applies: the tuned kernels, layout rewrite included,
    # must compute what PyTorch computes. At two compiled lengths the records (tuned at 16) apply to
    # the 16 copy, and the 8 copy (other shapes: default schedules) computes what PyTorch computes too.
    (work / DEFAULTS_FILE).unlink()
    compiled = compile_model(checkpoint, CompileOptions(seq_len=16, lengths=(8, 16), tuning_records=work))
    assert len(compiled.tuned) == 1 and not compiled.unscheduled
    vm = tvm.relax.VirtualMachine(compiled.executable, tvm.cpu())
    for length, entry in ((8, "all_exits__len8"), (16, "all_exits")):
        inputs = random_inputs(1, length, 30000, seed=length)
        out = vm[entry](*[tvm.runtime.tensor(inputs[k]) for k in ("input_ids", "attention_mask", "token_type_ids")])
        np.testing.assert_allclose(out.numpy(), torch_exits(checkpoint.model, inputs), atol=1e-4)


def test_corrupt_database_is_refused_untouched(tmp_path):
    work = tmp_path / "tune"
    work.mkdir()
    (work / WORKLOAD_FILE).write_text('["0x1", "not base64 json"]\n')
    digest = _sha(work / WORKLOAD_FILE)
    proc = run_cli("tune", *MODEL, "--trials", "2", "-o", str(work))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "corrupt" in proc.stderr
    assert _sha(work / WORKLOAD_FILE) == digest
    proc = run_cli("compile", *MODEL, "--tuning-records", str(work), "-o", str(tmp_path / "A"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "A").exists()

    (work / WORKLOAD_FILE).write_text("garbage without newline")
    with pytest.raises(EdgeBertError, match="corrupt"):
        open_for_tuning(work)
    assert (work / WORKLOAD_FILE).read_text() == "garbage without newline"
    with pytest.raises(EdgeBertError, match="HOST:PORT"):
        Tracker.parse("localhost", "k")


def test_half_written_last_record_is_dropped_only(tmp_path):
    """What a kill mid-append leaves: complete lines, then the start of a record with no newline."""
    work = tmp_path / "tune"
    work.mkdir()
    (work / DEFAULTS_FILE).write_text('{"workload": "ab", "task": "t", "ms": 1.5}\n{"workload": "cd", "ta')
    open_for_tuning(work)
    assert (work / DEFAULTS_FILE).read_text() == '{"workload": "ab", "task": "t", "ms": 1.5}\n'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):  # OSError until something listens
        return True


def test_rpc_loopback_tracker_and_two_servers(tmp_path):
    port, key = _free_port(), "edgebert-test"
    python = [sys.executable, "-m"]
    # Each in its own session, stopped with its process group: a server runs its sessions in child
    # processes that would outlive it.
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    procs = [subprocess.Popen([*python, "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                               "--port-end", str(port + 1)], **quiet)]
    tracker = Tracker("127.0.0.1", port, key)

    def wait_for(ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except (EdgeBertError, OSError):  # not listening yet, or no server registered yet
                pass
            time.sleep(0.2)

    try:
        # A server that finds no tracker retries only 5 s later: start them once it listens.
        wait_for(lambda: _listening(port))
        for _ in range(2):
            server_port = _free_port()
            procs.append(subprocess.Popen(
                [*python, "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(server_port),
                 "--port-end", str(server_port + 1), "--tracker", f"127.0.0.1:{port}", "--key", key], **quiet))
        wait_for(lambda: tracker.servers() == 2)
        assert tracker.servers() == 2
        work = tmp_path / "tune"
        assert cli.main(["tune", *MODEL, "--top-kernels", "1", "--population", "32", "--trials", "4", "-o", str(work),
                         "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", key]) == 0
        records = read_database(work).get_all_tuning_records()
        assert len(records) == 4
        assert all(max(float(s) for s in r.run_secs) < 1.0 for r in records)  # measured, not failed
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_cuda_tasks_build_and_records_apply_compile_only(tmp_path, tiny_bert_dir):
    """No GPU here: tasks for cuda are extracted, a MetaSchedule cuda candidate builds, and a cuda
    record applies at compile while llvm records are ignored. Nothing runs on a GPU."""
    checkpoint = load(tiny_bert_dir)
    tasks, target = model_tasks(checkpoint, CompileOptions(target="cuda", seq_len=16))
    task = tasks[0]
    import_tensor_intrinsics(target)  # as `tune` does before its first TuneContext (3 s, not 40)
    context = ms.TuneContext(mod=task.mod, target=target, space_generator="post-order-apply",
                             search_strategy="evolutionary", task_name=task.name)
    space = context.generate_design_space()[0]
    builder = WorkerPoolBuilder(workers=1)
    try:
        (built,) = builder.build([ms.builder.BuilderInput(space.mod, target)])
    finally:
        builder.close()
    assert built.error_msg is None and Path(built.artifact_path).exists()

    work = tmp_path / "tune"
    database = open_for_tuning(work)
    workload = database.commit_workload(task.mod)
    # The run time cannot be measured without a GPU; the value only has to be a valid time.
    database.commit_tuning_record(ms.database.TuningRecord(space.trace, workload, [1e-3], target,
                                                           ms.arg_info.ArgInfo.from_prim_func(task.mod["main"])))
    compiled = compile_model(checkpoint, CompileOptions(target="cuda", seq_len=16, tuning_records=work))
    assert len(compiled.tuned) == 1
    llvm_only = compile_model(checkpoint, CompileOptions(target="llvm", seq_len=16, tuning_records=work))
    assert llvm_only.tuned == []


def _kernel(name: str) -> tvm.IRModule:
    a = te.placeholder((64, 64), name="a")
    return tvm.IRModule({"main": te.create_prim_func([a, te.compute((64, 64), lambda i, j: a[i, j] * 2, name=name)])})


def test_build_workers_that_hang_or_die_are_replaced():
    """A candidate that sleeps past the limit, one that hangs holding the GIL (the worker's own timer
    cannot fire: killed from the tuning process), and one that kills its worker each fail alone;
    the candidate after each builds in a fresh worker."""

    def build_fn(mod, target):  # local, so it is pickled by value into the worker
        text = mod.script()
        if "sleeps" in text:
            time.sleep(600)
        if "backtracks" in text:  # catastrophic backtracking: minutes inside one C call, GIL held
            re.match(r"(a+)+$", "a" * 64 + "b")
        if "crashes" in text:
            os._exit(3)
        return build_worker.build(mod, target)

    target = tvm.target.Target({"kind": "llvm"})
    builder = WorkerPoolBuilder(workers=1, timeout_s=2.0, build_fn=build_fn, kill_grace_s=1.0)
    try:
        names = ["fine", "sleeps", "fine", "backtracks", "fine", "crashes", "fine"]
        results = [builder.build([ms.builder.BuilderInput(_kernel(name), target)])[0] for name in names]
    finally:
        builder.close()
    errors = dict(zip(names[1::2], [r.error_msg for r in results[1::2]]))
    assert "timed out after 2 s" in errors["sleeps"]
    assert "hung past its 2 s limit and was killed" in errors["backtracks"]  # by the watchdog, 1 s later
    assert "died" in errors["crashes"]
    for built in results[0::2]:
        assert built.error_msg is None and Path(built.artifact_path).is_file()


def test_tuner_in_a_busy_process_gets_records_and_never_forks(tmp_path):
    """torch's and TVM's thread pools are busy in this process when the tuner starts (the state in
    which a fork() child hangs); the tuner still measures, and this process never forks."""
    forks = []
    os.register_at_fork(before=lambda: forks.append(threading.current_thread().name))
    stop = threading.Event()

    def torch_busy():
        x = torch.randn(256, 256)
        while not stop.is_set():
            x = torch.tanh(x @ x)

    a = te.placeholder((256, 256), name="a")
    k = te.reduce_axis((0, 256), name="k")
    matmul = te.create_prim_func([a, te.compute((256, 256), lambda i, j: te.sum(a[i, k] * a[k, j], axis=k))])
    sch = tvm.s_tir.Schedule(matmul)
    (i, _, _) = sch.get_loops(sch.get_sblock("compute"))
    sch.parallel(i)  # runs on TVM's thread pool
    kernel = tvm.compile(sch.mod, target="llvm")
    args = [tvm.runtime.tensor(np.ones((256, 256), "float32")) for _ in range(2)]

    def tvm_busy():
        while not stop.is_set():
            kernel(*args)

    busy = [threading.Thread(target=torch_busy), threading.Thread(target=tvm_busy)]
    for thread in busy:
        thread.start()
    try:
        time.sleep(0.5)
        work = tmp_path / "tune"
        assert cli.main(["tune", *MODEL, "--kernels", "layer_norm", "--top-kernels", "1", "--population", "32",
                         "--trials", "2", "-o", str(work)]) == 0
    finally:
        stop.set()
        for thread in busy:
            thread.join()
    records = read_database(work).get_all_tuning_records()
    assert len(records) == 2 and any(max(float(s) for s in r.run_secs) < 1.0 for r in records)
    assert forks == []


def _forks_in(path: Path) -> list[str]:
    """Calls of os.fork/forkpty and any use of multiprocessing or ProcessPoolExecutor (both fork
    by default on Linux) in one source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr in ("fork", "forkpty", "ProcessPoolExecutor"):
            found.append(f"{path.name}:{node.lineno}: {node.attr}")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found += [f"{path.name}:{node.lineno}: import {n}" for n in names if n.split(".")[0] == "multiprocessing"]
    return found


def test_no_fork_anywhere_in_the_package():
    import edgebert_tvm

    root = Path(edgebert_tvm.__file__).resolve().parent.parent
    sources = [p for folder in ("edgebert_tvm", "passes", "target", "tuning") for p in (root / folder).rglob("*.py")]
    assert len(sources) > 40
    assert [hit for path in sources for hit in _forks_in(path)] == []
