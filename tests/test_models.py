"""The PyTorch EdgeBERT model: same encoder numbers as HuggingFace, span masks, checkpoint round trip."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from edgebert_tvm.errors import EdgeBertError
from edgebert_tvm.models.checkpoint import load, load_directory
from edgebert_tvm.models.config import FIELD_TYPES, EdgeBertConfig
from edgebert_tvm.models.modeling import EdgeBertForSequenceClassification, span_mask

from .conftest import random_inputs, tiny_bert_config, torch_exits


def _last_hidden(model: EdgeBertForSequenceClassification, inputs: dict) -> torch.Tensor:
    ids, mask, types = (torch.from_numpy(inputs[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    hidden, bias = model.embed(ids, types, mask)
    for index in range(model.num_layers):
        hidden = model.layer(index, hidden, bias)
    return hidden


@pytest.mark.parametrize("name", ["albert-tiny", "bert"])
def test_encoder_forward_equals_huggingface(name):
    model = load("albert-tiny").model if name == "albert-tiny" else EdgeBertForSequenceClassification(
        tiny_bert_config(), EdgeBertConfig()).eval()
    inputs = random_inputs(3, 16, 1000)
    with torch.no_grad():
        ours = _last_hidden(model, inputs)
        theirs = model.backbone(**{k: torch.from_numpy(v) for k, v in inputs.items()}).last_hidden_state
    mask = inputs["attention_mask"][..., None].astype(bool)
    np.testing.assert_allclose(ours.numpy() * mask, theirs.numpy() * mask, atol=2e-5)


def test_span_mask_matches_formula():
    z = torch.tensor([0.0, 0.5, 1.0])
    mask = span_mask(z, seq_len=8, span_max=8, span_ramp=2)
    for h, zh in enumerate(z.tolist()):
        for j in range(8):
            expected = min(max(((j - 7) + zh * 8) / 2 + 1, 0.0), 1.0)
            assert mask[h, j].item() == pytest.approx(expected)
    assert mask[0].tolist() == [0, 0, 0, 0, 0, 0, 0.5, 1]


def test_spans_change_attention_and_rows_renormalise():
    config = tiny_bert_config(num_hidden_layers=2)
    torch.manual_seed(0)
    dense = EdgeBertForSequenceClassification(config, EdgeBertConfig()).eval()
    spans = [[0.0, 0.01, 0.5, 1.0]] * 2
    spanned = EdgeBertForSequenceClassification(config, EdgeBertConfig(attention_spans=spans, span_max=16, span_ramp=4))
    spanned.load_state_dict(dense.state_dict(), strict=False)
    full = EdgeBertForSequenceClassification(config, EdgeBertConfig(attention_spans=[[1.0] * 4] * 2, span_max=64))
    full.load_state_dict(dense.state_dict(), strict=False)
    inputs = random_inputs(2, 16, 1000)
    reference = torch_exits(dense, inputs)
    assert np.abs(torch_exits(spanned.eval(), inputs) - reference).max() > 1e-3
    np.testing.assert_allclose(torch_exits(full.eval(), inputs), reference, atol=1e-5)


def test_span_shape_is_checked():
    with pytest.raises(EdgeBertError, match="layers x heads"):
        EdgeBertForSequenceClassification(tiny_bert_config(), EdgeBertConfig(attention_spans=[[0.5] * 3]))


def test_checkpoint_round_trip(tiny_bert_dir):
    checkpoint = load_directory(tiny_bert_dir)
    assert checkpoint.tokenizer_dir == tiny_bert_dir
    assert checkpoint.model.edgebert.num_labels == 3
    again = load_directory(tiny_bert_dir)
    inputs = random_inputs(2, 16, 30522)
    np.testing.assert_array_equal(torch_exits(checkpoint.model, inputs), torch_exits(again.model, inputs))


@pytest.mark.real_model
def test_minilm_loads_bare_huggingface_layout():
    checkpoint = load("minilm-l6")
    model = checkpoint.model
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (6, 384)
    assert checkpoint.tokenizer_dir is not None
    # Off-ramps start from the trained pooler (DeeBERT); the pooler itself was loaded, not drawn.
    torch.testing.assert_close(model.offramps[0].pooler.weight, model.backbone.pooler.dense.weight)


@pytest.mark.parametrize("bad", [{"num_labels": 0}, {"exit_thresholds": [-0.1]}, {"attention_spans": [[1.5]]},
                                 {"span_ramp": 0}, {"exit_thresholds": [float("nan")]}])
def test_edgebert_config_rejects_bad_values(bad):
    with pytest.raises(EdgeBertError):
        EdgeBertConfig.from_dict(bad)


def test_every_edgebert_field_has_a_checked_type():
    assert set(FIELD_TYPES) == {f.name for f in dataclasses.fields(EdgeBertConfig)} - {"extra"}


def test_span_mask_is_the_same_for_a_shorter_padding():
    """A batch padded to 10 keys sees the first 10 columns of the mask for 32 padded keys."""
    z = torch.tensor([0.0, 0.02, 0.5])
    full = span_mask(z, 32, span_max=512, span_ramp=256)
    np.testing.assert_allclose(span_mask(z, 10, 512, 256, padded_len=32), full[:, :10])


def test_dynamic_padding_equals_full_padding_with_spans():
    config = tiny_bert_config(num_hidden_layers=2)
    spans = [[0.0, 0.02, 0.1, 1.0]] * 2
    model = EdgeBertForSequenceClassification(
        config, EdgeBertConfig(attention_spans=spans, span_max=64, span_ramp=16, seq_len=24)).eval()
    inputs = random_inputs(3, 24, 1000, seed=7)
    inputs["attention_mask"][:, 12:] = 0
    inputs = {k: v * inputs["attention_mask"] if k != "attention_mask" else v for k, v in inputs.items()}
    short = {k: v[:, :12] for k, v in inputs.items()}
    np.testing.assert_allclose(torch_exits(model, short), torch_exits(model, inputs), atol=1e-5)
