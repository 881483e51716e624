"""Where candidates are built and timed: in this process, or on remote devices through an RPC tracker.

MetaSchedule's LocalBuilder starts fresh worker processes for every batch, and each imports
`tvm.s_tir.tensor_intrin` (~30-50 s here) against a 30 s limit, so every build times out. The
builder here compiles in a child forked from this process (TVM already imported, a time limit
that can be enforced); the local runner times the kernel in this process, with MetaSchedule's own
argument filling and evaluator. Remote
measurement is MetaSchedule's RPCRunner, whose worker processes live as long as the runner.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export
from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture
from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common, run_evaluator_common

from ..errors import EdgeBertError

# Each candidate: 3 timed calls of at least 50 ms together, twice; the median decides.
EVALUATOR = ms.runner.EvaluatorConfig(number=3, repeat=2, min_repeat_ms=50, enable_cpu_cache_flush=False)
# A candidate whose first call takes longer is a failed measurement, not timed further: the search
# samples pathological schedules (a softmax recomputing its sums per element ran for minutes), and
# in-process timing has no worker to kill.
MAX_FIRST_CALL_S = 1.0


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"


BUILD_TIMEOUT_S = 60.0


def _build_and_export(build_input: ms.builder.BuilderInput, pipe) -> None:
    """In the forked child: compile, export, send the path (or the error) back, and leave at once."""
    try:
        pipe.send((default_export(default_build(build_input.mod, build_input.target, None)), None))
    except Exception as err:  # noqa: BLE001 (a candidate that fails to build is a measured failure)
        pipe.send((None, f"ForkedBuilder: {_first_line(err)}"))
    finally:
        pipe.close()
        os._exit(0)  # no atexit handlers or finalizers of the parent's objects in the child


@derived_object
class ForkedBuilder(ms.builder.PyBuilder):
    """Build each candidate with `tvm.compile` in a child forked from this process (TVM is already
    imported there, so no worker pays the import), killed after `timeout_s`: the search does sample
    schedules that LLVM takes minutes to compile, and a build in this process could not be stopped."""

    def __init__(self, timeout_s: float = BUILD_TIMEOUT_S) -> None:
        super().__init__()
        self.timeout_s = timeout_s

    def build(self, build_inputs: list[ms.builder.BuilderInput]) -> list[ms.builder.BuilderResult]:
        return [self._build_one(build_input) for build_input in build_inputs]

    def _build_one(self, build_input: ms.builder.BuilderInput) -> ms.builder.BuilderResult:
        context = multiprocessing.get_context("fork")
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=_build_and_export, args=(build_input, sender), daemon=True)
        child.start()
        sender.close()
        try:
            if receiver.poll(self.timeout_s):
                path, error = receiver.recv()
            else:
                path, error = None, f"ForkedBuilder: build timed out after {self.timeout_s:g} s"
        except EOFError:  # the child died without a word (a crash in the compiler)
            path, error = None, "ForkedBuilder: the build process died"
        finally:
            child.kill()
            child.join()
            receiver.close()
        return ms.builder.BuilderResult(path, error)


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
