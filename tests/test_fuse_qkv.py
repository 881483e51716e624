"""FuseQKV: one matmul for the Q, K and V projections of every layer; the compiled model still
computes what the PyTorch model does, with and without folded attention spans."""

from __future__ import annotations

import dataclasses

from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from edgebert_tvm.compiler import CompileOptions, compile_model, edgebert_passes, graph_module
from edgebert_tvm.contract import BLOCK_ATTR, LAYER, block_functions, pass_reports
from edgebert_tvm.importer import InputSpec, import_model
from edgebert_tvm.models.checkpoint import Checkpoint, load
from edgebert_tvm.passes.fuse_qkv import FuseQKV

from .conftest import INPUT_ORDER, random_inputs, run_cli, torch_exits

SEQ = 16
TOLERANCE = 1e-4
MODELS = ["tiny-bert", "albert-tiny"]
# Dead (z = 0 reaches no key of 16 when trained at 20), partial and full heads, as in test_attention_span.
SPAN_SETTINGS = {"span_max": 16, "span_ramp": 4, "seq_len": 20}


def _checkpoint(name: str, tiny_bert_dir: Path) -> Checkpoint:
    return load(tiny_bert_dir if name == "tiny-bert" else name)


def _with_random_spans(checkpoint: Checkpoint, seed: int) -> Checkpoint:
    model = checkpoint.model
    rows, heads = model.arch.num_distinct_layers(model.config), model.config.num_attention_heads
    z = np.random.default_rng(seed).uniform(0, 1, size=(rows, heads))
    z[:, 0], z[:, -1] = 0.0, 1.0  # a dead and a full head in every layer
    for key, value in SPAN_SETTINGS.items():
        setattr(model.edgebert, key, value)
    model.edgebert.attention_spans = z.round(3).tolist()
    model.span_z = torch.nn.Parameter(torch.tensor(model.edgebert.attention_spans))
    return checkpoint


def _calls(func: relax.Function, op: str) -> list[relax.Call]:
    found = []
    relax.analysis.post_order_visit(
        func, lambda e: found.append(e) if isinstance(e, relax.Call) and getattr(e.op, "name", None) == op else None)
    return found


def _input_projections(func: relax.Function) -> list[list[int]]:
    """Weight shapes (in, out) of the constant-weight matmuls that read the layer's input (through reshapes)."""
    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}

    def source(expr: relax.Expr) -> relax.Expr:
        while isinstance(expr, relax.Var) and getattr(bindings.get(expr), "op", None) == tvm.ir.Op.get("relax.reshape"):
            expr = bindings[expr].args[0]
        return expr

    shapes = []
    for call in _calls(func, "relax.matmul"):
        weight = bindings.get(call.args[1], call.args[1])
        transposed = isinstance(weight, relax.Call) and isinstance(weight.args[0], tvm.ir.expr.Constant)
        if transposed and source(call.args[0]).same_as(func.params[0]):
            shapes.append([int(d) for d in call.args[1].ty.shape])
    return shapes


def _all_exits(compiled, inputs: dict[str, np.ndarray]) -> np.ndarray:
    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    return vm["all_exits"](*[tvm.runtime.tensor(inputs[k]) for k in INPUT_ORDER]).numpy()


@pytest.mark.parametrize("name", MODELS)
def test_one_matmul_feeds_q_k_and_v(name, tiny_bert_dir):
    model = _checkpoint(name, tiny_bert_dir).model
    hidden = model.config.hidden_size
    mod = import_model(model, InputSpec(1, SEQ))
    fused = FuseQKV()(mod)
    layers = block_functions(mod, LAYER)
    assert pass_reports(fused)["fuse_qkv"]["fused_layers"] == [gv.name_hint for gv in layers]
    for gv, before in layers.items():
        after = fused[gv.name_hint]
        assert _input_projections(before) == [[hidden, hidden]] * 3
        assert _input_projections(after) == [[hidden, 3 * hidden]]
        assert len(_calls(after, "relax.matmul")) == len(_calls(before, "relax.matmul")) - 2
        assert len(_calls(after, "relax.strided_slice")) == 3
    for gv, func in mod.functions_items():  # the other blocks and the entry points are untouched
        if gv not in layers:
            tvm.ir.assert_structural_equal(fused[gv.name_hint], func)


@pytest.mark.parametrize("name", MODELS)
def test_compiled_model_matches_pytorch(name, tiny_bert_dir):
    checkpoint = _checkpoint(name, tiny_bert_dir)
    compiled = compile_model(checkpoint, CompileOptions(seq_len=SEQ, fuse_qkv=True))
    assert "edgebert.FuseQKV" in compiled.passes and compiled.unscheduled == []
    inputs = random_inputs(1, SEQ, checkpoint.model.config.vocab_size, seed=4)
    np.testing.assert_allclose(_all_exits(compiled, inputs), torch_exits(checkpoint.model, inputs), atol=TOLERANCE)


@pytest.mark.parametrize("name,level", [("tiny-bert", "mask"), ("tiny-bert", "heads"), ("tiny-bert", "keys"),
                                        ("albert-tiny", "keys")])
