"""Ties to the outside reference: compiled real checkpoints against HuggingFace's own BertModel on real
SST-2 sentences, a save/load round trip checked tensor by tensor, and the CLI jobs end to end (`demo`,
`train` with and without a teacher, QNLI sentence pairs)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AlbertConfig, AttentionInterface, BertModel
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from edgebert_tvm import cli
from edgebert_tvm.artifact import Artifact
from edgebert_tvm.data import Example, builtin_split, read_tsv, task_for
from edgebert_tvm.evaluate import artifact_all_exits
from edgebert_tvm.inputs import encode, load_tokenizer
from edgebert_tvm.lengths import default_lengths, fit
from edgebert_tvm.models.builtins import ALBERT_BASE
from edgebert_tvm.models.checkpoint import Checkpoint, load, save
from edgebert_tvm.models.config import EdgeBertConfig
from edgebert_tvm.models.inference import torch_all_exits
from edgebert_tvm.models.modeling import EdgeBertForSequenceClassification
from edgebert_tvm.target.cpu.host import describe_host

from .conftest import compile_shared, shared_build, tiny_bert_config, torch_exits

SEQ_LEN = 32
SENTENCES = 8
# Max abs logit difference from HuggingFace over every exit of 8 SST-2 dev sentences, measured on a
# 2-vCPU Intel Xeon (AVX-512): MiniLM with its untrained heads (logits up to 0.11) compiled 1.2e-7,
# PyTorch 4.5e-8; the default checkpoint (logits up to 4.6) compiled 1.2e-5, PyTorch 0 (the same
# operations in the same order as HuggingFace's eager attention with the span mask).
HF_TOLERANCE = 1e-4
TOLERANCE = 1e-4


def _dev_sentences(task: str, limit: int) -> list[Example]:
    return read_tsv(builtin_split(task_for(task), "dev"), task_for(task), limit=limit)


def _compile(model: str | Path, out: Path, *options: str) -> Artifact:
    assert cli.main(["compile", str(model), "-o", str(out), *options]) == 0
    return Artifact.load(out)


def _offramp(ramp: torch.nn.Module, cls: torch.Tensor) -> torch.Tensor:
    """An off-ramp's arithmetic written out: Linear -> tanh -> Linear on the [CLS] vector."""
    pooled = torch.tanh(F.linear(cls, ramp.pooler.weight, ramp.pooler.bias))
    return F.linear(pooled, ramp.classifier.weight, ramp.classifier.bias)


