"""`edgebert-tvmc pack`: a checkpoint with AdaptivFloat-8 weights plus nonzero masks (models/packed.py),
its exits calibrated again for those weights."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..models.checkpoint import load, save
from ..models.packed import PACKED_WEIGHTS_NAME, round_weights_
from ..training.recipe import recalibrate_exits
from .compile import check_replaceable


def execute(args: argparse.Namespace) -> None:
    out = Path(args.output)
    check_replaceable(out, "config.json", "a checkpoint", args.force)
    checkpoint = load(args.model)
    before = checkpoint.model.edgebert.exit_thresholds
    round_weights_(checkpoint.model)
    if recalibrate_exits(checkpoint):  # the deployed weights are the AF8 ones: calibrate on those
        print(f"exit threshold recalibrated for the AF8 weights on the recipe's held-out sentences: {before} -> "
              f"{checkpoint.model.edgebert.exit_thresholds}")
    save(checkpoint, out, pack=True)
    fp32 = sum(v.numel() * 4 for k, v in checkpoint.model.state_dict().items() if k != "span_z")
    packed_bytes = (out / PACKED_WEIGHTS_NAME).stat().st_size
    print(f"packed {checkpoint.source} -> {out}: {packed_bytes / 1e6:.1f} MB of weights "
          f"({fp32 / packed_bytes:.1f}x smaller than float32's {fp32 / 1e6:.1f} MB)")
