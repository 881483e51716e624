"""NarrowFinalLayer: the last layer computes only the [CLS] row its exit reads, keys and values for
every token; the compiled model still computes what the PyTorch model does, at every length, with
early exit and with folded spans; a batch and a shared layer are left as they were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax

from edgebert_tvm.compiler import CompileOptions, compile_model, graph_module
from edgebert_tvm.contract import ALL_EXITS, EXIT, LAYER, MAIN, block_calls, block_functions
from edgebert_tvm.importer import InputSpec, import_model
from edgebert_tvm.models.checkpoint import Checkpoint, load
from edgebert_tvm.passes.narrow_final_layer import NARROWED, NarrowFinalLayer

from .conftest import INPUT_ORDER, random_inputs, torch_exits
from .test_fuse_qkv import _calls, _with_random_spans

SEQ = 16
TOLERANCE = 1e-4
MODELS = ["tiny-bert", "albert-tiny"]


def _checkpoint(name: str, tiny_bert_dir: Path) -> Checkpoint:
    return load(tiny_bert_dir if name == "tiny-bert" else name)


def _weight_matmul_rows(func: relax.Function) -> list[int]:
    """Rows of the left operand of every matmul by a (transposed) constant weight, in order."""
    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    rows = []
    for call in _calls(func, "relax.matmul"):
        weight = bindings.get(call.args[1], call.args[1])
        if isinstance(weight, relax.Call) and isinstance(weight.args[0], tvm.ir.expr.Constant):
            rows.append(int(call.args[0].ty.shape[-2]))
    return rows


def _run(compiled, entry: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    out = vm[entry](*[tvm.runtime.tensor(inputs[k]) for k in INPUT_ORDER])
    return (out[0] if entry.startswith(MAIN) else out).numpy()  # main: (logits, exit layer)


def test_last_layer_computes_queries_and_ffn_for_one_row_keys_for_all(tiny_bert_dir):
    model = load(tiny_bert_dir).model
    mod = import_model(model, InputSpec(1, SEQ))
    narrowed = NarrowFinalLayer()(mod)
    layers = [gv.name_hint for kind, gv in block_calls(narrowed[ALL_EXITS], narrowed) if kind == LAYER]
    assert layers == [gv.name_hint for kind, gv in block_calls(narrowed[MAIN], narrowed) if kind == LAYER]
    *before, last = layers
    assert last.endswith(NARROWED) and not any(n.endswith(NARROWED) for n in before)
    hidden = model.config.hidden_size
    assert [int(d) for d in narrowed[last].ret_ty.shape] == [1, 1, hidden]
    # Q, K, V, output projection, FFN in and out: only K and V read every token
    assert _weight_matmul_rows(narrowed[last]) == [1, SEQ, SEQ, 1, 1, 1]
    assert _weight_matmul_rows(mod[layers[0]]) == [SEQ] * 6
    last_exit = max(block_functions(narrowed, EXIT).items(), key=lambda item: int(item[1].attrs["edgebert.layer"]))[1]
    assert [int(d) for d in last_exit.params[0].ty.shape] == [1, 1, hidden]
    assert {gv.name_hint for gv in block_functions(narrowed, LAYER)} == set(layers)  # the whole last layer gone
    assert NarrowFinalLayer()(narrowed).same_as(narrowed)  # nothing left to narrow


@pytest.mark.parametrize("name, batch", [("tiny-bert", 2), ("albert-tiny", 1)])
def test_a_batch_and_a_shared_layer_are_left_whole(name, batch, tiny_bert_dir):
    """(batch x tokens, hidden) matmuls: one token's rows are not a prefix once batch > 1; ALBERT's
    layer is shared with the layers before it (a copy would store its weights again)."""
    mod = import_model(_checkpoint(name, tiny_bert_dir).model, InputSpec(batch, SEQ))
    assert NarrowFinalLayer()(mod).same_as(mod)


@pytest.mark.parametrize("spans", [False, True])
def test_compiled_model_matches_pytorch_at_every_length_with_exits(spans, tiny_bert_dir):
    checkpoint = load(tiny_bert_dir)
    if spans:
        checkpoint = _with_random_spans(checkpoint, seed=3)
    options = CompileOptions(seq_len=SEQ, lengths=(8, SEQ), exit_thresholds=[0.0])
    mod, _, passes, *_ = graph_module(checkpoint, options)
    assert "edgebert.NarrowFinalLayer" in passes
    last = [gv.name_hint for kind, gv in block_calls(mod[ALL_EXITS], mod) if kind == LAYER][-1]
    assert last.endswith(NARROWED)
    compiled = compile_model(checkpoint, options)
    assert compiled.unscheduled == []
    vocab = checkpoint.model.config.vocab_size
    for length in (8, SEQ):
        inputs = random_inputs(1, length, vocab, seed=length)
        entry = ALL_EXITS if length == SEQ else f"{ALL_EXITS}__len{length}"
        np.testing.assert_allclose(_run(compiled, entry, inputs), torch_exits(checkpoint.model, inputs), atol=TOLERANCE)
        main = MAIN if length == SEQ else f"{MAIN}__len{length}"  # threshold 0: every sentence runs every layer
        np.testing.assert_allclose(_run(compiled, main, inputs), torch_exits(checkpoint.model, inputs)[:, -1],
                                   atol=TOLERANCE)
