"""Translated blocks kept on disk, so that a fresh process (every `edgebert-tvmc compile`) skips
torch.export for the block shapes it has translated before.

An export and translation by TVM's Relax torch frontend costs 0.4-1 s a block and gives the same
function in every process that imports one block shape of one model (`importer._Exporter`). That
function, weights unbound, is saved with TVM's own serializer (`tvm.ir.save_json`, no pickle) under
`$EDGEBERT_TVM_CACHE/translations`. An entry's name digests the importer's in-process key together
with what a translation depends on beyond the model: the source of the importer and of the model
code, and the torch, transformers and TVM versions. The cache only ever saves time: an unreadable
entry is a miss and is rewritten, and a cache that cannot be written is not written.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import torch
import transformers
import tvm
from tvm import relax

from .errors import EdgeBertError
from .fileio import cache_dir, write_json_atomic

FORMAT_VERSION = 1
# What a block's forward and its translation run, besides torch, transformers and TVM.
_SOURCES = ("importer.py", "contract.py", "models/*.py")


@functools.cache
def _toolchain() -> str:
    digest = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(p for pattern in _SOURCES for p in root.glob(pattern)):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for version in (torch.__version__, transformers.__version__, tvm.__version__):
        digest.update(version.encode())
    return digest.hexdigest()


def entry_path(key: tuple) -> Path:
    """Where the translation of `key` (`importer._Exporter.function`'s key) is kept."""
    digest = hashlib.sha256(repr((FORMAT_VERSION, _toolchain(), key)).encode()).hexdigest()[:32]
    return cache_dir() / "translations" / f"{digest}.json"


def load(key: tuple) -> tuple[relax.Function, dict[str, str]] | None:
    """The kept translation of `key` and its parameter names, or None if there is none to read."""
    try:
        data = json.loads(entry_path(key).read_text())
        func = tvm.ir.load_json(data["function"])
        names = {str(var): str(target) for var, target in data["names"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError):  # TVM's parse errors too
        return None
    return (func, names) if isinstance(func, relax.Function) else None


def save(key: tuple, func: relax.Function, names: dict[str, str]) -> None:
    """Keep the translation of `key`, unless the cache cannot be written."""
    path = entry_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"version": FORMAT_VERSION, "names": names, "function": tvm.ir.save_json(func)})
    except (OSError, EdgeBertError):
        pass
