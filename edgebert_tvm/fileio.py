"""Atomic output: artifacts appear whole or not at all, and a kill never leaves a mix.

A finished output directory is built beside its target (`.<name>.<random>.tmp`), flushed, then
swapped in with one exchange of names, under a lock on `.<name>.lock` that serializes writers of the
same target. Whatever a killed writer leaves beside the target, the next writer removes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import EdgeBertError

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h
_LIBC = ctypes.CDLL(None, use_errno=True)


def check_output_directory(target: Path) -> Path:
    """Fail early (before long work) if `target` cannot become a directory; returns its parent."""
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise EdgeBertError(f"{target}: parent directory {parent} does not exist")
    if target.exists() and not target.is_dir():
        raise EdgeBertError(f"{target}: exists and is not a directory")
    try:  # a real probe: permission bits say nothing for root or on read-only mounts
        tempfile.TemporaryFile(dir=parent).close()  # unnamed (O_TMPFILE): a kill leaves nothing
    except OSError as err:
        raise EdgeBertError(f"{target}: cannot write in {parent} ({err.strerror})") from None
    return parent


def exchange(a: Path, b: Path) -> bool:
    """Swap the names of two existing paths in one step (Linux renameat2 with RENAME_EXCHANGE).

    Returns False, having changed nothing, where the C library, the kernel or the file system has no
    such exchange (no symbol, ENOSYS, EINVAL); any other failure is raised.
    """
    renameat2 = getattr(_LIBC, "renameat2", None)
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # directories too, on Linux
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file under `root`, then the directories: a rename may reach the disk before the data."""
    for directory, _, files in os.walk(root):
        for name in files:
            _fsync(Path(directory, name))
        _fsync(Path(directory))


def _remove(path: Path) -> None:
    """Remove a replaced output: a directory tree, or the symlink that stood at the target."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (st.st_dev, st.st_ino)


@contextlib.contextmanager
def _writer_lock(target: Path, parent: Path) -> Iterator[None]:
    """Hold `.<name>.lock` beside `target` (fcntl.flock; a second writer waits here).

    The lock file is removed before it is released, so a finished write leaves nothing beside the
    target; a waiter that wakes up holding a removed file tries again on the current one.
    """
    path = parent / f".{target.name}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):  # removed by hand meanwhile
            os.unlink(path)
        os.close(fd)


def _sweep(target: Path, parent: Path) -> None:
    """Remove the temporary directories of killed writers of `target`. Called under the writer lock,
    where no live writer has one: a writer's temporary exists only while it holds that lock."""
    leftover = re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.(tmp|old)")  # tempfile's names
    for entry in parent.iterdir():
        if leftover.fullmatch(entry.name) and (entry.is_symlink() or entry.is_dir()):
            with contextlib.suppress(OSError):  # still busy (a killed writer's orphaned linker): next time
                _remove(entry)


def _swap_in(tmp: Path, target: Path, parent: Path) -> None:
    """Put the finished `tmp` at `target`, which names the old output or the new one at every instant.

    Where there is no exchange (`exchange` returns False), the old output is first renamed aside, as
    before renameat2: between that rename and the next, `target` is absent (never partial).
    """
    if not (target.exists() or target.is_symlink()):
        os.rename(tmp, target)
        _fsync(parent)
        return
    if exchange(tmp, target):
        old = tmp  # the old output, now at the temporary name
    else:
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=parent))
        os.rename(target, old / target.name)
        os.rename(tmp, target)
    _fsync(parent)
    _remove(old)


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary directory beside `target`; on success it replaces `target` whole.

    The lock is held for the whole write, not only the swap: then every temporary directory seen
    under it is a dead writer's, and is swept without pid files or clocks. Writers of one target
    write one after the other (the long work, compiling or training, happens before, unlocked).
    """
    target = Path(target)
    parent = check_output_directory(target)
    with _writer_lock(target, parent):
        _sweep(target, parent)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
        except OSError as err:
            raise EdgeBertError(f"{target}: cannot write there ({err.strerror})") from None
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the artifact should not be
        try:
            yield tmp
            _fsync_tree(tmp)
            _swap_in(tmp, target, parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def exclusive_lock(path: Path, doing: str, wait: bool) -> Iterator[None]:
    """Hold an flock on `path` for the block, so one process at a time is `doing` it; a process that
    does not wait gets one line naming what holds it. Waiters find the lock file where it was."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise EdgeBertError(f"{path.parent}: another process is {doing} (it holds {path.name})") from None
        yield
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a flushed temporary file in the same directory, then rename."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as err:
        raise EdgeBertError(f"{path}: cannot write there ({err.strerror})") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a report should not be
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync(parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cache_dir() -> Path:
    """Where built checkpoints are kept: $EDGEBERT_TVM_CACHE, else ~/.cache/edgebert-tvm."""
    return Path(os.environ.get("EDGEBERT_TVM_CACHE", Path.home() / ".cache" / "edgebert-tvm"))