def huggingface_exits(hf: BertModel, ours: EdgeBertForSequenceClassification,
                      inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Every exit's logits from HuggingFace's hidden states and pooler, with our exit heads' weights."""
    with torch.no_grad():
        out = hf(**{k: torch.from_numpy(v) for k, v in inputs.items()}, output_hidden_states=True)
        layers = out.hidden_states[1:]  # [0] is the embedding output
        exits = [_offramp(ramp, hidden[:, 0]) for ramp, hidden in zip(ours.offramps, layers[:-1])]
        exits.append(F.linear(out.pooler_output, ours.classifier.weight, ours.classifier.bias))
    return torch.stack(exits, dim=1).numpy()


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


def assert_matches_huggingface(logits: np.ndarray, reference: np.ndarray) -> None:
    """Within 1e-4, or 1e-4 of the largest logit where that is below one (MiniLM's untrained heads give
    logits of about 0.1, where 1e-4 absolute would hide a 0.1% error)."""
    tolerance = HF_TOLERANCE * min(1.0, float(np.abs(reference).max()))
    assert _max_diff(logits, reference) < tolerance, (_max_diff(logits, reference), tolerance)


# -- the compiled real MiniLM against HuggingFace ---------------------------------------------------

@pytest.fixture(scope="module")
def sst2_dev() -> list[Example]:
    return _dev_sentences("sst2", SENTENCES)


@pytest.fixture(scope="module")
def minilm_inputs(minilm_dir, sst2_dev) -> dict[str, np.ndarray]:
    return encode(load_tokenizer(minilm_dir / "tokenizer.json", SEQ_LEN), [e.text for e in sst2_dev])


@pytest.mark.real_model
def test_compiled_minilm_equals_huggingface_at_every_exit(minilm_dir, minilm_inputs, tmp_path):
    """HuggingFace's own BertModel (hidden state after every layer, its pooler) through our exit heads'
    weights, against every exit of the compiled real MiniLM and of our PyTorch model."""
    assert minilm_inputs["attention_mask"].min() == 0  # padded rows: HuggingFace's masking is compared too
    ours = load("minilm-l6").model
    reference = huggingface_exits(BertModel.from_pretrained(minilm_dir).eval(), ours, minilm_inputs)
    compiled = _compile("minilm-l6", tmp_path / "A", "--seq-len", str(SEQ_LEN)).all_exits(minilm_inputs)
    assert compiled.shape == (SENTENCES, 6, 2)
    assert_matches_huggingface(torch_exits(ours, minilm_inputs), reference)
    assert_matches_huggingface(compiled, reference)


@pytest.mark.real_model
def test_one_minilm_artifact_equals_huggingface_at_every_length(minilm_dir, tmp_path):
    """`compile minilm-l6 --seq-len 128` (the default lengths inside): real SST-2 text cut to 1,
    2, 7, 31, 64 and 128 tokens, each run at its own length, against HuggingFace at that length."""
    ours, hf = load("minilm-l6").model, BertModel.from_pretrained(minilm_dir).eval()
    artifact = _compile("minilm-l6", tmp_path / "A", "--seq-len", "128")
    assert artifact.lengths == list(default_lengths(128))
    text = " ".join(e.text for e in _dev_sentences("sst2", 12))
    full = encode(load_tokenizer(minilm_dir / "tokenizer.json", 128), [text])
    assert full["attention_mask"].sum() == 128  # the text fills the cap
    for length in (1, 2, 7, 31, 64, 128):
        inputs = {k: v[:, :length] for k, v in full.items()}
        assert_matches_huggingface(artifact.all_exits(inputs), huggingface_exits(hf, ours, inputs))


# -- the default checkpoint (MiniLM trained with attention spans) against HuggingFace ---------------

SPAN_ATTENTION = "edgebert_reference_spans"


def _span_attention(spans: torch.Tensor, span_max: int, span_ramp: int):
    """HuggingFace's eager attention with EdgeBERT's span mask on the softmax output, written out from
    the paper: m_j = clamp((j - (T - 1) + z * S) / R + 1, 0, 1) for key j of T, rows renormalised."""

    def attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling
        probs = F.softmax(scores if attention_mask is None else scores + attention_mask, dim=-1)
        keys = key.shape[2]
        z = spans[module.layer_idx][:, None]
        mask = ((torch.arange(keys) - (keys - 1) + z * span_max) / span_ramp + 1).clamp(0, 1)
        probs = probs * mask[None, :, None, :]
        probs = probs / (probs.sum(dim=-1, keepdim=True) + 1e-30)
        return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs

    return attention


@pytest.mark.real_model
def test_compiled_default_checkpoint_equals_huggingface_with_spans(default_checkpoint_dir, sst2_dev, tmp_path):
    """HuggingFace's BertModel reads the checkpoint's weights (unpacked by our save into
    model.safetensors: backbone keys under `bert.`, stripped by its base_model_prefix) but knows no
    attention spans: its attention function is swapped (through
    AttentionInterface) for eager attention times the span mask. The spans are learned and do cut
    attention, so plain HuggingFace computes another model; that is checked too."""
    checkpoint = load(default_checkpoint_dir)
    ours, edgebert = checkpoint.model, checkpoint.model.edgebert
    assert edgebert.attention_spans is not None and edgebert.seq_len is not None
    unpacked = tmp_path / "unpacked"
    save(checkpoint, unpacked)
    encoded = encode(load_tokenizer(default_checkpoint_dir / "tokenizer.json", edgebert.seq_len),
                     [e.text for e in sst2_dev])
    # padded to the length the spans were trained at, as the reference counts them; the artifact cuts
    # the batch to the shortest compiled length that holds it, and must give the same
    inputs = {k: fit(v, edgebert.seq_len) for k, v in encoded.items()}
    AttentionInterface.register(SPAN_ATTENTION, _span_attention(
        torch.tensor(edgebert.attention_spans), edgebert.span_max, edgebert.span_ramp))
    AttentionMaskInterface.register(SPAN_ATTENTION, eager_mask)
    hf, loading = BertModel.from_pretrained(unpacked, attn_implementation=SPAN_ATTENTION,
                                            output_loading_info=True)
    assert not loading["missing_keys"]  # HuggingFace drew no weight of its own
    reference = huggingface_exits(hf.eval(), ours, inputs)
    compiled = _compile(default_checkpoint_dir, tmp_path / "A", "--seq-len", str(edgebert.seq_len))
    exits = compiled.all_exits(inputs)
    assert np.abs(reference).max() > 1.0  # trained heads: logits of a few units
    assert_matches_huggingface(torch_exits(ours, inputs), reference)
    assert_matches_huggingface(exits, reference)
    plain = huggingface_exits(BertModel.from_pretrained(unpacked).eval(), ours, inputs)
    assert _max_diff(plain, reference) > 10 * HF_TOLERANCE


# -- save, then load: the saved model itself comes back ---------------------------------------------

def _perturbed_model(config, edgebert: EdgeBertConfig) -> EdgeBertForSequenceClassification:
    """Every head drawn with a seed of its own (not the loader's), so heads a save dropped would come
    back different: off-ramps re-initialised from the pooler, a classifier drawn with the loader's seed."""
    torch.manual_seed(7)
    model = EdgeBertForSequenceClassification(config, edgebert).eval()
    with torch.no_grad():
        for param in [*model.offramps.parameters(), *model.classifier.parameters()]:
            param.normal_(0.0, 0.5)
    return model


@pytest.mark.parametrize("family", ["bert", "albert"])
def test_save_then_load_returns_the_saved_model(family, minilm_dir, tmp_path):
    config = tiny_bert_config() if family == "bert" else AlbertConfig(**{
        **ALBERT_BASE, "vocab_size": 30522, "embedding_size": 16, "hidden_size": 32, "num_hidden_layers": 3,
        "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64})
    rows = 3 if family == "bert" else 1
    edgebert = EdgeBertConfig(  # every field away from its default; spans exact in float32
        num_labels=3, exit_thresholds=[0.25, 0.5], attention_spans=[[0.0, 0.125, 0.5, 1.0]] * rows, span_max=64,
        span_ramp=16, task="qnli", seq_len=24,
        extra={"exit_predictor": {"threshold": 0.25, "table": [1, 2, 3]}, "recipe": {"lr": 1e-4}})
    original = _perturbed_model(config, dataclasses.replace(edgebert))
    save(Checkpoint(original, "tiny", minilm_dir), tmp_path / "ckpt")
    loaded = load(tmp_path / "ckpt")
    assert loaded.tokenizer_dir == tmp_path / "ckpt"
    assert loaded.model.edgebert == edgebert
    assert loaded.model.config.to_dict() == original.config.to_dict()
    saved, back = original.state_dict(), loaded.model.state_dict()
    assert sorted(back) == sorted(saved)
    assert [name for name, tensor in saved.items() if not torch.equal(back[name], tensor)] == []
    pooler = getattr(original.backbone.pooler, "dense", original.backbone.pooler)  # ALBERT's is a bare Linear
    assert not torch.equal(original.offramps[0].pooler.weight, pooler.weight)


# -- `train` through the CLI, then again distilling from the first result ---------------------------

TRAIN = ["--max-examples", "100", "--batch-size", "20", "--epochs", "1", "--lr", "3e-3", "--max-seq-len", "32",
         "--offramp-epochs", "1", "--sparsity", "0.5"]


def test_train_cli_then_train_with_that_teacher(tiny_bert_dir, tmp_path, capsys):
    tsv = tmp_path / "train.tsv"  # 140 sentences: 100 to train on, 40 held out to calibrate the exits
    tsv.write_text("".join(builtin_split(task_for("sst2"), "train").open(encoding="utf-8").readlines()[:141]))
    common = ["train", "--backbone", str(tiny_bert_dir), "--train-file", str(tsv), *TRAIN]
    assert cli.main([*common, "-o", str(tmp_path / "student")]) == 0
    assert cli.main([*common, "--teacher", str(tmp_path / "student"), "-o", str(tmp_path / "distilled")]) == 0
    assert re.search(r"wrote .*distilled: encoder sparsity 50\.0%", capsys.readouterr().out)
    plain, distilled = load(tmp_path / "student").model, load(tmp_path / "distilled").model
    for model in (plain, distilled):
        assert model.edgebert.num_labels == 2 and model.edgebert.task == "sst2" and model.edgebert.seq_len == 32
        assert model.edgebert.exit_thresholds is not None and model.edgebert.extra["exit_predictor"] is not None
    assert plain.edgebert.extra["recipe"]["teacher"] is None
    assert distilled.edgebert.extra["recipe"]["teacher"] == str(tmp_path / "student")
    # Same backbone, seed and batches: only the teacher's soft targets can make the two runs differ.
    after = distilled.state_dict()
    assert max(float((w - after[k]).abs().max()) for k, w in plain.state_dict().items()) > 1e-3


@pytest.mark.parametrize("args, match", [
    (["--teacher", "TINY"], "--teacher TINY: has 3 labels; task sst2 has 2"),
    (["--teacher", "albert-tiny"], "has a vocabulary of 30000 tokens; the student's has 30522"),
    (["--max-seq-len", "128"], "--max-seq-len 128 exceeds its 64 position embeddings"),
])
def test_train_refuses_what_would_fail_after_training(tiny_bert_dir, tmp_path, capsys, args, match):
    """Once an internal error at the first step (a teacher of other labels or tokens) or at the
    calibration after all of training (sentences longer than the positions); now one line up front."""
    args = [str(tiny_bert_dir) if a == "TINY" else a for a in args]
    match = match.replace("TINY", str(tiny_bert_dir))
    assert cli.main(["train", "--backbone", str(tiny_bert_dir), *TRAIN, *args, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert not (tmp_path / "out").exists()


# -- QNLI: sentence pairs are tokenised as pairs, and compiled equals PyTorch on them ---------------

QNLI_SEQ = 64


@pytest.fixture(scope="module")
def qnli_checkpoint(tmp_path_factory, minilm_dir) -> Path:
    def build(directory: Path) -> None:
        torch.manual_seed(3)
        model = EdgeBertForSequenceClassification(tiny_bert_config(), EdgeBertConfig(num_labels=2, task="qnli")).eval()
        save(Checkpoint(model, "tiny-qnli", minilm_dir), directory)

    return shared_build(tmp_path_factory, "tiny-qnli", build)


@pytest.fixture(scope="module")
def qnli_artifact(qnli_checkpoint, tmp_path_factory) -> Path:
    return compile_shared(tmp_path_factory, "tiny-qnli-64", str(qnli_checkpoint), "--seq-len", str(QNLI_SEQ),
                          "--lengths", "32")  # and 64: two suffice here


def test_qnli_pairs_are_encoded_as_pairs_and_compiled_equals_pytorch(qnli_checkpoint, qnli_artifact):
    pairs = _dev_sentences("qnli", 8)
    tokenizer = load_tokenizer(qnli_checkpoint / "tokenizer.json", QNLI_SEQ)
    inputs = encode(tokenizer, [e.text for e in pairs], [e.text_pair for e in pairs])
    sep = tokenizer.token_to_id("[SEP]")
    for row, example in enumerate(pairs):
        ids, types = inputs["input_ids"][row], inputs["token_type_ids"][row]
        length = int(inputs["attention_mask"][row].sum())
        first_sep = int(np.flatnonzero(ids == sep)[0])
        assert ids[length - 1] == sep and first_sep < length - 2
        assert types[:first_sep + 1].tolist() == [0] * (first_sep + 1)  # [CLS] question [SEP]
        assert types[first_sep + 1:length].tolist() == [1] * (length - first_sep - 1)  # sentence [SEP]
        assert not types[length:].any()
        second = tokenizer.encode(example.text_pair, add_special_tokens=False).ids
        assert ids[first_sep + 1:length - 1].tolist() == second[:length - first_sep - 2]
    model = load(qnli_checkpoint).model
    reference = torch_exits(model, inputs)
    artifact = Artifact.load(qnli_artifact)
    np.testing.assert_allclose(artifact.all_exits(inputs), reference, atol=TOLERANCE)
    # What `eval --task qnli` runs, on each side, reads the pairs the same way.
    np.testing.assert_array_equal(artifact_all_exits(artifact, pairs), artifact.all_exits(inputs))
    np.testing.assert_allclose(torch_all_exits(model, qnli_checkpoint / "tokenizer.json", pairs, QNLI_SEQ),
                               reference, atol=1e-6)
    questions_only = encode(tokenizer, [e.text for e in pairs])
    assert _max_diff(torch_exits(model, questions_only), reference) > 1e-3


def test_eval_cli_on_qnli_pairs(qnli_checkpoint, qnli_artifact, tmp_path):
    results = {}
    for side, model in (("pytorch", qnli_checkpoint), ("artifact", qnli_artifact)):
        out = tmp_path / f"{side}.json"
        assert cli.main(["eval", str(model), "--task", "qnli", "--limit", "8", "--seq-len", str(QNLI_SEQ),
                         "--thresholds", "0.6", "0.66", "--json", str(out)]) == 0
        results[side] = json.loads(out.read_text())
    assert results["pytorch"]["task"] == "qnli" and results["pytorch"]["examples"] == 8
    # this random model's exit entropies are about 0.69, 0.65, 0.69 nats: 0.66 leaves at layer 2
    assert [r["average_exit_layer"] for r in results["pytorch"]["results"]] == [3, 3, 2]
    assert results["artifact"]["results"] == results["pytorch"]["results"]


# -- the main job ------------------------------------------------------------------------------------

@pytest.mark.real_model
def test_demo_reports_accuracy_exits_and_cpu_without_library_warnings(default_checkpoint_dir, tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    proc = subprocess.run([sys.executable, "-m", "edgebert_tvm.cli", "demo", "--sentences", "24", "--workdir",
                           str(tmp_path / "demo")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "building the built-in checkpoint" not in out
    assert "sst2 dev, 24 sentences, compiled edgebert-sst2 (every exit evaluated):" in out
    assert re.search(r"^\s*full depth\s+\d+\.\d\d%\s+6\.00\s+1\.00\s+0 0 0 0 0 24$", out, re.M)
    threshold = load(default_checkpoint_dir).model.edgebert.exit_thresholds[0]
    assert f"early exit at entropy < {threshold:g} nats" in out and f"on {describe_host()}:" in out
    rows = {m[1]: (float(m[2]), float(m[3])) for m in re.finditer(
        r"^(pytorch|edgebert-tvm)\s+(\d+\.\d\d)%\s+(\d\.\d\d)\s+\d+\.\d\d$", out, re.M)}
    assert set(rows) == {"pytorch", "edgebert-tvm"} and rows["pytorch"] == rows["edgebert-tvm"]
    assert 1.0 <= rows["pytorch"][1] < 6.0  # some sentences leave early
    assert "same exit layer for 100.0% of sentences" in out
    plot = tmp_path / "demo" / "accuracy_vs_exit_layer.png"
    assert f"plot: {plot}" in out and plot.read_bytes()[:4] == b"\x89PNG"
    lines = (out + proc.stderr).replace("\r", "\n").splitlines()
    assert [line for line in lines if "Warning" in line] == []
