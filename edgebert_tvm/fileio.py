"""Atomic output: artifacts appear whole or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import EdgeBertError


def check_output_directory(target: Path) -> Path:
    """Fail early (before long work) if `target` cannot become a directory; returns its parent."""
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise EdgeBertError(f"{target}: parent directory {parent} does not exist")
    if target.exists() and not target.is_dir():
        raise EdgeBertError(f"{target}: exists and is not a directory")
    try:  # a real probe: permission bits say nothing for root or on read-only mounts
        os.rmdir(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".probe", dir=parent))
    except OSError as err:
        raise EdgeBertError(f"{target}: cannot write in {parent} ({err.strerror})") from None
    return parent


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary directory beside `target`; on success it replaces `target` by rename."""
    target = Path(target)
    parent = check_output_directory(target)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    except OSError as err:
        raise EdgeBertError(f"{target}: cannot write there ({err.strerror})") from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the artifact should not be
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file in the same directory, then rename."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as err:
        raise EdgeBertError(f"{path}: cannot write there ({err.strerror})") from None
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cache_dir() -> Path:
    """Where built checkpoints are kept: $EDGEBERT_TVM_CACHE, else ~/.cache/edgebert-tvm."""
    return Path(os.environ.get("EDGEBERT_TVM_CACHE", Path.home() / ".cache" / "edgebert-tvm"))
