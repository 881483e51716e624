"""One artifact, every length up to its cap: each batch runs at the shortest compiled length that holds
it, and gives what PyTorch gives at the input's own length (edgebert_tvm/lengths.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
import tvm_ffi
from tvm import relax, runtime

from edgebert_tvm import cli, importer
from edgebert_tvm.artifact import Artifact
from edgebert_tvm.compiler import CompileOptions, compile_model
from edgebert_tvm.errors import EdgeBertError
from edgebert_tvm.importer import InputSpec, import_lengths, import_model
from edgebert_tvm.inputs import check_inputs, unpadded
from edgebert_tvm.lengths import default_lengths, length_for
from edgebert_tvm.models.checkpoint import load
from edgebert_tvm.models.modeling import early_exit

from .conftest import INPUT_ORDER, compile_shared, random_inputs, read_json, torch_exits

TOLERANCE = 1e-4
CAP = 24


def _rows_of_length(lengths: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    """One row per length, each padded to the longest: its first `length` tokens attended."""
    inputs = random_inputs(len(lengths), max(lengths), 30000, seed=seed)
    inputs["attention_mask"][:] = 0
    for row, length in enumerate(lengths):
        inputs["attention_mask"][row, :length] = 1
    return {k: v * inputs["attention_mask"] if k != "attention_mask" else v for k, v in inputs.items()}


@pytest.fixture(scope="module")
def tiny_bert_any_length(tmp_path_factory, tiny_bert_dir) -> Artifact:
    out = compile_shared(tmp_path_factory, f"tiny-bert-{CAP}", str(tiny_bert_dir), "--seq-len", str(CAP))
    return Artifact.load(out)


def test_default_lengths_step_by_8_then_by_a_quarter_up_to_the_cap():
    assert default_lengths(64) == (16, 24, 32, 40, 48, 56, 64)
    assert default_lengths(128) == (16, 24, 32, 40, 48, 56, 64, 80, 96, 120, 128)
    assert default_lengths(100) == (16, 24, 32, 40, 48, 56, 64, 80, 96, 100)
    assert default_lengths(16) == (16,) and default_lengths(8) == (8,)
    big = default_lengths(512)
    assert all(b / a <= 1.25 for a, b in zip(big[3:], big[4:])) and all(n % 8 == 0 for n in big)
    mask = np.zeros((2, 40), np.int64)
    mask[0, :3], mask[1, :17] = 1, 1
    assert length_for(mask, [16, 32, 64]) == 32 and length_for(mask[:1], [16, 32, 64]) == 16


@pytest.mark.parametrize("length", [1, 2, 7, 16, 17, 23, 24])
def test_every_length_equals_pytorch_at_that_length(tiny_bert_any_length, tiny_bert_dir, length):
    assert tiny_bert_any_length.lengths == [16, 24]
    inputs = random_inputs(2, length, 30000, seed=length)
    inputs["attention_mask"][:] = 1
    reference = torch_exits(load(tiny_bert_dir).model, inputs)  # PyTorch unpadded
    np.testing.assert_allclose(tiny_bert_any_length.all_exits(inputs), reference, atol=TOLERANCE)
    result = tiny_bert_any_length.run(inputs)
    np.testing.assert_allclose(result.logits, reference[:, -1], atol=TOLERANCE)


def _count_exports(monkeypatch, cache: Path) -> list[int]:
    """Calls of torch.export.export from now on, with the process's translations forgotten and the
    disk's in the empty `cache`."""
    monkeypatch.setenv("EDGEBERT_TVM_CACHE", str(cache))
    calls = []
    export = torch.export.export
    monkeypatch.setattr(torch.export, "export", lambda *args, **kwargs: calls.append(1) or export(*args, **kwargs))
    monkeypatch.setattr(importer, "_TRANSLATED", {})
    return calls


