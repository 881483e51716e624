"""Differential tests: compiled artifacts, run in a fresh process, against the PyTorch model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tvm

from edgebert_tvm import cli
from edgebert_tvm.compiler import CompileOptions, compile_model
from edgebert_tvm.importer import BLOCK_ATTR, InputSpec, import_model
from edgebert_tvm.inputs import encode, load_tokenizer
from edgebert_tvm.models.checkpoint import load
from edgebert_tvm.target.registry import make_target

from .conftest import random_inputs, read_json, run_cli, run_cli_fresh, torch_exits

TOLERANCE = 1e-4


def _compile(model: str, out: Path, *extra: str) -> Path:
    assert cli.main(["compile", model, "-o", str(out), *extra]) == 0
    return out


def _blocks(mod: tvm.IRModule) -> dict[str, str]:
    return {gv.name_hint: str(f.attrs[BLOCK_ATTR]) for gv, f in mod.functions_items()
            if f.attrs is not None and BLOCK_ATTR in f.attrs}


def test_tiny_bert_text_in_fresh_process(tiny_bert_dir, tmp_path):
    artifact = _compile(str(tiny_bert_dir), tmp_path / "A", "--seq-len", "24")
    texts = ["a charming and often affecting journey .", "unflinchingly bleak and desperate"]
    out = tmp_path / "out.json"
    run_cli_fresh("run", str(artifact), "--text", *texts, "--all-exits", "--json", str(out), check=True)
    result = read_json(out)
    inputs = encode(load_tokenizer(artifact / "tokenizer.json", 24), texts)
    reference = torch_exits(load(tiny_bert_dir).model, inputs)
    np.testing.assert_allclose(np.array(result["all_exit_logits"]), reference, atol=TOLERANCE)
    np.testing.assert_allclose(np.array(result["logits"]), reference[:, -1], atol=TOLERANCE)
    assert result["exit_layer"] == [3, 3]


def test_albert_tiny_npz_batched(tmp_path):
    artifact = _compile("albert-tiny", tmp_path / "A", "--seq-len", "16", "--batch", "2")
    inputs = random_inputs(5, 16, 30000)  # 5 rows: the last batch of 2 is padded and trimmed
    np.savez(tmp_path / "in.npz", **inputs)
    out = tmp_path / "out.json"
    run_cli("run", str(artifact), "--inputs", str(tmp_path / "in.npz"), "--all-exits", "--print-time",
            "--repeat", "3", "--json", str(out), check=True)
    result = read_json(out)
    reference = torch_exits(load("albert-tiny").model, inputs)
    np.testing.assert_allclose(np.array(result["all_exit_logits"]), reference, atol=TOLERANCE)
    assert set(result["time_ms"]) == {"mean", "median", "min", "max", "std"}
    assert result["time_ms"]["min"] <= result["time_ms"]["median"] <= result["time_ms"]["max"]


def test_block_structure_keeps_albert_shared_layer_once(tiny_bert_dir):
    albert = import_model(load("albert-tiny").model, InputSpec(1, 8))
    blocks = _blocks(albert)
    assert sorted(blocks) == ["embeddings", "exit_1", "exit_2", "layer_0"]
    bert = import_model(load(tiny_bert_dir).model, InputSpec(1, 8))
    assert sorted(n for n, b in _blocks(bert).items() if b == "layer") == ["layer_0", "layer_1", "layer_2"]


def test_albert_base_shape_matches_and_shares_weights(tmp_path):
    checkpoint = load("albert-base")
    options = CompileOptions(seq_len=16)
    compiled = compile_model(checkpoint, options)
    parameter_bytes = sum(p.numel() * p.element_size() for p in checkpoint.model.parameters())
    assert compiled.constant_bytes <= 1.1 * parameter_bytes, (compiled.constant_bytes, parameter_bytes)
    from edgebert_tvm.artifact import Artifact, write_artifact

    write_artifact(checkpoint, compiled, tmp_path / "A")
    inputs = random_inputs(1, 16, 30000)
    exits = Artifact.load(tmp_path / "A").all_exits(inputs)
    np.testing.assert_allclose(exits, torch_exits(checkpoint.model, inputs), atol=TOLERANCE)


@pytest.mark.real_model
def test_minilm_cli_compile_and_run_in_fresh_process(tmp_path):
    artifact = tmp_path / "A"
    run_cli_fresh("compile", "minilm-l6", "-o", str(artifact), "--seq-len", "32", check=True)
    texts = ["it 's a charming and often affecting journey .", "the plot is nothing but boilerplate clichés"]
    out = tmp_path / "out.json"
    run_cli_fresh("run", str(artifact), "--text", *texts, "--all-exits", "--json", str(out), check=True)
    result = read_json(out)
    inputs = encode(load_tokenizer(artifact / "tokenizer.json", 32), texts)
    reference = torch_exits(load("minilm-l6").model, inputs)
    np.testing.assert_allclose(np.array(result["all_exit_logits"]), reference, atol=TOLERANCE)
    meta = read_json(artifact / "metadata.json")
    assert meta["model"]["source"] == "minilm-l6" and meta["input"]["seq_len"] == 32
    assert "apache-tvm" in meta["versions"]


def test_cuda_compiles_without_a_gpu(tmp_path):
    checkpoint = load("albert-tiny")
    compiled = compile_model(checkpoint, CompileOptions(target="cuda", seq_len=8))
    assert compiled.target.kind.name == "cuda"
    assert make_target("cuda").host.kind.name == "llvm"


def test_run_prints_tvmc_style_time_summary(tiny_artifact, tmp_path):
    np.savez(tmp_path / "in.npz", input_ids=np.ones((1, 8), dtype=np.int32))
    proc = run_cli("run", str(tiny_artifact), "--inputs", str(tmp_path / "in.npz"), "--print-time", "--repeat", "4",
                   check=True)
    assert "Execution time summary" in proc.stdout and "median (ms)" in proc.stdout
