"""FoldConstantSubgraphs: chains of ops on constants become constants, from one build for the module."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from edgebert_tvm.models.span import distance_offsets, span_mask
from edgebert_tvm.passes.fold_constant_subgraphs import FoldConstantSubgraphs
from edgebert_tvm.target.targets import host_target

SEQ, HEADS, SPAN, RAMP = 6, 2, 6, 2
Z = np.array([0.5, 1.0], dtype="float32")


def masked_scores() -> tvm.IRModule:
    """x * (the distance-span mask computed from arange, as the imported model computes it), in two
    functions, so the pass evaluates both functions' chains in one build."""
    bb = relax.BlockBuilder()
    for name in ("first", "second"):
        x = relax.Var("x", relax.TensorType((HEADS, SEQ, SEQ), "float32"))
        with bb.function(name, [x]):
            with bb.dataflow():
                positions = bb.emit(relax.op.arange(0, SEQ, 1, "float32"))
                distance = bb.emit(relax.op.abs(relax.op.subtract(relax.op.expand_dims(positions, 1),
                                                                  relax.op.expand_dims(positions, 0))))
                reach = bb.emit(relax.op.multiply(relax.op.reshape(relax.const(Z), (HEADS, 1, 1)),
                                                  relax.const(SPAN, "float32")))
                ramp = bb.emit(relax.op.divide(relax.op.subtract(reach, relax.op.expand_dims(distance, 0)),
                                               relax.const(RAMP, "float32")))
                mask = bb.emit(relax.op.clip(ramp, 0.0, 1.0))
                out = bb.emit_output(relax.op.multiply(x, mask))
            bb.emit_func_output(out)
    return bb.get()


def run(mod: tvm.IRModule, name: str, x: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
    return vm[name](tvm.runtime.tensor(x)).numpy()


def test_constant_chains_fold_to_the_mask_in_one_build(monkeypatch):
    mod = masked_scores()
    builds = []
    compile_ = tvm.compile
    monkeypatch.setattr(tvm, "compile", lambda *args, **kwargs: builds.append(args) or compile_(*args, **kwargs))
    folded = FoldConstantSubgraphs(host_target())(mod)
    assert len(builds) == 1
    expected = span_mask(Z, distance_offsets(SEQ), SPAN, RAMP, "distance")
    x = np.random.default_rng(0).standard_normal((HEADS, SEQ, SEQ)).astype("float32")
    for name in ("first", "second"):
        calls = []
        relax.analysis.post_order_visit(folded[name].body, lambda e: calls.append(e) if isinstance(e, relax.Call) else None)
        assert [c.op.name for c in calls] == ["relax.multiply"]  # the chain is gone: x times one constant
        np.testing.assert_allclose(calls[0].args[1].value.numpy(), expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(run(folded, name, x), run(mod, name, x), rtol=1e-6, atol=1e-7)


def test_a_module_without_constant_chains_is_left_as_it_is():
    x = relax.Var("x", relax.TensorType((3,), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.add(x, relax.const(np.ones(3, "float32"))))
        bb.emit_func_output(out)
    mod = bb.get()
    assert FoldConstantSubgraphs(host_target())(mod).same_as(mod)
