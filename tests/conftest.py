"""Shared fixtures: tiny checkpoints on disk, a fresh-process CLI runner, and the PyTorch reference."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig

from edgebert_tvm import cli
from edgebert_tvm.fileio import exclusive_lock
from edgebert_tvm.models.builtins import BUILTIN_DIRS
from edgebert_tvm.models.checkpoint import Checkpoint, save
from edgebert_tvm.models.config import EdgeBertConfig
from edgebert_tvm.models.modeling import EdgeBertForSequenceClassification
from edgebert_tvm.target.cpu.host import physical_cores

INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")


def pytest_configure(config) -> None:
    """Under pytest-xdist (`-n`), each worker's thread pools get its share of the cores: TVM's pool
    spins while it waits, so two workers with a pool of every core each run slower than one."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, physical_cores() // workers)
        for variable in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):  # fresh processes the tests start inherit them
            os.environ.setdefault(variable, str(threads))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tuning tests first: they are the suite's longest (each waits on worker processes), and
    a long test that starts last leaves the other xdist workers idle until it ends."""
    items.sort(key=lambda item: item.get_closest_marker("tuning") is None)


def _run_directory(tmp_path_factory) -> Path:
    """This run's temporary directory, the same for every xdist worker (each has its own below it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_build(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """`build(directory)` once per run for every xdist worker: the first to ask builds it under a
    lock, the others wait and read it (fixtures that only read what they build; a chip compile
    built on both workers cost 14 s twice)."""
    directory = _run_directory(tmp_path_factory) / "shared" / name
    directory.parent.mkdir(exist_ok=True)
    done = directory.with_name(f"{name}.built")
    with exclusive_lock(directory.with_name(f"{name}.lock"), f"building {name}", wait=True):
        if not done.exists():
            shutil.rmtree(directory, ignore_errors=True)  # a build that failed in another worker
            build(directory)
            done.touch()
    return directory


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory) -> Path:
    """`$EDGEBERT_TVM_CACHE` (translations, cost models) under this run's temporary directory, one
    for every xdist worker and every process the tests start: a block translated once is read by
    the others, and nothing the suite builds lands in the user's cache."""
    cache = _run_directory(tmp_path_factory) / "edgebert-cache"
    cache.mkdir(exist_ok=True)
    os.environ["EDGEBERT_TVM_CACHE"] = str(cache)
    return cache


def tiny_bert_config(**overrides) -> BertConfig:
    shape = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=64)
    shape.update(overrides)
    return BertConfig(**shape)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return BUILTIN_DIRS["minilm-l6"]()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_dir) -> Path:
    """A 3-layer random BERT saved the way the project saves checkpoints, with MiniLM's tokenizer."""

    def build(directory: Path) -> None:
        torch.manual_seed(1)
        model = EdgeBertForSequenceClassification(tiny_bert_config(), EdgeBertConfig(num_labels=3)).eval()
        save(Checkpoint(model, "tiny-bert", minilm_dir), directory)

    return shared_build(tmp_path_factory, "tiny-bert", build)


def compile_shared(tmp_path_factory, name: str, *args: str) -> Path:
    """`compile *args -o DIR` through the CLI, once per run (`shared_build`)."""

    def build(out: Path) -> None:
        assert cli.main(["compile", *args, "-o", str(out)]) == 0

    return shared_build(tmp_path_factory, name, build)


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory) -> Path:
    """albert-tiny compiled at seq 8 through the CLI."""
    return compile_shared(tmp_path_factory, "albert-tiny-8", "albert-tiny", "--seq-len", "8")


@pytest.fixture(scope="session")
def default_checkpoint_dir() -> Path:
    """The built-in `edgebert-sst2`: the packed copy the repository ships (nothing trains)."""
    return BUILTIN_DIRS["edgebert-sst2"]()


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """`edgebert-tvmc ARGS` in this process, its Python-level output captured: the CLI's behaviour
    without paying 4-5 s of imports per call (`run_cli_fresh` is for what a new process must show)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(args))
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
    return _checked(subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue()), check)


def run_cli_fresh(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """`edgebert-tvmc ARGS` in a fresh Python process: imports, registrations and every line on the
    terminal as a user's shell sees them."""
    proc = subprocess.run([sys.executable, "-m", "edgebert_tvm.cli", *args], capture_output=True, text=True)
    return _checked(proc, check)


def _checked(proc: subprocess.CompletedProcess, check: bool) -> subprocess.CompletedProcess:
    if check and proc.returncode != 0:
        raise AssertionError(f"edgebert-tvmc {' '.join(proc.args)} failed:\n{proc.stderr}")
    return proc


def torch_exits(model: EdgeBertForSequenceClassification, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(*[torch.from_numpy(inputs[name]) for name in INPUT_ORDER]).numpy()


def random_inputs(rows: int, seq_len: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random ids with ragged padding, so masking is exercised."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(rows, seq_len), dtype=np.int64)
    mask = np.ones_like(ids)
    for row in range(rows):
        mask[row, rng.integers(seq_len // 2, seq_len + 1):] = 0
    types = np.zeros_like(ids)
    types[:, seq_len // 2:] = 1
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types * mask}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
