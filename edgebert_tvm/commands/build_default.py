"""`edgebert-tvmc build-default`: a trained built-in's recipe, run once into the cache."""

from __future__ import annotations

import argparse

from ..models.builtins import shipped_dir
from ..training.recipe import build_trained_builtin


def execute(args: argparse.Namespace) -> None:
    directory = build_trained_builtin(args.name)
    shipped = shipped_dir(args.name)
    ships = "" if shipped is None else (f" (the name {args.name} loads the packed copy in {shipped}; "
                                        f"`edgebert-tvmc pack {directory} -o {shipped} --force` replaces it)")
    print(f"{args.name}: {directory}{ships}")
