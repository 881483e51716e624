"""The CLI prints our messages and progress bars only: no library warnings, with Python's warnings on."""

from __future__ import annotations

import os
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest
import torch

from edgebert_tvm.artifact import Artifact
from edgebert_tvm.models.checkpoint import Checkpoint, save
from edgebert_tvm.models.config import EdgeBertConfig
from edgebert_tvm.models.modeling import EdgeBertForSequenceClassification

from .conftest import tiny_bert_config

# compile, run and eval of a tiny checkpoint, in one fresh interpreter (one import of torch and TVM)
JOBS = """
import sys
from edgebert_tvm import cli
ckpt, out = sys.argv[1:]
sys.exit(cli.main(["compile", ckpt, "--seq-len", "16", "--exit-threshold", "0.5", "-o", out])
         or cli.main(["run", out, "--text", "a fine film", "dull"])
         or cli.main(["eval", out, "--limit", "8"]))
"""


@pytest.fixture
def tiny_sst2_dir(tmp_path, minilm_dir) -> Path:
    """A tiny random BERT with SST-2's two labels (so `eval` on SST-2 applies) and MiniLM's tokenizer."""
    torch.manual_seed(2)
    model = EdgeBertForSequenceClassification(tiny_bert_config(), EdgeBertConfig(num_labels=2)).eval()
    save(Checkpoint(model, "tiny-sst2", minilm_dir), tmp_path / "tiny-sst2")
    return tmp_path / "tiny-sst2"


def test_cli_jobs_print_no_library_warnings(tiny_sst2_dir, tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # every warning shown, as a user's shell may have it
    proc = subprocess.run([sys.executable, "-c", JOBS, str(tiny_sst2_dir), str(tmp_path / "A")], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "'a fine film': class" in proc.stdout and "full depth" in proc.stdout
    lines = (proc.stdout + proc.stderr).replace("\r", "\n").splitlines()
    assert [line for line in lines if "Warning" in line] == []


def test_out_of_range_ids_read_the_last_row(tiny_artifact):
    """The import asks TVM for clamped lookups (importer._ClipTakes): an id past the vocabulary, which
    only the CLI checks, reads the last row instead of memory past the table."""
    artifact = Artifact.load(tiny_artifact)
    vocab = artifact.metadata["model"]["vocab_size"]
    ids = np.full((1, artifact.seq_len), 7, dtype=np.int64)
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    last, past = ids.copy(), ids.copy()
    last[0, 3], past[0, 3] = vocab - 1, vocab + 1000
    exits = {name: artifact.all_exits({**inputs, "input_ids": a}) for name, a in (("last", last), ("past", past))}
    np.testing.assert_array_equal(exits["past"], exits["last"])
    assert np.abs(exits["last"] - artifact.all_exits(inputs)).max() > 1e-4
