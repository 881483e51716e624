"""FoldEntropyExit: the compiled graph exits where PyTorch's layer-by-layer rule does, and skips work."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from edgebert_tvm import cli
from edgebert_tvm.target.targets import lowering_pipeline
from edgebert_tvm.evaluate import entropy
from edgebert_tvm.importer import InputSpec, import_model
from edgebert_tvm.models.checkpoint import load
from edgebert_tvm.models.modeling import early_exit
from edgebert_tvm.contract import EXIT_THRESHOLDS_ATTR
from edgebert_tvm.passes.fold_entropy_exit import FoldEntropyExit, SetExitThresholds
from edgebert_tvm.target.registry import make_target
from edgebert_tvm.target.cpu import unscheduled_functions

from .conftest import INPUT_ORDER, random_inputs, torch_exits


def _build(model, thresholds, batch: int, seq_len: int, imported: tvm.IRModule | None = None) -> relax.VirtualMachine:
    """`model` with `thresholds` folded in, built for llvm (from `imported`, its import, if given)."""
    mod = FoldEntropyExit(thresholds)(imported or import_model(model, InputSpec(batch, seq_len)))
    target = make_target("llvm")
    with target:
        lowered = lowering_pipeline(target)(mod)
    assert unscheduled_functions(lowered) == []
    return relax.VirtualMachine(tvm.compile(lowered, target, relax_pipeline=None), tvm.cpu())


def _thresholds_between_entropies(model, inputs) -> list[float]:
    """Thresholds that split the rows' exit entropies, so different rows leave at different layers."""
    entropies = entropy(torch_exits(model, inputs)[:, :-1]).ravel()
    return sorted({0.0, float(np.median(entropies)), float(entropies.max()) + 1e-3, math.log(2) + 1})


@pytest.mark.parametrize("name", ["albert-tiny", "tiny-bert"])
def test_exit_layer_and_logits_match_pytorch_rule(name, tiny_bert_dir):
    model = load(tiny_bert_dir if name == "tiny-bert" else name).model
    inputs = random_inputs(12, 16, 30000, seed=3)
    layers_seen = set()
    imported = import_model(model, InputSpec(1, 16))
    for threshold in _thresholds_between_entropies(model, inputs):
        vm = _build(model, threshold, 1, 16, imported)
        for row in range(12):
            one = {k: v[row:row + 1] for k, v in inputs.items()}
            logits, layer = vm["main"](*[tvm.runtime.tensor(one[k]) for k in INPUT_ORDER])
            ref_logits, ref_layer = early_exit(model, *[torch.from_numpy(one[k]) for k in INPUT_ORDER],
                                               [threshold] * (model.num_layers - 1))
            assert int(layer.numpy()[0]) == ref_layer
            np.testing.assert_allclose(logits.numpy(), ref_logits.numpy(), atol=1e-4)
            layers_seen.add(ref_layer)
    assert len(layers_seen) > 1  # the thresholds really made rows leave at different depths


def test_per_layer_thresholds(tiny_bert_dir):
    model = load(tiny_bert_dir).model  # 3 layers: thresholds for exits 1 and 2
    inputs = random_inputs(6, 16, 30000, seed=4)
    thresholds = [0.0, 10.0]  # never at 1, always at 2
    vm = _build(model, thresholds, 1, 16)
    for row in range(6):
        _, layer = vm["main"](*[tvm.runtime.tensor(inputs[k][row:row + 1]) for k in INPUT_ORDER])
        assert int(layer.numpy()[0]) == 2


def test_set_exit_thresholds_gives_what_folding_them_gives(tiny_bert_dir):
    """A target that calibrates its own thresholds sets them in the folded graph: the same module as
    folding those thresholds in the first place; a graph FoldEntropyExit did not make is refused."""
    imported = import_model(load(tiny_bert_dir).model, InputSpec(1, 16))
    reset = SetExitThresholds([0.1, 0.7])(FoldEntropyExit(0.3)(imported))
    tvm.ir.assert_structural_equal(reset, FoldEntropyExit([0.1, 0.7])(imported))
    tvm.ir.assert_structural_equal(SetExitThresholds(0.7)(FoldEntropyExit(0.3)(imported)), FoldEntropyExit(0.7)(imported))
    assert [float(t) for t in reset["main"].attrs[EXIT_THRESHOLDS_ATTR]] == pytest.approx([0.1, 0.7])
    tampered = FoldEntropyExit(0.3)(imported)
    tampered.update_func(tampered.get_global_var("main"), tampered["main"].with_attr(EXIT_THRESHOLDS_ATTR, [0.5, 0.5]))
    with pytest.raises(Exception, match="not FoldEntropyExit's"):  # InternalError, as TVM's FFI passes it back
        SetExitThresholds([0.1, 0.7])(tampered)


