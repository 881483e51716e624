"""`edgebert-tvmc demo`: the main job (edgebert_tvm/demo.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..demo import run_demo


def execute(args: argparse.Namespace) -> None:
    run_demo(Path(args.workdir), sentences=args.sentences)
