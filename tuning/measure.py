"""Where candidates are built and timed: in this process, or on remote devices through an RPC tracker.

Candidates are built in a pool of long-lived worker processes (`WorkerPoolBuilder`), each a fresh
interpreter started by TVM's popen pool, never a fork of this process: by the time it tunes, this
process runs TVM's and torch's thread pools, and a child of fork() keeps only the calling thread, so
a lock or a spinning pool held by another thread can hang it. MetaSchedule's LocalBuilder uses the
same workers but starts a new pool for every `build()`, and each new worker imports
`tvm.s_tir.tensor_intrin` (20-50 s) against a 30 s limit, so its builds time out; our pool starts
once per run, is warmed up before the first candidate, and each worker imports only TVM
(`build_worker`). The local runner times the kernel in this process, with MetaSchedule's own
argument filling and evaluator. Remote measurement is MetaSchedule's RPCRunner, whose worker
processes live as long as the runner.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import queue
import threading
import time
from collections.abc import Callable

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture
from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common, run_evaluator_common
from tvm.support.popen_pool import PopenWorker

from ..errors import EdgeBertError
from . import build_worker

# Each candidate: 3 timed calls of at least 50 ms together, twice; the median decides.
EVALUATOR = ms.runner.EvaluatorConfig(number=3, repeat=2, min_repeat_ms=50, enable_cpu_cache_flush=False)
# A candidate whose first call takes longer is a failed measurement, not timed further: the search
# samples pathological schedules (a softmax recomputing its sums per element ran for minutes), and
# in-process timing has no worker to kill.
MAX_FIRST_CALL_S = 1.0
# A candidate's build limit, counted from when its worker has it (the worker is already warm). The
# search does sample schedules that LLVM takes minutes to compile.
BUILD_TIMEOUT_S = 60.0
# The worker enforces the limit itself; a worker stuck past it by this much more (a call that never
# lets its timer thread run) is killed from here.
KILL_GRACE_S = 10.0


def default_build_workers() -> int:
    """As many as TVM's thread pool has threads (TVM_NUM_THREADS: the CLI sets it to this process's
    physical cores, a test worker to its share), else one per CPU this process may use."""
    threads = os.environ.get("TVM_NUM_THREADS", "")
    return int(threads) if threads.isdigit() and int(threads) > 0 else len(os.sched_getaffinity(0))


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"


class _BuildWorker(PopenWorker):
    """A popen worker that can also be killed while another thread waits on its answer."""

    def kill_process(self) -> None:
        # PopenWorker.kill() first closes the pipes, which blocks while a reader holds them; killing
        # the process ends that read (EOF), and recv() then cleans up and reports the death.
        if self._proc is not None:
            self._proc.kill()


def _warm_up(worker: _BuildWorker) -> None:
    worker.send(build_worker.ready)
    worker.recv()


@derived_object
class WorkerPoolBuilder(ms.builder.PyBuilder):
    """Build each candidate in one of `workers` long-lived worker processes, with a time limit.

    A worker that times out or dies is replaced (the next candidate restarts it, its warm-up not
    counted against that candidate's limit) and its candidate is a failed build; the search goes on.
    `build_fn(mod, target) -> tar path` runs in the worker (tests pass one that hangs or crashes);
    a worker still silent `kill_grace_s` after its limit is killed from here.
    Call `close()` when done: the workers live until then.
    """

    def __init__(self, workers: int | None = None, timeout_s: float = BUILD_TIMEOUT_S,
                 build_fn: Callable[[tvm.IRModule, tvm.target.Target], str] = build_worker.build,
                 kill_grace_s: float = KILL_GRACE_S) -> None:
        super().__init__()
        count = workers or default_build_workers()
        self.timeout_s = timeout_s
        self.kill_grace_s = kill_grace_s
        self.build_fn = build_fn
        self._idle: queue.SimpleQueue[_BuildWorker] = queue.SimpleQueue()
        self._threads = concurrent.futures.ThreadPoolExecutor(max_workers=count)
        started = [_BuildWorker() for _ in range(count)]
        # Warm up in parallel: each worker starts, imports TVM and answers before any candidate is sent.
        list(self._threads.map(_warm_up, started))
        for worker in started:
            self._idle.put(worker)

    def build(self, build_inputs: list[ms.builder.BuilderInput]) -> list[ms.builder.BuilderResult]:
        return list(self._threads.map(self._build_one, build_inputs))

    def _build_one(self, build_input: ms.builder.BuilderInput) -> ms.builder.BuilderResult:
        worker = self._idle.get()
        hung = threading.Event()
        try:
            if not worker.is_alive():  # after a timeout or a death: a new process, warmed up untimed
                worker.kill()
                _warm_up(worker)
            worker.send(self.build_fn, (build_input.mod, build_input.target), timeout=self.timeout_s)

            def kill_hung() -> None:
                hung.set()
                worker.kill_process()

            watchdog = threading.Timer(self.timeout_s + self.kill_grace_s, kill_hung)
            watchdog.start()
            try:
                return ms.builder.BuilderResult(worker.recv(), None)
            finally:
                watchdog.cancel()
        except TimeoutError:
            return ms.builder.BuilderResult(None, f"WorkerPoolBuilder: build timed out after {self.timeout_s:g} s")
        except ChildProcessError:
            what = f"hung past its {self.timeout_s:g} s limit and was killed" if hung.is_set() else "died"
            return ms.builder.BuilderResult(None, f"WorkerPoolBuilder: the build worker {what} (replaced)")
        except Exception as err:  # noqa: BLE001 (a candidate that fails to build is a measured failure)
            return ms.builder.BuilderResult(None, f"WorkerPoolBuilder: {_first_line(err)}")
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        self._threads.shutdown(wait=True)
        while not self._idle.empty():
            self._idle.get().kill()


@derived_object
class InProcessRunner(ms.runner.PyRunner):
    """Time each built candidate in this process with `time_evaluator` on random arguments."""

    def __init__(self, evaluator: ms.runner.EvaluatorConfig = EVALUATOR) -> None:
        super().__init__()
        self.evaluator = evaluator
        self.random_fill = tvm.get_global_func("tvm.contrib.random.random_fill_for_measure")

    def run(self, runner_inputs: list[ms.runner.RunnerInput]) -> list[ms.runner.RunnerFuture]:
        return [self._run_one(runner_input) for runner_input in runner_inputs]

    def _run_one(self, runner_input: ms.runner.RunnerInput) -> ms.runner.RunnerFuture:
        path = str(runner_input.artifact_path)
        try:
            module = tvm.runtime.load_module(path)
            device = tvm.runtime.device(str(runner_input.device_type), 0)
            args_info = [info.as_json() for info in runner_input.args_info]
            args = alloc_argument_common(self.random_fill, device, args_info, 1)
            start = time.perf_counter()
            module[module.entry_name](*args[0])
            device.sync()
            if (elapsed := time.perf_counter() - start) > MAX_FIRST_CALL_S:
                return LocalRunnerFuture(error_message=f"InProcessRunner: first call took {elapsed:.1f} s "
                                                       f"(limit {MAX_FIRST_CALL_S:g} s)")
            return LocalRunnerFuture(res=run_evaluator_common(module, device, self.evaluator, args))
        except Exception as err:  # noqa: BLE001
            return LocalRunnerFuture(error_message=f"InProcessRunner: {_first_line(err)}")


@dataclasses.dataclass(frozen=True)
class Tracker:
    """A TVM RPC tracker and the device key to request from it."""

    host: str
    port: int
    key: str

    @staticmethod
    def parse(address: str, key: str | None) -> "Tracker":
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise EdgeBertError(f"--rpc-tracker {address!r}: expected HOST:PORT")
        if not key:
            raise EdgeBertError("--rpc-tracker needs --rpc-key (the key the device servers registered with)")
        return Tracker(host, int(port), key)

    def config(self, timeout_s: int = 60) -> ms.runner.RPCConfig:
        return ms.runner.RPCConfig(tracker_host=self.host, tracker_port=self.port, tracker_key=self.key,
                                   session_priority=1, session_timeout_sec=timeout_s)

    def servers(self) -> int:
        """Servers registered under the key; none is an error (a tune would measure nothing)."""
        try:
            count = self.config().count_num_servers(allow_missing=True)
        except Exception as err:  # noqa: BLE001 (connection refused, timeout, bad reply)
            raise EdgeBertError(f"RPC tracker {self.host}:{self.port}: cannot connect ({_first_line(err)})") from None
        if count == 0:
            raise EdgeBertError(f"RPC tracker {self.host}:{self.port}: no server registered with key {self.key!r}")
        return count


def make_runner(tracker: Tracker | None) -> ms.runner.Runner:
    """In-process timing, or one RPC worker per server registered under the tracker's key."""
    if tracker is None:
        return InProcessRunner()
    return ms.runner.RPCRunner(rpc_config=tracker.config(), evaluator_config=EVALUATOR, max_workers=tracker.servers())
