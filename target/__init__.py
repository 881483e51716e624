"""Compilation targets: the host CPU (llvm), NVIDIA GPUs (cuda), and (later) the edgebert accelerator."""

from .targets import TARGET_NAMES, lowering_passes, lowering_pipeline, make_target, run_device

__all__ = ["TARGET_NAMES", "lowering_passes", "lowering_pipeline", "make_target", "run_device"]
