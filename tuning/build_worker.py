"""What a build worker process runs: compile one tuning candidate and export it for the runner.

`measure.WorkerPoolBuilder` starts its workers as fresh interpreters (TVM's popen workers), never as
forks of the tuning process, and they import this module once. It imports only TVM: MetaSchedule's
`default_build` also imports `tvm.s_tir.tensor_intrin` (20-50 s), which candidates do not need (a
tensorized candidate already carries the intrinsic's body).
"""

from __future__ import annotations

import os
import tempfile

import tvm
from tvm.driver import build as tvm_build
from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
from tvm.support.tar import tar


def ready() -> int:
    """The warm-up call: once a worker answers it, its imports are done and it can take candidates."""
    return os.getpid()


def build(mod: tvm.IRModule, target: tvm.target.Target) -> str:
    """Compile a scheduled candidate (as MetaSchedule's default build does) and export it as a tar
    the runner loads; returns the tar's path."""
    lib = tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)
    path = os.path.join(tempfile.mkdtemp(prefix="edgebert-candidate-"), f"candidate.{tar.output_format}")
    lib.export_library(path, fcompile=tar)
    return path
