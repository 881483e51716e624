"""The cuda compilation pipeline: TVM's own (dlight's default GPU schedules), as a list of passes."""

from __future__ import annotations

import tvm
from tvm.relax.backend.cuda import pipeline as cuda


def cuda_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """relax.backend.cuda's default pipeline, unrolled so tuning can insert its records before
    dlight's `ApplyDefaultSchedule` (the last of the legalize passes)."""
    return (
        cuda.library_dispatch_passes(target)
        + cuda.legalize_passes(target)
        + cuda.dataflow_lower_passes(target)
        + cuda.finalize_passes(target)
    )
