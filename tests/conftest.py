"""Shared fixtures: tiny checkpoints on disk, a fresh-process CLI runner, and the PyTorch reference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig

from edgebert_tvm import cli
from edgebert_tvm.models.builtins import BUILTIN_DIRS, default_checkpoint_built
from edgebert_tvm.models.checkpoint import Checkpoint, save
from edgebert_tvm.models.config import EdgeBertConfig
from edgebert_tvm.models.modeling import EdgeBertForSequenceClassification
from edgebert_tvm.training.recipe import build_default_checkpoint

INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")


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
    torch.manual_seed(1)
    model = EdgeBertForSequenceClassification(tiny_bert_config(), EdgeBertConfig(num_labels=3)).eval()
    directory = tmp_path_factory.mktemp("ckpt") / "tiny-bert"
    save(Checkpoint(model, "tiny-bert", minilm_dir), directory)
    return directory


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory) -> Path:
    """albert-tiny compiled at seq 8 through the CLI."""
    out = tmp_path_factory.mktemp("art") / "A"
    assert cli.main(["compile", "albert-tiny", "-o", str(out), "--seq-len", "8"]) == 0
    return out


@pytest.fixture(scope="session")
def default_checkpoint_dir(request) -> Path:
    """The built-in `edgebert-sst2`: reused from the user's cache, else built once here, visibly (its
    announcement and progress bars go to the terminal, not into pytest's capture)."""
    if not default_checkpoint_built():
        with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            build_default_checkpoint()
    return BUILTIN_DIRS["edgebert-sst2"]()


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """`edgebert-tvmc ARGS` in a fresh Python process."""
    proc = subprocess.run([sys.executable, "-m", "edgebert_tvm.cli", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"edgebert-tvmc {' '.join(args)} failed:\n{proc.stderr}")
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
