"""Compilation targets: the host CPU (llvm), NVIDIA GPUs (cuda) and the EdgeBERT accelerator (edgebert).

`registry.TARGETS` holds one object per target (`targets.CompileTarget`: the options it accepts, what
runs before lowering, its lowering); `targets.py` also builds TVM targets, the lowering per kind and
an artifact's run device; `cpu/`, `gpu.py` and `edgebert/` hold what is particular to each. Nothing is
imported here, so that loading an artifact pulls in no accelerator model (which needs PyTorch).
"""

TARGET_NAMES = ("llvm", "cuda", "edgebert")  # `--target`; registry.py holds one object each
