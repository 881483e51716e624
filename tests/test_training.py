"""The training recipe on a tiny config: it learns, resumes, writes a loadable checkpoint; bad data fails cleanly."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgebert_tvm import cli
from edgebert_tvm.data import builtin_split, read_tsv, task_for
from edgebert_tvm.artifact import Artifact
from edgebert_tvm.evaluate import artifact_all_exits, evaluate_exits, exit_layers
from edgebert_tvm.exit_predictor import build_predictor
from edgebert_tvm.inputs import encode, load_tokenizer
from edgebert_tvm.models.inference import torch_all_exits
from edgebert_tvm.models.checkpoint import load
from edgebert_tvm.errors import EdgeBertError
from edgebert_tvm.training.config import DEFAULT_RECIPE, recipe_id
from edgebert_tvm.training.pruning import cubic_sparsity, encoder_sparsity, prune_embeddings
from edgebert_tvm.training.recipe import CALIBRATION_THRESHOLDS, threshold_within
from edgebert_tvm.fileio import exclusive_lock
from edgebert_tvm.models.builtins import trained_dir
from edgebert_tvm.target.edgebert import pipeline
from edgebert_tvm.training import recipe
from edgebert_tvm.training.recipe import STATE_DIR, RecipeConfig, Trainer, build_trained_builtin
from edgebert_tvm.training.state import load_state, save_state

from .conftest import shared_build

TINY = dict(max_examples=200, batch_size=20, epochs=20, lr=3e-3, max_seq_len=32, sparsity=0.5, embedding_keep=0.5,
            offramp_epochs=2, offramp_lr=3e-3, save_every=25)


def _train(backbone: Path, out: Path, **overrides) -> Trainer:
    trainer = Trainer(RecipeConfig(backbone=str(backbone), **{**TINY, **overrides}), out)
    trainer.run()
    return trainer


@pytest.fixture(scope="module")
def trained_tiny(tiny_bert_dir, tmp_path_factory) -> Path:
    return shared_build(tmp_path_factory, "trained-tiny", lambda out: _train(tiny_bert_dir, out))


def test_tiny_recipe_learns_and_writes_a_checkpoint(trained_tiny):
    out = trained_tiny
    checkpoint = load(out)
    extra = checkpoint.model.edgebert.extra
    assert extra["loss"]["stage1_last"] < extra["loss"]["stage1_first"] - 0.1
    assert extra["loss"]["stage2_last"] < extra["loss"]["stage2_first"]
    assert encoder_sparsity(checkpoint.model) == pytest.approx(0.5, abs=0.01)
    embeddings = checkpoint.model.backbone.embeddings.word_embeddings.weight
    assert float((embeddings == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    spans = checkpoint.model.edgebert.attention_spans
    assert len(spans) == 3 and all(0.0 <= z <= 1.0 for row in spans for z in row)
    edgebert = checkpoint.model.edgebert
    assert (edgebert.span_form, edgebert.span_max, edgebert.span_ramp) == ("distance", 32 + 16, 16)
    assert 0.0 <= extra["dev_accuracy"] <= 1.0  # final exit on SST-2 dev
    task = task_for("sst2")
    seen = read_tsv(builtin_split(task, "train"), task)
    picked = np.random.default_rng(0).permutation(len(seen))[:200]
    examples = [seen[i] for i in sorted(picked)]
    logits = torch_all_exits(checkpoint.model, out / "tokenizer.json", examples, 32)
    full, = evaluate_exits(logits, np.array([e.label for e in examples]), [])
    assert full.accuracy > 0.6  # chance is ~0.55 on this subset's majority class


@pytest.mark.parametrize("stage", [1, 2])
def test_interrupted_training_resumes_to_the_same_result(tiny_bert_dir, tmp_path, monkeypatch, stage):
    settings = dict(epochs=2, offramp_epochs=2, save_every=5)  # 10 steps per epoch, saves every 5
    _train(tiny_bert_dir, tmp_path / "straight", **settings)

    class Interrupt(Exception):
        pass

    loss_name = f"_stage{stage}_loss"
    original = getattr(Trainer, loss_name)
    calls = {"n": 0}

    def interrupted(self, batch):
        calls["n"] += 1
        if calls["n"] == 13:  # after the saves at steps 5 and 10 of this stage
            raise Interrupt()
        return original(self, batch)

    monkeypatch.setattr(Trainer, loss_name, interrupted)
    with pytest.raises(Interrupt):
        _train(tiny_bert_dir, tmp_path / "resumed", **settings)
    state = tmp_path / f".resumed{STATE_DIR}"
    assert (state / "state.json").is_file() and not (tmp_path / "resumed").exists()
    monkeypatch.setattr(Trainer, loss_name, original)
    _train(tiny_bert_dir, tmp_path / "resumed", **settings)
    assert not state.exists()
    a, b = load(tmp_path / "straight").model, load(tmp_path / "resumed").model
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-5, err_msg=name)


def test_eval_cli_for_checkpoint_and_artifact(trained_tiny, tmp_path, capsys):
    assert cli.main(["eval", str(trained_tiny), "--limit", "40", "--seq-len", "32", "--thresholds", "0.2", "0.6",
                     "--plot", str(tmp_path / "acc.png"), "--json", str(tmp_path / "eval.json")]) == 0
    torch_results = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert [r["threshold"] for r in torch_results] == ["full depth", 0.2, 0.6]
    assert sum(torch_results[1]["exit_layer_counts"]) == 40
    assert (tmp_path / "acc.png").read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["compile", str(trained_tiny), "-o", str(tmp_path / "A"), "--seq-len", "32"]) == 0
    assert cli.main(["eval", str(tmp_path / "A"), "--limit", "40", "--thresholds", "0.2", "0.6",
                     "--json", str(tmp_path / "eval-artifact.json")]) == 0
    artifact_results = json.loads((tmp_path / "eval-artifact.json").read_text())["results"]
    for ours, theirs in zip(artifact_results, torch_results):
        assert ours["exit_layer_counts"] == theirs["exit_layer_counts"]
        assert ours["accuracy"] == pytest.approx(theirs["accuracy"])


def _two_class_logits(entropy_nats: float, label: int) -> list[float]:
    """Logits of a 2-class exit predicting `label` at this entropy (bisection on the margin)."""
    low, high = 0.0, 40.0
    for _ in range(100):
        margin = (low + high) / 2
        p = 1 / (1 + np.exp(-margin))
        low, high = (margin, high) if -p * np.log(p) - (1 - p) * np.log(1 - p) > entropy_nats else (low, margin)
    return [margin, 0.0] if label == 0 else [0.0, margin]


def test_threshold_within_keeps_the_largest_that_costs_no_more_than_the_budget():
    """Ten sentences, every final exit right; exit 1 right at 0.1 nats but one wrong at 0.32 nats:
    thresholds up to 0.3 exit it at layer 2 (no cost), 0.35 exits it wrongly (10 points > 0.75)."""
    labels = np.array([0, 1] * 5)
    logits = np.array([[_two_class_logits(0.32 if i == 3 else 0.1, 1 - label if i == 3 else label),
                        _two_class_logits(0.05, label)] for i, label in enumerate(labels)])
    assert threshold_within(logits, labels) == 0.3
    assert threshold_within(logits, labels, max_drop=0.1) == CALIBRATION_THRESHOLDS[-1]  # a budget of 1 sentence
    logits[:, 0] = logits[:, 0, ::-1]  # exit 1 wrong everywhere: only thresholds below 0.1 nats keep accuracy
    assert threshold_within(logits, labels) == 0.05


def test_cubic_schedule():
    assert cubic_sparsity(0, 100, 0.5) == 0.0
    assert cubic_sparsity(10, 100, 0.5) == 0.0
    assert 0.0 < cubic_sparsity(30, 100, 0.5) < cubic_sparsity(60, 100, 0.5) < 0.5
    assert cubic_sparsity(85, 100, 0.5) == pytest.approx(0.5)


def _fails(capsys, *args: str, match: str) -> None:
    assert cli.main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


def test_bad_training_data(capsys, tiny_bert_dir, tmp_path):
    common = ["train", "--backbone", str(tiny_bert_dir), "-o", str(tmp_path / "out")]
    _fails(capsys, *common, "--train-file", str(tmp_path / "missing.tsv"), match="no such TSV")
    (tmp_path / "cols.tsv").write_text("text\tlabel\nhello\t1\n")
    _fails(capsys, *common, "--train-file", str(tmp_path / "cols.tsv"), match="missing column(s) sentence")
    (tmp_path / "labels.tsv").write_text("sentence\tlabel\nhello\t1\nbye\t7\n")
    _fails(capsys, *common, "--train-file", str(tmp_path / "labels.tsv"), match="label '7' is not one of 0, 1")
    _fails(capsys, *common, "--task", "mrpc", match="unknown task 'mrpc'")
    _fails(capsys, *common, "--sparsity", "1.5", match="--sparsity must be in [0, 1)")
    _fails(capsys, *common, "--span-form", "query", match="--span-form must be one of distance, key")
    assert not (tmp_path / "out").exists()


def test_key_spans_that_cannot_cut_are_warned_about(capsys):
    RecipeConfig(span_form="key", span_ramp=256, max_seq_len=64).validate()
    assert "can cut no key" in capsys.readouterr().err
    RecipeConfig(span_form="key", span_ramp=16, max_seq_len=64).validate()
    RecipeConfig(span_ramp=256, max_seq_len=64).validate()  # distance spans
    assert capsys.readouterr().err == ""


def test_trained_builtins_are_never_built_silently(tmp_path, monkeypatch, capsys):
    """In an empty cache the default loads from its shipped packed copy, and the teacher, which does
    not ship, is an error that says how to build it; nothing trains."""
    monkeypatch.setenv("EDGEBERT_TVM_CACHE", str(tmp_path))
    monkeypatch.setattr(recipe, "Trainer", lambda *args: pytest.fail("a built-in was trained"))
    default = load("edgebert-sst2")
    assert default.source == "edgebert-sst2" and default.model.edgebert.exit_thresholds
    with pytest.raises(EdgeBertError, match="edgebert-tvmc build-default minilm-sst2-teacher"):
        load("minilm-sst2-teacher")
    assert cli.main(["compile", "minilm-sst2-teacher", "-o", str(tmp_path / "A")]) == 2
    assert "build-default minilm-sst2-teacher" in capsys.readouterr().err
    assert cli.main(["build-default", "minilm"]) == 2
    assert "not a trained built-in" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    # The cache directory is named by the recipe: any changed setting names a new checkpoint.
    assert recipe_id(DEFAULT_RECIPE) == recipe_id(dataclasses.replace(DEFAULT_RECIPE))
    assert recipe_id(DEFAULT_RECIPE) != recipe_id(dataclasses.replace(DEFAULT_RECIPE, lr=DEFAULT_RECIPE.lr * 2))


def test_tensors_and_progress_of_different_saves_are_refused(tmp_path):
    """A kill between the state's two renames leaves new tensors beside old progress: caught at resume."""
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    save_state(tmp_path / "a", model, optimizer, {"stage": 1, "step": 25, "log": []})
    save_state(tmp_path / "b", model, optimizer, {"stage": 1, "step": 50, "log": []})
    assert load_state(tmp_path / "a", model, optimizer)["step"] == 25
    shutil.copy(tmp_path / "b" / "state.safetensors", tmp_path / "a" / "state.safetensors")
    with pytest.raises(EdgeBertError, match="corrupt training state .its tensors are from stage 1 step 50"):
        load_state(tmp_path / "a", model, optimizer)


