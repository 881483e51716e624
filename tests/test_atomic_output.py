"""Nothing half-written: a kill at any moment leaves the old output or the new one, writers of one
target take turns, killed writers' leftovers are swept, and `compile` replaces only what it made."""

from __future__ import annotations

import ctypes
import errno
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import struct
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgebert_tvm import cli, fileio
from edgebert_tvm.artifact import Artifact
from edgebert_tvm.commands import compile as compile_command
from edgebert_tvm.errors import EdgeBertError
from edgebert_tvm.tuning.records import DEFAULTS_FILE, open_for_tuning, read_defaults

TINY = ("albert-tiny", "--seq-len", "8")
LEFTOVER = re.compile(r"\.A\.[a-z0-9_]{8}\.(tmp|old)")


# ---------------------------------------------------------------- the directory swap, step by step


def _write(target: Path, content: str, between: Callable[[], None] = lambda: None) -> None:
    with fileio.atomic_directory(target) as tmp:
        (tmp / "a").write_text(content)
        between()
        (tmp / "b").write_text(content)


def _contents(target: Path) -> dict[str, str] | None:
    return {p.name: p.read_text() for p in target.iterdir()} if target.exists() else None


def _fork(body: Callable[[], None]) -> int:
    """Run `body` in a forked child; its pid. The child never returns into pytest."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    return pid


def _no_exchange(*args) -> int:
    """renameat2 as on a file system without RENAME_EXCHANGE."""
    ctypes.set_errno(errno.EINVAL)
    return -1


def _write_killed_after(target: Path, step: int, exchange_works: bool) -> None:
    """Write 'new' to `target`, SIGKILLed right after the `step`-th file-system step of the write."""
    done = 0

    def counted(fn: Callable) -> Callable:
        def call(*args):
            nonlocal done
            result = fn(*args)
            done += 1
            if done == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return call

    if not exchange_works:
        fileio._LIBC = types.SimpleNamespace(renameat2=_no_exchange)
    for name in ("exchange", "_fsync", "_remove", "_sweep"):
        setattr(fileio, name, counted(getattr(fileio, name)))
    os.rename = counted(os.rename)
    _write(target, "new", between=counted(lambda: None))


@pytest.mark.parametrize("exchange_works", [True, False], ids=["renameat2", "two-renames"])
def test_kill_after_every_step_of_a_write_leaves_old_or_new(tmp_path, exchange_works):
    old, new = {"a": "old", "b": "old"}, {"a": "new", "b": "new"}
    step = 0
    while True:
        step += 1
        target = tmp_path / f"kill-{step}" / "A"
        target.parent.mkdir()
        _write(target, "old")
        _, status = os.waitpid(_fork(lambda: _write_killed_after(target, step, exchange_works)), 0)
        allowed = [old, new] if exchange_works else [old, new, None]  # two renames: absent in between
        assert _contents(target) in allowed, (step, _contents(target))
        if os.WIFEXITED(status):  # fewer steps than `step`: the write finished
            assert os.WEXITSTATUS(status) == 0 and _contents(target) == new
            break
        assert os.WTERMSIG(status) == signal.SIGKILL
        _write(target, "next")  # the next writer sweeps what the killed one left
        assert sorted(os.listdir(target.parent)) == ["A"] and _contents(target) == {"a": "next", "b": "next"}
    assert step > 8  # sweep, body, every fsync, the swap, the removal of the old output


@pytest.mark.parametrize("code, unsupported", [(errno.EINVAL, True), (errno.ENOSYS, True), (errno.EXDEV, False)])
def test_exchange_falls_back_only_where_it_is_unsupported(monkeypatch, tmp_path, code, unsupported):
    def renameat2(*args) -> int:
        ctypes.set_errno(code)
        return -1

    monkeypatch.setattr(fileio, "_LIBC", types.SimpleNamespace(renameat2=renameat2))
    if unsupported:
        assert fileio.exchange(tmp_path / "a", tmp_path / "b") is False
    else:
        with pytest.raises(OSError, match="cross-device"):
            fileio.exchange(tmp_path / "a", tmp_path / "b")


def test_a_second_writer_waits_for_the_first_and_never_sweeps_its_files(tmp_path):
    target, entered, release = tmp_path / "A", tmp_path / "entered", tmp_path / "release"

    def first() -> None:
        with fileio.atomic_directory(target) as tmp:
            (tmp / "a").write_text("first")
            entered.touch()
            deadline = time.monotonic() + 60
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            (tmp / "b").write_text("first")

    pid = _fork(first)
    try:
        deadline = time.monotonic() + 30
        while not entered.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        second = threading.Thread(target=_write, args=(target, "second"))
        second.start()
        time.sleep(0.5)
        assert second.is_alive() and not target.exists()  # waiting on the lock
        assert len(_leftovers(tmp_path)) == 1  # the first's temporary, not swept
    finally:
        release.touch()
        _, status = os.waitpid(pid, 0)
    second.join(30)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and not second.is_alive()
    assert _contents(target) == {"a": "second", "b": "second"}
    assert sorted(os.listdir(tmp_path)) == ["A", "entered", "release"]  # no lock file, no temporary


def test_leftovers_of_killed_writers_are_swept_and_nothing_else(tmp_path):
    for name in (".A.k1ll3d_x.tmp", ".A.abcdefgh.old"):  # a killed writer's new and old outputs
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.so").write_bytes(b"half")
    keep = [".A.b.abcdefgh.tmp", ".A.train-state", ".A.abcdefgh.tmp.json", "A.abcdefgh.tmp"]
    for name in keep:  # another target's temporary, a resumable state, look-alikes
        (tmp_path / name).mkdir()
    (tmp_path / ".A.lock").write_text("")  # a killed writer's lock file, no longer locked
    _write(tmp_path / "A", "new")
    assert sorted(os.listdir(tmp_path)) == sorted(["A", *keep])


def test_json_is_replaced_whole(tmp_path):
    path = tmp_path / "r.json"
    fileio.write_json_atomic(path, {"v": 1})
    fileio.write_json_atomic(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 2} and os.listdir(tmp_path) == ["r.json"]


# ---------------------------------------------------------------- compile, killed and concurrent


def _elf_whole(path: Path) -> bool:
    """A shared library with its section headers (the linker writes them last) inside the file."""
    data = path.read_bytes()
    if data[:5] != b"\x7fELF\x02":
        return False
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    return 0 < shoff and shoff + shentsize * shnum <= len(data)


def _assert_complete(out: Path, names: list[str]) -> None:
    assert sorted(p.name for p in out.iterdir()) == names
    assert json.loads((out / "metadata.json").read_text())["format_version"] == 1
    assert _elf_whole(out / "model.so")


# Compiles run as forks of a server that has imported the CLI and its compile command once: a compile's
# 4-5 s of imports would otherwise be paid 20 times, and a kill during imports tests nothing.
_SERVER = multiprocessing.get_context("forkserver")
_SERVER.set_forkserver_preload(["edgebert_tvm.cli", "edgebert_tvm.commands.compile"])


def _compile_in_child(argv: list[str], log: str) -> None:
    """`edgebert-tvmc ARGV` in its own process group (a kill reaches the linker it starts), output to `log`."""
    os.setpgid(0, 0)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.exit(cli.main(argv))


class _Compile:
    """One `compile` of the tiny model to `out`, running in a fork of the server; its output goes to a
    file in `logs` (not beside `out`, whose directory the tests list)."""

    count = 0

    def __init__(self, logs: Path, out: Path, *extra: str) -> None:
        _Compile.count += 1
        self.log = logs / f"compile-{_Compile.count}.log"
        self.process = _SERVER.Process(target=_compile_in_child,
                                       args=(["compile", *TINY, "-o", str(out), *extra], str(self.log)))
        self.process.start()

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status (negative: killed by that signal), or None if still running after `timeout`."""
        self.process.join(timeout)
        return self.process.exitcode

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:  # killed before it made its group: nothing else started yet
            self.process.kill()
        self.process.join()

    def output(self) -> str:
        return self.log.read_text()