def test_a_second_import_of_one_architecture_exports_nothing_and_binds_its_own_weights(monkeypatch, tmp_path,
                                                                                        tiny_bert_dir):
    """The process keeps its translations: another model of the same configuration (other weights)
    exports nothing and gets the functions a fresh export gives it; another configuration exports."""
    calls = _count_exports(monkeypatch, tmp_path)
    first = load(tiny_bert_dir).model
    import_model(first, InputSpec(1, 8))
    exported = len(calls)
    second = load(tiny_bert_dir).model
    with torch.no_grad():
        for param in second.parameters():
            param.mul_(0.5)
    cached = import_model(second, InputSpec(1, 8))
    assert exported == 4 and len(calls) == exported  # embeddings, layer, off-ramp, last exit
    monkeypatch.setattr(importer, "_TRANSLATED", {})
    monkeypatch.setenv("EDGEBERT_TVM_CACHE", str(tmp_path / "empty"))
    fresh = import_model(second, InputSpec(1, 8))
    assert len(calls) == 2 * exported
    for gv, func in fresh.functions_items():
        assert tvm_ffi.structural_equal(func, cached[gv.name_hint], map_free_vars=True), gv.name_hint
    second.config.layer_norm_eps = 1e-5  # read by the forward, not a weight
    import_model(second, InputSpec(1, 8))
    assert len(calls) == 3 * exported


def test_a_new_process_reads_the_translations_from_disk(monkeypatch, tmp_path, tiny_bert_dir):
    """Translations kept on disk: a process with none of its own exports nothing and gets the
    functions an export gives; an unreadable entry is exported again and rewritten; a cache that
    cannot be written costs nothing but the time."""
    calls = _count_exports(monkeypatch, tmp_path)
    model = load(tiny_bert_dir).model
    exported = import_model(model, InputSpec(1, 8))
    entries = sorted((tmp_path / "translations").iterdir())
    assert len(calls) == 4 and len(entries) == 4
    monkeypatch.setattr(importer, "_TRANSLATED", {})
    read = import_model(model, InputSpec(1, 8))
    assert len(calls) == 4
    for gv, func in exported.functions_items():
        assert tvm_ffi.structural_equal(func, read[gv.name_hint], map_free_vars=True), gv.name_hint

    entries[0].write_text('{"version": 1, "names": {}, "function": "{\\"root\\": 1}"}')
    entries[1].write_bytes(b"\xff" * 10)
    monkeypatch.setattr(importer, "_TRANSLATED", {})
    import_model(model, InputSpec(1, 8))
    assert len(calls) == 6 and all(_entry_readable(e) for e in entries)

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("EDGEBERT_TVM_CACHE", str(tmp_path / "file"))  # not a directory
    monkeypatch.setattr(importer, "_TRANSLATED", {})
    unwritable = import_model(model, InputSpec(1, 8))
    assert len(calls) == 10
    for gv, func in exported.functions_items():
        assert tvm_ffi.structural_equal(func, unwritable[gv.name_hint], map_free_vars=True), gv.name_hint


def _entry_readable(entry: Path) -> bool:
    return isinstance(tvm.ir.load_json(json.loads(entry.read_text())["function"]), relax.Function)


@pytest.mark.parametrize("trained, exports", [(CAP, 4), (16, 8), (None, 8)],
                         ids=["trained-at-cap", "trained-below-cap", "no-trained-length"])
def test_one_export_bound_to_each_length_equals_an_export_at_that_length(monkeypatch, tmp_path, tiny_bert_dir, trained,
                                                                         exports):
    """With spans trained at the cap, each block shape (embeddings, layer, off-ramp, last exit) is
    exported once for every length and bound to each: the very functions of a static export at that
    length. Spans trained below the cap switch formula at the trained length, and spans with no
    trained length count from the input's end: exported per length."""
    model = load(tiny_bert_dir).model
    model.enable_spans(0.5)
    model.edgebert.seq_len = trained
    calls = _count_exports(monkeypatch, tmp_path)
    lengths = [1, CAP]
    modules = import_lengths(model, 2, lengths)
    assert len(calls) == exports
    if trained == CAP:  # exported symbolically
        for length, mod in zip(lengths, modules):
            static = import_model(model, InputSpec(2, length))
            for gv, func in mod.functions_items():
                assert tvm_ffi.structural_equal(func, static[gv.name_hint], map_free_vars=True), (length, gv.name_hint)


