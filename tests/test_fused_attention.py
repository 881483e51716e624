"""FuseAttention: one kernel for scores, scale, padding bias, softmax and the weighted sum of values,
against numpy at awkward sizes and inside a whole compiled model."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from edgebert_tvm.importer import InputSpec, import_model
from edgebert_tvm.models.checkpoint import load
from edgebert_tvm.target.cpu.attention import FuseAttention, attention_kernel
from edgebert_tvm.target.registry import make_target
from edgebert_tvm.target.targets import lowering_pipeline


def _reference(q, kt, v, bias, heads, scale):
    b = bias.shape[0]
    scores = (q @ kt) * scale + np.repeat(bias.reshape(b, 1, -1), heads, axis=0)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    return (probs / probs.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("batch, heads, sq, sk, d", [(1, 12, 128, 128, 32), (2, 4, 1, 24, 64), (2, 3, 7, 40, 16),
                                                     (1, 2, 5, 5, 8)])
@pytest.mark.parametrize("lanes", [16, 8])
def test_kernel_matches_numpy(batch, heads, sq, sk, d, lanes):
    """Rows, key and value tiles that do not fill a vector, one query row (the narrowed final layer),
    padded keys, and the tiles of AVX-512 (16 lanes) and AVX2 (8)."""
    rng = np.random.default_rng(sq * sk + d)
    bh = batch * heads
    q, kt, v = (rng.standard_normal(s, dtype=np.float32) for s in ((bh, sq, d), (bh, d, sk), (bh, sk, d)))
    bias = np.zeros((batch, 1, 1, sk), np.float32)
    bias[-1, ..., sk // 2:] = np.finfo(np.float32).min  # the last row's second half is padding
    kernel = attention_kernel(bh, heads, sq, sk, d, 0.125, lanes).with_attr("global_symbol", "main")
    library = tvm.tirx.build(tvm.IRModule({"main": kernel}), target=make_target("llvm"))
    out = tvm.runtime.empty((bh, sq, d), "float32", tvm.cpu())
    library["main"](*[tvm.runtime.tensor(a) for a in (q, kt, v, bias)], out)
    np.testing.assert_allclose(out.numpy(), _reference(q, kt, v, bias, heads, 0.125), rtol=1e-5, atol=1e-5)


def test_every_layer_of_the_model_runs_one_fused_kernel(tiny_bert_dir):
    """The tiny BERT's three layers each call the fused kernel instead of the five kernels (the
    compiled model's outputs against PyTorch are the other test files' differential tests)."""
    target = make_target("llvm")
    with target:
        lowered = lowering_pipeline(target)(import_model(load(tiny_bert_dir).model, InputSpec(2, 16)))
    names = [gv.name_hint for gv, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert any(n.startswith("fused_attention") for n in names)
    assert not any("softmax" in n for n in names)
    calls = sum(lowered[name].script().count("fused_attention") for name in ("layer_0", "layer_1", "layer_2"))
    assert calls == 3


def _chain(axis: int) -> tvm.IRModule:
    """The frontend's attention chain on its own: batch 2, 3 heads, 8 tokens, head size 16."""
    b, h, s, d = 2, 3, 8, 16
    bb = relax.BlockBuilder()
    q, kt, v = (relax.Var(n, relax.TensorType(shape, "float32"))
                for n, shape in (("q", (b * h, s, d)), ("kt", (b * h, d, s)), ("v", (b * h, s, d))))
    bias = relax.Var("bias", relax.TensorType((b, 1, 1, s), "float32"))
    with bb.function("main", [q, kt, v, bias]):
        with bb.dataflow():
            scores = bb.emit(relax.op.reshape(relax.op.matmul(q, kt), (b, h, s, s)))
            probs = bb.emit(relax.op.nn.softmax(relax.op.add(relax.op.multiply(scores, relax.const(0.25, "float32")),
                                                             bias), axis=axis))
            flat = bb.emit(relax.op.reshape(relax.op.broadcast_to(probs, (b, h, s, s)), (b * h, s, s)))
            out = bb.emit_output(relax.op.matmul(flat, v))
        bb.emit_func_output(out)
    return bb.finalize()


@pytest.mark.parametrize("axis, fused", [(-1, True), (2, False)])
def test_only_a_softmax_over_the_keys_is_fused(axis, fused):
    target = make_target("llvm")
    mod = _chain(axis)
    names = [gv.name_hint for gv in FuseAttention(target)(mod).get_global_vars()]
    assert any(name.startswith("fused_attention") for name in names) == fused
    rng = np.random.default_rng(4)
    q, kt, v = (rng.standard_normal(s, dtype=np.float32) for s in ((6, 8, 16), (6, 16, 8), (6, 8, 16)))
    bias = np.zeros((2, 1, 1, 8), np.float32)
    bias[1, ..., 5:] = np.finfo(np.float32).min
    with target:
        lowered = lowering_pipeline(target)(mod)
    vm = relax.VirtualMachine(tvm.compile(lowered, target, relax_pipeline=None), tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(a) for a in (q, kt, v, bias)]).numpy()
    scores = ((q @ kt) * 0.25).reshape(2, 3, 8, 8) + bias
    probs = np.exp(scores - scores.max(axis, keepdims=True))
    expected = (probs / probs.sum(axis, keepdims=True)).reshape(6, 8, 8) @ v
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