def _warm_server() -> None:
    """Start the server (its imports) before anything is timed."""
    warm = _SERVER.Process(target=os.getpid)
    warm.start()
    warm.join()


def _leftovers(parent: Path) -> set[str]:
    return {p.name for p in parent.iterdir() if LEFTOVER.fullmatch(p.name)}


def _kill_when(compile_: _Compile, ready: Callable[[], bool], delay: float, timeout: float) -> None:
    """SIGKILL the compile's process group `delay` s after `ready()`, unless it has finished by then."""
    deadline = time.monotonic() + timeout
    while compile_.wait(0) is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.005)
    if compile_.wait(delay) is None:
        compile_.kill()


def _run_artifact(out: Path) -> None:
    artifact = Artifact.load(out)
    result = artifact.run({"input_ids": np.full((3, 8), 7, np.int64), "attention_mask": np.ones((3, 8), np.int64),
                           "token_type_ids": np.zeros((3, 8), np.int64)})
    assert result.logits.shape[0] == 3 and np.isfinite(result.logits).all()


def test_killed_compiles_leave_the_old_artifact_or_the_new_one(tmp_path, tmp_path_factory):
    out, logs = tmp_path / "A", tmp_path_factory.mktemp("logs")
    _warm_server()
    start = time.monotonic()
    first = _Compile(logs, out)
    assert first.wait() == 0, first.output()
    seconds = time.monotonic() - start
    names = sorted(p.name for p in out.iterdir())
    rng = random.Random(0)
    for kill in range(20):
        compile_ = _Compile(logs, out, "--force")
        if kill < 15:  # anywhere: checkpoint load, import, passes, build, write
            _kill_when(compile_, lambda: True, rng.uniform(0, 1.1 * seconds), seconds)
        else:  # in the write: once this compile's temporary directory appears
            before = _leftovers(tmp_path)
            _kill_when(compile_, lambda: bool(_leftovers(tmp_path) - before), rng.uniform(0, 0.5), 3 * seconds)
        assert compile_.wait() in (0, -signal.SIGKILL), compile_.output()
        _assert_complete(out, names)
        assert len(_leftovers(tmp_path)) <= 1  # each writer swept its predecessors'
    last = _Compile(logs, out, "--force")
    assert last.wait() == 0, last.output()
    _assert_complete(out, names)
    assert sorted(os.listdir(tmp_path)) == ["A"]  # temporaries and lock file swept
    _run_artifact(out)


