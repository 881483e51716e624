"""Packed checkpoints (models/packed.py): AdaptivFloat-8 codes plus nonzero masks load as the float
model on the AF8 grid, compile to what PyTorch computes with that model, and a packed file whose
parts disagree is refused with one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from safetensors.numpy import load_file, save_file
from safetensors import safe_open

from edgebert_tvm import cli
from edgebert_tvm.adaptivfloat.fake_quant import QUANTIZED_MODULES
from edgebert_tvm.adaptivfloat.quantizer import quantize
from edgebert_tvm.artifact import Artifact
from edgebert_tvm.compiler import CompileOptions, compile_model
from edgebert_tvm.models.modeling import early_exit
from edgebert_tvm.models.checkpoint import load, save
from edgebert_tvm.models.packed import PACKED_WEIGHTS_NAME

from .conftest import INPUT_ORDER, random_inputs, read_json, shared_build, torch_exits


@pytest.fixture(scope="module")
def pruned_dir(tiny_bert_dir, tmp_path_factory) -> Path:
    """The tiny BERT with its Linear weights 60 % pruned, one all-zero row each, embeddings dense, and
    an exit threshold as if calibrated."""
    def build(directory: Path) -> None:
        checkpoint = load(tiny_bert_dir)
        checkpoint.model.edgebert.exit_thresholds = [0.6]
        with torch.no_grad():
            for seed, linear in enumerate(m for m in checkpoint.model.modules() if isinstance(m, torch.nn.Linear)):
                weight = linear.weight
                weight.mul_(torch.rand(weight.shape, generator=torch.Generator().manual_seed(seed)) > 0.6)
                weight[0] = 0
        save(checkpoint, directory)

    return shared_build(tmp_path_factory, "tiny-bert-pruned", build)


@pytest.fixture(scope="module")
def packed_dir(pruned_dir, tmp_path_factory) -> Path:
    def build(directory: Path) -> None:
        assert cli.main(["pack", str(pruned_dir), "-o", str(directory)]) == 0

    return shared_build(tmp_path_factory, "tiny-bert-packed", build)


def test_packed_checkpoint_is_the_float_model_on_the_af8_grid(pruned_dir, packed_dir):
    original, packed = load(pruned_dir).model, load(packed_dir).model
    assert PACKED_WEIGHTS_NAME in {p.name for p in packed_dir.iterdir()}
    assert not (packed_dir / "model.safetensors").exists()
    quantized = {f"{name}.weight" for name, m in original.named_modules() if isinstance(m, QUANTIZED_MODULES)}
    assert "classifier.weight" in quantized and "backbone.embeddings.word_embeddings.weight" in quantized
    for name, value in original.state_dict().items():
        expected = quantize(value.numpy(), 8, 3) if name in quantized else value.numpy()
        np.testing.assert_array_equal(packed.state_dict()[name].numpy(), expected, err_msg=name)
    assert dataclasses.replace(packed.edgebert, extra={}) == original.edgebert  # exits, spans, labels go with it
    assert packed.edgebert.extra["packed"] == {"format": "edgebert-af8/1", "weight_format": "adaptivfloat8",
                                               "exp_bits": 3}
    with safe_open(str(packed_dir / PACKED_WEIGHTS_NAME), framework="numpy") as f:
        names = set(f.keys())
    for name in quantized:  # a mask where the weight has zeros (pruned, or rounded to zero), none elsewhere
        saved = name.replace("backbone.", "bert.")
        has_zeros = bool((packed.state_dict()[name] == 0).any())
        assert (f"{saved}.mask" in names) == has_zeros and f"{saved}.af8" in names, name
    assert "bert.encoder.layer.0.attention.self.query.weight.mask" in names
    fp32 = sum(v.numel() * 4 for v in original.state_dict().values())
    assert (packed_dir / PACKED_WEIGHTS_NAME).stat().st_size < fp32 / 3.5


def test_packed_checkpoint_compiles_to_what_pytorch_computes(packed_dir):
    """With --weights adaptivfloat8 the compiler re-encodes weights already on the grid: no further loss."""
    checkpoint = load(packed_dir)
    inputs = random_inputs(2, 16, 30522, seed=3)
    expected = torch_exits(checkpoint.model, inputs)
    for weight_format in (None, "adaptivfloat8"):
        compiled = compile_model(checkpoint, CompileOptions(batch=2, seq_len=16, lengths=(16,),
                                                            weight_format=weight_format))
        vm = tvm.relax.VirtualMachine(compiled.executable, tvm.cpu())
        out = vm["all_exits"](*[tvm.runtime.tensor(inputs[k]) for k in INPUT_ORDER])
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-4, err_msg=str(weight_format))


def test_compile_deploys_what_the_checkpoint_was_made_for(packed_dir, tmp_path, capsys):
    """No flag: the calibrated exits and the AF8 weights; each turned off by its flag; metadata says which."""
    runs = {"defaults": [], "off": ["--full-depth", "--weights", "float32"], "sparse": ["--sparse"]}
    meta = {}
    for name, flags in runs.items():
        assert cli.main(["compile", str(packed_dir), "-o", str(tmp_path / name), "--seq-len", "16", *flags]) == 0
        meta[name] = read_json(tmp_path / name / "metadata.json")
    assert "from the checkpoint: exits at 0.6, adaptivfloat8 weights" in capsys.readouterr().out
    assert meta["defaults"]["from_checkpoint"] == ["exit_thresholds", "weight_format"]
    assert meta["defaults"]["exit_thresholds"] == [0.6, 0.6] and meta["defaults"]["weight_format"]["bits"] == 8
    assert (meta["off"]["from_checkpoint"], meta["off"]["exit_thresholds"], meta["off"]["weight_format"]) == ([], None, None)
    # the sparse kernels read float32: --sparse keeps the exits and leaves the weights float32
    assert meta["sparse"]["from_checkpoint"] == ["exit_thresholds"] and meta["sparse"]["weight_format"] is None

    model = load(packed_dir).model
    inputs = random_inputs(3, 16, 30522, seed=5)
    result = Artifact.load(tmp_path / "defaults").run(inputs)
    for row in range(3):
        logits, layer = early_exit(model, *[torch.from_numpy(inputs[k][row:row + 1]) for k in INPUT_ORDER], [0.6, 0.6])
        assert result.exit_layer[row] == layer
        np.testing.assert_allclose(result.logits[row], logits[0].numpy(), atol=1e-4)


def _rewrite(path: Path, edit) -> None:
    with safe_open(str(path), framework="numpy") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    edit(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)


QUERY = "bert.encoder.layer.0.attention.self.query.weight"


def _drop_one_code(tensors, metadata):
    tensors[f"{QUERY}.af8"] = tensors[f"{QUERY}.af8"][:-1]


def _short_mask(tensors, metadata):
    tensors[f"{QUERY}.mask"] = tensors[f"{QUERY}.mask"][:-1]


def _other_format(tensors, metadata):
    metadata["format"] = "edgebert-af8/99"


def _layout_not_json(tensors, metadata):
    metadata["packed"] = "{"


def _bias_missing(tensors, metadata):
    layout = json.loads(metadata["packed"])
    del layout[QUERY]["bias"]
    metadata["packed"] = json.dumps(layout)


@pytest.mark.parametrize("edit, match", [
    (_drop_one_code, f"corrupt packed weight {QUERY} (" ),
    (_short_mask, "its mask is not"),
    (_other_format, "not packed weights of format edgebert-af8/1"),
    (_layout_not_json, "corrupt packed layout"),
    (_bias_missing, "needs an integer bias"),
])
def test_packed_file_whose_parts_disagree_is_refused(capsys, packed_dir, tmp_path, edit, match):
    copy = tmp_path / "P"
    copy.mkdir()
    for path in packed_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    _rewrite(copy / PACKED_WEIGHTS_NAME, edit)
    assert cli.main(["compile", str(copy), "-o", str(tmp_path / "A")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("edgebert-tvmc: error: ") and match in err, err
    assert not (tmp_path / "A").exists()


def test_pack_replaces_a_checkpoint_only_with_force(capsys, pruned_dir, packed_dir, tmp_path):
    assert cli.main(["pack", str(pruned_dir), "-o", str(packed_dir)]) == 2
    assert "a checkpoint is already there; pass --force to replace it" in capsys.readouterr().err
    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert cli.main(["pack", str(pruned_dir), "-o", str(other), "--force"]) == 2
    assert "is not a checkpoint (no config.json)" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "mine"