def test_rows_of_mixed_lengths_get_what_they_get_alone(tmp_path, tiny_bert_dir):
    """A compiled batch of 8: each row's logits, at full depth and at every exit, equal that row run
    alone at its own length; the batch runs at the length of its longest row."""
    assert cli.main(["compile", str(tiny_bert_dir), "-o", str(tmp_path / "A"), "--seq-len", str(CAP),
                     "--batch", "8"]) == 0
    artifact = Artifact.load(tmp_path / "A")
    lengths = [3, 9, 1, 14, 5, 11, 2, 7]  # longest 14: the batch runs at 16
    inputs = _rows_of_length(lengths)
    model = load(tiny_bert_dir).model
    alone = np.concatenate([torch_exits(model, unpadded({k: v[row:row + 1] for k, v in inputs.items()}))
                            for row in range(len(lengths))])
    np.testing.assert_allclose(artifact.all_exits(inputs), alone, atol=TOLERANCE)
    np.testing.assert_allclose(artifact.run(inputs).logits, alone[:, -1], atol=TOLERANCE)


def test_a_mixed_batch_with_exits_leaves_where_the_batch_rule_says(tmp_path, tiny_bert_dir):
    """Exits compiled, a batch of 8 rows of mixed lengths: the batch leaves at the first exit where
    every row is confident (PyTorch's rule on the same batch), with the logits it has there."""
    model = load(tiny_bert_dir).model
    lengths = [3, 9, 1, 14, 5, 11, 2, 7]
    inputs = _rows_of_length(lengths, seed=4)
    tensors = [torch.from_numpy(unpadded(inputs)[k]) for k in INPUT_ORDER]
    seen = set()
    for threshold in (1.09, 5.0):  # here: after layer 2 (its rows' entropies 1.086 at most, layer 1's 1.096), and 1
        out = tmp_path / f"A{threshold:g}"
        assert cli.main(["compile", str(tiny_bert_dir), "-o", str(out), "--seq-len", str(CAP), "--batch", "8",
                         "--exit-threshold", str(threshold)]) == 0
        result = Artifact.load(out).run(inputs)
        ref_logits, ref_layer = early_exit(model, *tensors, [threshold] * 2)
        assert set(result.exit_layer.tolist()) == {ref_layer}, threshold
        np.testing.assert_allclose(result.logits, ref_logits.numpy(), atol=TOLERANCE)
        seen.add(ref_layer)
    assert len(seen) > 1  # the thresholds made the batch leave at different layers


def test_early_exit_and_spans_at_every_length(tiny_bert_dir):
    """Exits folded in and spans folded to `keys` (heads read a suffix of the keys) at two compiled
    lengths: each length exits where PyTorch's layer-by-layer rule does, with its logits."""
    checkpoint = load(tiny_bert_dir)
    model = checkpoint.model
    rng = np.random.default_rng(0)
    spans = rng.uniform(0, 1, size=(3, 4)).round(3)
    spans[:, 0], spans[:, -1] = 0.0, 1.0
    model.span_z = torch.nn.Parameter(torch.tensor(spans, dtype=torch.float32))
    model.edgebert.attention_spans, model.edgebert.span_max, model.edgebert.span_ramp = spans.tolist(), 24, 8
    model.edgebert.seq_len = CAP
    compiled = compile_model(checkpoint, CompileOptions(seq_len=CAP, exit_thresholds=[0.6]))
    assert compiled.options.lengths == (16, 24) and not compiled.unscheduled
    vm = relax.VirtualMachine(compiled.executable, runtime.cpu())
    for length, entry, compiled_length in ((5, "main__len16", 16), (16, "main__len16", 16), (23, "main", CAP)):
        inputs = random_inputs(1, length, 30000, seed=length)
        inputs["attention_mask"][:] = 1
        padded = {k: np.pad(v, ((0, 0), (0, compiled_length - length))) for k, v in inputs.items()}
        logits, layer = vm[entry](*[runtime.tensor(padded[k]) for k in INPUT_ORDER])
        ref_logits, ref_layer = early_exit(model, *[torch.from_numpy(inputs[k]) for k in INPUT_ORDER], [0.6] * 2)
        assert int(layer.numpy()[0]) == ref_layer
        np.testing.assert_allclose(logits.numpy(), ref_logits.numpy(), atol=TOLERANCE)