def test_two_trainers_of_one_output_do_not_share_its_state(capsys, tiny_bert_dir, tmp_path):
    """They would resume from and save into the same `.out.train-state`: the second is refused."""
    with exclusive_lock(tmp_path / ".out.train.lock", "training out", wait=False):
        assert cli.main(["train", "--backbone", str(tiny_bert_dir), "-o", str(tmp_path / "out"),
                         "--max-examples", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"edgebert-tvmc: error: {tmp_path}: another process is training out (it holds .out.train.lock)"]
    assert not (tmp_path / "out").exists()


def test_a_second_default_build_waits_for_the_first_and_reuses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEBERT_TVM_CACHE", str(tmp_path))
    directory = trained_dir()
    holding = threading.Event()

    def first_build() -> None:
        with exclusive_lock(tmp_path / f".{directory.name}.build.lock", "building it", wait=True):
            holding.set()
            time.sleep(0.5)
            directory.mkdir()
            (directory / "model.safetensors").write_bytes(b"")

    builder = threading.Thread(target=first_build)
    builder.start()
    holding.wait()
    monkeypatch.setattr(recipe, "Trainer", lambda *args: pytest.fail("the default checkpoint was built twice"))
    assert build_trained_builtin() == directory
    builder.join()


def test_pack_calibrates_the_exits_again_for_the_af8_weights(trained_tiny, tmp_path, capsys):
    """What compile deploys is the packed model, so its threshold is calibrated on that model, on the
    recipe's held-out sentences, as training calibrated the float one."""
    assert cli.main(["pack", str(trained_tiny), "-o", str(tmp_path / "P")]) == 0
    assert "exit threshold recalibrated for the AF8 weights" in capsys.readouterr().out
    packed = load(tmp_path / "P").model
    config = RecipeConfig.from_dict(packed.edgebert.extra["recipe"])
    assert config == RecipeConfig.from_dict(load(trained_tiny).model.edgebert.extra["recipe"])
    _, held_out = recipe._split_examples(config, task_for("sst2"))
    threshold, _, score = recipe.calibrate_exits(packed, tmp_path / "P" / "tokenizer.json", held_out,
                                                 config.max_seq_len, statistic=config.exit_predictor)
    assert packed.edgebert.exit_thresholds == (None if threshold is None else [threshold])
    assert packed.edgebert.extra["exit_predictor_held_out"] == score


def test_a_recorded_recipe_reads_back_with_the_values_it_predates():
    recorded = dataclasses.asdict(DEFAULT_RECIPE)
    for field in ("span_form", "offramp_distill_alpha", "exit_predictor"):
        del recorded[field]
    assert RecipeConfig.from_dict(recorded) == DEFAULT_RECIPE
    with pytest.raises(EdgeBertError, match="fields this edgebert-tvm does not know: warp_drive"):
        RecipeConfig.from_dict({**recorded, "warp_drive": 1})


def test_the_edgebert_chip_calibrates_its_own_exit_threshold_at_compile(trained_tiny, tmp_path, monkeypatch):
    """With the checkpoint's threshold, `compile --target edgebert` calibrates the chip's own on the
    chip's logits for the recipe's held-out sentences (the recipe's rule), compiles it in, and fits the
    predictor DVFS uses on them."""
    monkeypatch.setattr(pipeline, "CHIP_EXIT_SENTENCES", 300)  # of 1,000: the suite's time
    checkpoint = load(trained_tiny).model
    assert checkpoint.edgebert.exit_thresholds is not None  # the recipe calibrated the float model's
    assert cli.main(["compile", str(trained_tiny), "--target", "edgebert", "--seq-len", "32", "--lengths", "16", "32",
                     "-o", str(tmp_path / "A")]) == 0
    artifact = Artifact.load(tmp_path / "A")
    chip = artifact.metadata["accelerator"]["exit_calibration"]
    config = RecipeConfig.from_dict(checkpoint.edgebert.extra["recipe"])
    held_out = recipe.held_out_examples(config)[:300]
    assert chip["sentences"] == len(held_out) == 300
    logits = artifact_all_exits(artifact, held_out)  # the chip's, as the deployed artifact computes them
    labels = np.array([e.label for e in held_out])
    threshold = threshold_within(logits, labels)
    layers = checkpoint.num_layers
    assert chip["threshold"] == threshold
    assert chip["checkpoint_thresholds"] == checkpoint.edgebert.exit_thresholds * (layers - 1)
    assert artifact.metadata["exit_thresholds"] == [threshold] * (layers - 1)
    assert artifact.metadata["exit_predictor"] == dataclasses.asdict(build_predictor(logits, threshold,
                                                                                     config.exit_predictor))
    # main compares the chip's entropy with the chip's threshold: the exits follow it
    tokenizer = load_tokenizer(artifact.tokenizer_path, 32)
    ran = artifact.run(encode(tokenizer, [e.text for e in held_out[:100]]))
    assert (ran.exit_layer == exit_layers(logits[:100], threshold)).mean() >= 0.98


def test_students_of_one_backbone_share_their_embeddings(trained_tiny, tiny_bert_dir):
    """The recipe prunes the backbone's word embeddings once by magnitude and freezes the embeddings,
    so every student of a backbone, whatever its task, stores the same tables: the edgebert chip holds
    one copy in eNVM for all of them (benchmarks/edgebert_multitask.py costs it)."""
    backbone, student = load(tiny_bert_dir).model, load(trained_tiny).model
    prune_embeddings(backbone, TINY["embedding_keep"])
    for (name, ours), theirs in zip(student.backbone.embeddings.state_dict().items(),
                                    backbone.backbone.embeddings.state_dict().values()):
        assert torch.equal(ours, theirs), name