def test_batch_leaves_when_every_row_is_confident():
    model = load("albert-tiny").model
    inputs = random_inputs(2, 16, 30000, seed=5)
    first = entropy(torch_exits(model, inputs)[:, 0])
    threshold = float(first.mean())  # between the two rows' entropies: one confident, one not
    assert first.min() < threshold < first.max()
    vm = _build(model, threshold, 2, 16)
    logits, layers = vm["main"](*[tvm.runtime.tensor(inputs[k]) for k in INPUT_ORDER])
    assert layers.numpy().tolist() == [2, 2]
    np.testing.assert_allclose(logits.numpy(), torch_exits(model, inputs)[:, 1], atol=1e-4)
    confident = 10.0
    logits, layers = _build(model, confident, 2, 16)["main"](*[tvm.runtime.tensor(inputs[k]) for k in INPUT_ORDER])
    assert layers.numpy().tolist() == [1, 1]


def test_compiled_exit_skips_the_remaining_layers():
    model = load("albert-base").model
    inputs = random_inputs(1, 8, 30000)
    calls: list[str] = []

    def count(func, symbol, before, ret, *args):
        if before and symbol == "layer_0":  # ALBERT's shared layer, once per layer run
            calls.append(symbol)
        return 0

    imported = import_model(model, InputSpec(1, 8))
    for threshold, expected in ((10.0, 1), (0.0, 12)):
        vm = _build(model, threshold, 1, 8, imported)
        vm.set_instrument(count)
        calls.clear()
        vm["main"](*[tvm.runtime.tensor(inputs[k]) for k in INPUT_ORDER])
        assert len(calls) == expected


@pytest.mark.parametrize("values, match", [(["-0.1"], "finite number >= 0"), (["nan"], "finite number >= 0"),
                                           (["0.1", "0.2", "0.3"], "expected one exit threshold or 1")])
def test_bad_thresholds_exit_2(capsys, tmp_path, values, match):
    assert cli.main(["compile", "albert-tiny", "-o", str(tmp_path / "A"), "--seq-len", "8",
                     "--exit-threshold", *values]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not (tmp_path / "A").exists()


def _exit_logits(exits: np.ndarray, first_margin: np.ndarray, layers: int = 6) -> np.ndarray:
    """Two-class logits for every exit: uncertain (margin 0.1) before a row's exit layer, sure (margin 8)
    from it on; layer 1's margin is `first_margin` unless the row exits there."""
    margins = np.where(np.arange(1, layers + 1)[None, :] < exits[:, None], 0.1, 8.0)
    margins[:, 0] = np.where(exits == 1, 8.0, first_margin)
    return np.stack([margins, np.zeros_like(margins)], axis=-1)


def test_exit_predictor_beats_the_most_common_layer_only_when_layer_1_tells():
    from edgebert_tvm.exit_predictor import held_out_score

    rng = np.random.default_rng(0)
    exits = rng.integers(2, 7, size=4000)
    # informative: layer 1's confidence falls with the exit layer (margins 2.0 .. 0.0, above the threshold)
    told = held_out_score(_exit_logits(exits, 3.0 - exits / 2.0), threshold=0.3)
    assert told["exact"] > 0.95 and told["most_common_exact"] < 0.3
    assert told["mean_abs_error"] < told["most_common_mean_abs_error"]
    # uninformative: layer 1's margin is noise (never confident enough to exit there)
    noise = held_out_score(_exit_logits(exits, rng.uniform(0.1, 1.5, size=4000)), threshold=0.3)
    assert noise["exact"] < noise["most_common_exact"] + 0.05