@pytest.mark.parametrize("transform", ["sparse", "adaptivfloat8", "rda-at-load"])
def test_weight_transforms_at_every_length(transform, tmp_path, monkeypatch, minilm_dir, tiny_bert_dir):
    """Sparse kernels, AdaptivFloat-8 weights and RDA weights decoded at load, compiled at lengths 8
    and 16: a short and a long sentence each equal PyTorch running the same weights at its length."""
    from edgebert_tvm.adaptivfloat import quantizer
    from edgebert_tvm.adaptivfloat.fake_quant import quantize_weights_
    from edgebert_tvm.models.checkpoint import Checkpoint, save
    from edgebert_tvm.target.cpu import fold_sparsity

    from .test_sparsity import _forced, _pruned_tiny_bert

    if transform == "sparse":
        monkeypatch.setattr(fold_sparsity, "load_cost_model", lambda target: _forced("bsr16x1"))
        save(Checkpoint(_pruned_tiny_bert((16, 1), 0.75), "tiny-pruned", minilm_dir), tmp_path / "ckpt")
        source, flags = tmp_path / "ckpt", ["--sparse"]
    else:
        source = tiny_bert_dir
        flags = (["--weights", "adaptivfloat8"] if transform == "adaptivfloat8"
                 else ["--rda-threshold", "0", "--rda-storage", "load"])  # threshold 0: lossless
    out = tmp_path / "A"
    assert cli.main(["compile", str(source), "-o", str(out), "--seq-len", "16", "--lengths", "8", "16", *flags]) == 0
    meta = read_json(out / "metadata.json")
    assert meta["input"]["lengths"] == [8, 16] and not meta["unscheduled_functions"]
    assert meta["cpu_schedule"]["l2_bytes"] > 0 and meta["cpu_schedule"]["l2_from"]
    reference = load(source).model
    if transform == "adaptivfloat8":
        quantize_weights_(reference, lambda w: quantizer.quantize(w, 8, 3))
    artifact = Artifact.load(out)
    for length in (5, 13):  # at the 8 and at the 16 copy
        inputs = random_inputs(1, length, reference.config.vocab_size, seed=length)
        inputs["attention_mask"][:] = 1
        np.testing.assert_allclose(artifact.all_exits(inputs), torch_exits(reference, inputs), atol=TOLERANCE)


def test_the_library_holds_the_weights_once(tmp_path):
    """Three lengths of ALBERT-base's shape cost at most 10 % more library than one."""
    checkpoint = load("albert-base")
    sizes = {}
    for lengths in (["32"], ["8", "16", "32"]):
        out = tmp_path / f"A{len(lengths)}"
        assert cli.main(["compile", "albert-base", "-o", str(out), "--seq-len", "32", "--lengths", *lengths]) == 0
        sizes[len(lengths)] = (out / "model.so").stat().st_size
        assert read_json(out / "metadata.json")["input"]["lengths"] == [int(n) for n in lengths]
    parameter_bytes = sum(p.numel() * p.element_size() for p in checkpoint.model.parameters())
    assert sizes[3] <= 1.1 * sizes[1] and sizes[1] < 1.2 * parameter_bytes, (sizes, parameter_bytes)


@pytest.mark.parametrize("args, match", [
    (["--lengths", "0"], "positive integer"),
    (["--lengths", "16", "64"], "must lie in [1, 24]"),
])
def test_bad_lengths_are_one_line_errors(capsys, tmp_path, args, match):
    code = None
    try:
        code = cli.main(["compile", "albert-tiny", "-o", str(tmp_path / "A"), "--seq-len", str(CAP), *args])
    except SystemExit as exit_:  # argparse's own check of the number
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and match in err.splitlines()[-1], err
    assert not (tmp_path / "A").exists()


def test_inputs_longer_than_the_cap_are_refused(tiny_bert_any_length):
    inputs = random_inputs(1, CAP + 1, 30000)
    assert inputs["input_ids"].shape[1] > max(tiny_bert_any_length.lengths)
    with pytest.raises(EdgeBertError, match=r"takes \(n, 1\.\.24\)"):
        check_inputs(inputs, tiny_bert_any_length.seq_len, 30522, 2)
