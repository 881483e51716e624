"""Every target by its `--target` name."""

from __future__ import annotations

import tvm

from ..errors import EdgeBertError, InternalError
from . import TARGET_NAMES
from .edgebert.pipeline import EdgebertTarget
from .targets import CompileTarget, CudaTarget, LlvmTarget

TARGETS: dict[str, CompileTarget] = {t.name: t for t in (LlvmTarget(), CudaTarget(), EdgebertTarget())}
if tuple(TARGETS) != TARGET_NAMES:
    raise InternalError(f"targets {tuple(TARGETS)} are not the names the command line offers, {TARGET_NAMES}")


def compile_target(name: str) -> CompileTarget:
    if name not in TARGETS:
        raise EdgeBertError(f"unknown target {name!r} (choose from: {', '.join(TARGET_NAMES)})")
    return TARGETS[name]


def make_target(name: str, num_cores: int | None = None, mcpu: str | None = None) -> tvm.target.Target:
    """The TVM target of `--target name` (and `--mcpu`)."""
    return compile_target(name).tvm_target(num_cores, mcpu)