def test_fused_after_span_folding_matches_pytorch(name, level, tiny_bert_dir):
    checkpoint = _with_random_spans(_checkpoint(name, tiny_bert_dir), seed=7)
    options = CompileOptions(batch=2, seq_len=SEQ, span_folding=level, fuse_qkv=True)
    mod, _, passes, *_ = graph_module(checkpoint, options)
    assert passes[:2] == ["edgebert.FoldAttentionSpan", "edgebert.FuseQKV"]
    for func in block_functions(mod, LAYER).values():  # the span pass slices the same heads out of Q, K, V
        (shape,) = _input_projections(func)
        full = 3 * checkpoint.model.config.hidden_size
        assert shape[1] % 3 == 0 and (shape[1] == full if level == "mask" else shape[1] < full)  # dead heads gone
    compiled = compile_model(checkpoint, options)
    inputs = random_inputs(2, SEQ, checkpoint.model.config.vocab_size, seed=5)
    np.testing.assert_allclose(_all_exits(compiled, inputs), torch_exits(checkpoint.model, inputs), atol=TOLERANCE)


def _layer(params: dict[str, tuple[int, ...]], body) -> tvm.IRModule:
    """A module with one layer block computing body(builder, params)."""
    bb = relax.BlockBuilder()
    args = [relax.Var(n, relax.TensorType(s, "float32")) for n, s in params.items()]
    with bb.function("layer_0", args, attrs={BLOCK_ATTR: LAYER}):
        with bb.dataflow():
            out = bb.emit_output(relax.Tuple(body(bb, *args)))
        bb.emit_func_output(out)
    return bb.finalize()


def _linear(bb: relax.BlockBuilder, x: relax.Expr, weight: relax.Expr, bias: np.ndarray | None = None) -> relax.Var:
    """The importer's form: bias + matmul(x, permute_dims(W))."""
    product = bb.emit(relax.op.matmul(x, bb.emit(relax.op.permute_dims(weight, [1, 0]))))
    return bb.emit(relax.op.add(relax.const(bias if bias is not None else np.ones(int(product.ty.shape[-1]), "float32")),
                                product))


def _w(out: int, k: int = 16, seed: int = 0) -> relax.Constant:
    return relax.const(np.random.default_rng(seed).standard_normal((out, k)).astype("float32"))


@pytest.mark.parametrize("case", ["non_constant_weight", "other_input", "other_out_features", "four_projections",
                                  "product_used_twice", "two_projections"])
def test_layer_unchanged_unless_exactly_three_projections_of_one_input(case):
    def body(bb, x, y, w):
        weights = {"non_constant_weight": [_w(16, seed=1), _w(16, seed=2), w],
                   "other_out_features": [_w(16, seed=1), _w(16, seed=2), _w(8, seed=3)]}.get(
            case, [_w(16, seed=i) for i in range(4 if case == "four_projections" else 3)])
        if case == "two_projections":
            weights = weights[:2]
        inputs = [x, x, y] if case == "other_input" else [x] * len(weights)
        outs = [_linear(bb, a, weight) for a, weight in zip(inputs, weights)]
        if case == "product_used_twice":  # the raw product of one projection is read besides its bias add
            outs.append(bb.lookup_binding(outs[0]).args[1])
        return outs

    mod = _layer({"x": (8, 16), "y": (8, 16), "w": (16, 16)}, body)
    unchanged = FuseQKV()(mod)
    tvm.ir.assert_structural_equal(unchanged["layer_0"], mod["layer_0"])
    assert pass_reports(unchanged)["fuse_qkv"]["fused_layers"] == []


def test_hand_built_triple_is_fused_and_computes_the_same():
    mod = _layer({"x": (2, 8, 16)}, lambda bb, x: [_linear(bb, x, _w(16, seed=i), np.full(16, i, "float32"))
                                                   for i in range(3)])
    fused = FuseQKV()(mod)
    assert len(_calls(fused["layer_0"], "relax.matmul")) == 1
    x = np.random.default_rng(0).standard_normal((2, 8, 16)).astype("float32")
    results = []
    for m in (mod, fused):
        vm = relax.VirtualMachine(tvm.compile(m, "llvm"), tvm.cpu())
        results.append([t.numpy() for t in vm["layer_0"](tvm.runtime.tensor(x))])
    for want, got in zip(*results):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_pipeline_has_it_when_asked_on_llvm_and_cuda(tiny_bert_dir, tmp_path):
    edgebert = load(tiny_bert_dir).model.edgebert
    for target in ("llvm", "cuda"):
        options = CompileOptions(target=target, attention_spans=[[0.5] * 4] * 3, fuse_qkv=True)
        names = [p.info.name for p in edgebert_passes(options, edgebert)]
        assert names.index("edgebert.FuseQKV") == names.index("edgebert.FoldAttentionSpan") + 1
        names = [p.info.name for p in edgebert_passes(dataclasses.replace(options, fuse_qkv=False), edgebert)]
        assert "edgebert.FuseQKV" not in names
    proc = run_cli("compile", str(tiny_bert_dir), "--target", "edgebert", "--fuse-qkv", "--seq-len", "16",
                   "-o", str(tmp_path / "A"))
    assert proc.returncode == 2 and "--fuse-qkv" in proc.stderr and not (tmp_path / "A").exists()
