"""Where candidates are built and timed: in this process, or on remote devices through an RPC tracker.

MetaSchedule's LocalBuilder starts fresh worker processes for every batch, and each imports
`tvm.s_tir.tensor_intrin` (~30-50 s here) against a 30 s limit, so every build times out. The
builder here compiles in this process (TVM is already imported); the local runner times the
kernel in this process too, with MetaSchedule's own argument filling and evaluator. Remote
measurement is MetaSchedule's RPCRunner, whose worker processes live as long as the runner.
"""

from __future__ import annotations

import dataclasses

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export
from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture
from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common, run_evaluator_common

from ..errors import EdgeBertError

# Each candidate: 3 timed calls of at least 50 ms together, twice; the median decides.
EVALUATOR = ms.runner.EvaluatorConfig(number=3, repeat=2, min_repeat_ms=50, enable_cpu_cache_flush=False)


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"


@derived_object
class InProcessBuilder(ms.builder.PyBuilder):
    """Build each candidate with `tvm.compile` here, exported as MetaSchedule's runners expect."""

    def build(self, build_inputs: list[ms.builder.BuilderInput]) -> list[ms.builder.BuilderResult]:
        results = []
        for build_input in build_inputs:
            try:
                path = default_export(default_build(build_input.mod, build_input.target, None))
                results.append(ms.builder.BuilderResult(path, None))
            except Exception as err:  # noqa: BLE001 (a candidate that fails to build is a measured failure)
                results.append(ms.builder.BuilderResult(None, f"InProcessBuilder: {_first_line(err)}"))
        return results


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
