"""FoldAttentionSpan: folded spans compute what the PyTorch span-masked model does, with less work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import tvm
from edgebert_tvm.passes.fold_attention_span import LEVELS, FoldAttentionSpan, head_groups, span_masks
from edgebert_tvm.passes.fold_entropy_exit import FoldEntropyExit
from edgebert_tvm.target.registry import make_target
from edgebert_tvm.target.cpu import unscheduled_functions
from tvm import relax

from edgebert_tvm.target.targets import lowering_pipeline
from benchmarks.flops import matmul_flops
from edgebert_tvm.importer import InputSpec, import_model
from edgebert_tvm.models.checkpoint import load, save
from edgebert_tvm.models.modeling import EdgeBertForSequenceClassification, early_exit

from .conftest import INPUT_ORDER, random_inputs, read_json, run_cli, torch_exits

SEQ = 16
# S, R and the training length make every kind of head: dead (z = 0 reaches no key of 16 when
# trained at 20), partial (a prefix of keys masked) and full.
SPAN_SETTINGS = {"span_max": 16, "span_ramp": 4, "seq_len": 20}


def _random_spans(rows: int, heads: int, seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    z = rng.uniform(0, 1, size=(rows, heads))
    z[:, 0], z[:, -1] = 0.0, 1.0  # a dead and a full head in every layer
    return z.round(3).tolist()


def _with_spans(model: EdgeBertForSequenceClassification, spans: list[list[float]], **settings) -> None:
    for key, value in settings.items():
        setattr(model.edgebert, key, value)
    model.edgebert.attention_spans = spans
    model.span_z = torch.nn.Parameter(torch.tensor(spans))


def _vm(mod: tvm.IRModule) -> relax.VirtualMachine:
    target = make_target("llvm")
    with target:
        lowered = lowering_pipeline(target)(mod)
    assert unscheduled_functions(lowered) == []
    return relax.VirtualMachine(tvm.compile(lowered, target, relax_pipeline=None), tvm.cpu())


def _all_exits(vm: relax.VirtualMachine, inputs: dict[str, np.ndarray]) -> np.ndarray:
    return vm["all_exits"](*[tvm.runtime.tensor(inputs[k]) for k in INPUT_ORDER]).numpy()


def _tiny(name: str, tiny_bert_dir) -> EdgeBertForSequenceClassification:
    model = load(tiny_bert_dir if name == "tiny-bert" else name).model
    rows = model.arch.num_distinct_layers(model.config)
    _with_spans(model, _random_spans(rows, model.config.num_attention_heads, seed=7), **SPAN_SETTINGS)
    return model


@pytest.mark.parametrize("name", ["tiny-bert", "albert-tiny"])
def test_every_level_matches_pytorch_and_removes_work(name, tiny_bert_dir):
    model = _tiny(name, tiny_bert_dir)
    inputs = random_inputs(2, SEQ, 30000, seed=5)
    reference = torch_exits(model, inputs)
    flops = {}
    for level in LEVELS:
        mod = FoldAttentionSpan(model.edgebert.attention_spans, level=level, span_max=16, span_ramp=4,
                                padded_len=20)(import_model(model, InputSpec(2, SEQ)))
        flops[level] = matmul_flops(mod["layer_0"])
        np.testing.assert_allclose(_all_exits(_vm(mod), inputs), reference, atol=1e-4)
    assert flops["heads"] < flops["mask"] and flops["keys"] < flops["heads"]


# Distance spans: S 16, R 4 at 16 tokens make dead heads (z = 0), bands of every reach, and full heads.
DISTANCE_SETTINGS = {"span_max": 16, "span_ramp": 4, "span_form": "distance"}


@pytest.mark.parametrize("name", ["tiny-bert", "albert-tiny"])
def test_distance_spans_at_every_level_match_pytorch_and_band_the_work(name, tiny_bert_dir):
    model = load(tiny_bert_dir if name == "tiny-bert" else name).model
    rows, heads = model.arch.num_distinct_layers(model.config), model.config.num_attention_heads
    _with_spans(model, _random_spans(rows, heads, seed=11), **DISTANCE_SETTINGS)
    inputs = random_inputs(3, SEQ, 30000, seed=4)
    reference = torch_exits(model, inputs)
    work, flops = {}, {}
    for level in LEVELS:
        mod = FoldAttentionSpan(model.edgebert.attention_spans, 16, 4, level=level,
                                form="distance")(import_model(model, InputSpec(3, SEQ)))
        work[level], flops[level] = _attention_products(mod["layer_0"]), matmul_flops(mod["layer_0"])
        np.testing.assert_allclose(_all_exits(_vm(mod), inputs), reference, atol=1e-4)
    assert work["heads"] < work["mask"] and work["keys"] < work["heads"]
    assert flops["heads"] < flops["mask"] and flops["keys"] < flops["heads"]


def _attention_products(func: relax.Function) -> int:
    """Query-key scores a layer computes: the size of its softmax inputs, dense (B, H, T, T) or banded."""
    return sum(int(np.prod([int(d) for d in b.var.ty.shape])) for block in func.body.blocks for b in block.bindings
               if isinstance(b.value, relax.Call) and b.value.op.name == "relax.nn.softmax")


def test_distance_spans_mean_the_same_at_any_padding(tiny_bert_dir):
    """A sentence gives the same logits alone and padded into a longer batch (key spans do not)."""
    model = load(tiny_bert_dir).model.eval()
    _with_spans(model, _random_spans(3, 4, seed=2), **DISTANCE_SETTINGS)
    inputs = random_inputs(1, 12, 30000, seed=3)
    inputs["attention_mask"][:] = 1
    padded = {k: np.pad(v, ((0, 0), (0, 8))) for k, v in inputs.items()}
    np.testing.assert_allclose(torch_exits(model, padded), torch_exits(model, inputs), atol=1e-5)


def test_cli_compiles_a_distance_span_checkpoint_into_bands(tmp_path, tiny_bert_dir):
    checkpoint = load(tiny_bert_dir)
    _with_spans(checkpoint.model, [[0.0, 0.25, 0.5, 1.0]] * 3, **DISTANCE_SETTINGS)
    save(checkpoint, tmp_path / "ckpt")
    run_cli("compile", str(tmp_path / "ckpt"), "-o", str(tmp_path / "art"), "--seq-len", "16", check=True)
    plan = read_json(tmp_path / "art" / "metadata.json")["pass_reports"]["attention_spans"]
    assert plan["form"] == "distance"
    assert plan["layer_groups"][0]["heads_removed"] == [0]
    assert plan["layer_groups"][0]["key_ranges"] == [{"heads": [1], "reach": 3}, {"heads": [2], "reach": 7},
                                                     {"heads": [3], "reach": None}]


def test_distance_plan_removes_dead_heads_and_bands_by_reach():
    z = np.array([0.0, 0.25, 0.5, 1.0])  # reach ceil(z S) - 1 at S 16: dead, 3, 7, full
    masks = span_masks(z, SEQ, 16, 4, None, "distance")
    groups = head_groups(masks, "keys")
    assert [(g.heads, g.reach) for g in groups] == [((1,), 3), ((2,), 7), ((3,), None)]
    assert [g.heads for g in head_groups(masks, "heads")] == [(1, 2, 3)]


def test_plan_has_dead_partial_and_full_heads(tiny_bert_dir):
    model = _tiny("tiny-bert", tiny_bert_dir)
    masks = span_masks(np.asarray(model.edgebert.attention_spans[0]), SEQ, 16, 4, 20)
    groups = head_groups(masks, "keys")
    kept = [h for g in groups for h in g.heads]
    assert 0 not in kept and masks.shape[0] - 1 in kept
    assert {g.first_key for g in groups} >= {0} and max(g.first_key for g in groups) > 0


@pytest.mark.real_model
def test_minilm_random_spans_match_pytorch(minilm_dir):
    torch.manual_seed(0)
    model = load(minilm_dir).model
    _with_spans(model, _random_spans(6, 12, seed=3), span_max=64, span_ramp=16, seq_len=48)
    inputs = random_inputs(1, 32, 30000, seed=2)
    mod = FoldAttentionSpan(model.edgebert.attention_spans, 64, 16, 48)(import_model(model, InputSpec(1, 32)))
    np.testing.assert_allclose(_all_exits(_vm(mod), inputs), torch_exits(model, inputs), atol=1e-4)


@pytest.mark.parametrize("spans_first", [True, False])
def test_composes_with_early_exit_in_either_order(spans_first, tiny_bert_dir):
    model = _tiny("tiny-bert", tiny_bert_dir)
    spans, exits = FoldAttentionSpan(model.edgebert.attention_spans, 16, 4, 20), FoldEntropyExit(0.6)
    passes = [spans, exits] if spans_first else [exits, spans]
    vm = _vm(tvm.transform.Sequential(passes)(import_model(model, InputSpec(1, SEQ))))
    inputs = random_inputs(6, SEQ, 30000, seed=9)
    for row in range(6):
        one = [inputs[k][row:row + 1] for k in INPUT_ORDER]
        logits, layer = vm["main"](*[tvm.runtime.tensor(a) for a in one])
        ref_logits, ref_layer = early_exit(model, *[torch.from_numpy(a) for a in one], [0.6] * 2)
        assert int(layer.numpy()[0]) == ref_layer
        np.testing.assert_allclose(logits.numpy(), ref_logits.numpy(), atol=1e-4)


def test_cli_folds_spans_from_file_and_records_the_plan(tmp_path, tiny_bert_dir):
    spans = tmp_path / "spans.json"
    spans.write_text(json.dumps(_random_spans(3, 4, seed=1)))
    out = tmp_path / "art"
    run_cli("compile", str(tiny_bert_dir), "-o", str(out), "--seq-len", "16", "--spans", str(spans), check=True)
    meta = read_json(out / "metadata.json")
    assert "edgebert.FoldAttentionSpan" in meta["passes"]
    plan = meta["pass_reports"]["attention_spans"]
    assert plan["level"] == "keys" and len(plan["layer_groups"]) == 3


@pytest.mark.parametrize("content, message", [
    ([[0.5] * 4] * 2, "shape [3, 4]"),
    ([[0.5] * 3] * 3, "shape [3, 4]"),
    ([[0.5, 0.5, 0.5, 1.5]] * 3, "lie in [0, 1]"),
    ({"attention_spans": "all"}, "list of span rows"),
])
def test_bad_spans_are_one_line_errors(content, message, tmp_path, tiny_bert_dir):
    spans = tmp_path / "spans.json"
    spans.write_text(json.dumps(content))
    out = tmp_path / "art"
    proc = run_cli("compile", str(tiny_bert_dir), "-o", str(out), "--seq-len", "16", "--spans", str(spans))
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()


def test_bad_span_file_and_level(tmp_path, tiny_bert_dir):
    broken = tmp_path / "spans.json"
    broken.write_text("[[0.1, ")
    proc = run_cli("compile", str(tiny_bert_dir), "-o", str(tmp_path / "a"), "--spans", str(broken))
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr
    proc = run_cli("compile", str(tiny_bert_dir), "-o", str(tmp_path / "a"), "--span-folding", "rows")
    assert proc.returncode == 2