def test_two_compiles_to_one_output_end_with_one_whole_artifact(tmp_path, tmp_path_factory):
    """Different batch sizes: a library of one with the metadata of the other would not run."""
    out, logs = tmp_path / "A", tmp_path_factory.mktemp("logs")
    _warm_server()
    compiles = [_Compile(logs, out, "--force", "--batch", batch) for batch in ("1", "2")]
    for compile_ in compiles:
        assert compile_.wait() == 0, compile_.output()
    _assert_complete(out, ["metadata.json", "model.so"])
    assert sorted(os.listdir(tmp_path)) == ["A"]
    _run_artifact(out)


# ---------------------------------------------------------------- the overwrite rule of compile


def _refused(capsys, out: Path, *extra: str, match: str) -> None:
    assert cli.main(["compile", *TINY, "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("edgebert-tvmc: error: ") and match in err, err


def test_an_artifact_is_replaced_only_with_force(monkeypatch, capsys, tiny_artifact, tmp_path):
    out = tmp_path / "A"
    shutil.copytree(tiny_artifact, out)
    (out / "extra.txt").write_text("left by the old artifact")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with monkeypatch.context() as m:
        m.setattr(compile_command, "load", lambda model: pytest.fail("the rule must be checked before loading"))
        _refused(capsys, out, match="pass --force to replace it")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert cli.main(["compile", *TINY, "-o", str(out), "--force"]) == 0
    _assert_complete(out, ["metadata.json", "model.so"])  # replaced whole: extra.txt is gone
    assert sorted(os.listdir(tmp_path)) == ["A"]


def test_a_directory_that_is_not_an_artifact_is_never_replaced(monkeypatch, capsys, tmp_path):
    out = tmp_path / "src"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(compile_command, "load", lambda model: pytest.fail("the rule must be checked before loading"))
    for extra in ((), ("--force",)):
        _refused(capsys, out, *extra, match="is not an artifact (no metadata.json); not replacing it")
    assert os.listdir(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_an_empty_directory_is_written(tmp_path):
    (tmp_path / "A").mkdir()
    assert cli.main(["compile", *TINY, "-o", str(tmp_path / "A")]) == 0
    _assert_complete(tmp_path / "A", ["metadata.json", "model.so"])


# ---------------------------------------------------------------- tuning records


def test_a_torn_last_record_is_dropped_with_a_warning_and_a_torn_middle_one_is_an_error(capsys, tmp_path):
    work = tmp_path / "tune"
    work.mkdir()
    whole = '{"workload": "ab", "task": "t", "ms": 1.5}\n'
    (work / DEFAULTS_FILE).write_text(whole + '{"workload": "cd", "ta')  # a kill mid-append
    open_for_tuning(work)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning" in err[0] and "half-written last record" in err[0], err
    assert (work / DEFAULTS_FILE).read_text() == whole and set(read_defaults(work)) == {"ab"}
    open_for_tuning(work)
    assert capsys.readouterr().err == ""  # repaired: nothing more to say
    (work / DEFAULTS_FILE).write_text('{"workload": "cd", "ta\n' + whole)
    with pytest.raises(EdgeBertError, match=":1: corrupt"):
        open_for_tuning(work)
    assert (work / DEFAULTS_FILE).read_text() == '{"workload": "cd", "ta\n' + whole
