"""Sparse kernels against dense numpy, FoldSparsity against PyTorch, block pruning, the cost model file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from edgebert_tvm.target.targets import lowering_pipeline
from edgebert_tvm.errors import EdgeBertError
from edgebert_tvm.importer import InputSpec, import_model
from edgebert_tvm.models.config import EdgeBertConfig
from edgebert_tvm.models.modeling import EdgeBertForSequenceClassification
from edgebert_tvm.contract import pass_reports
from edgebert_tvm.target.cpu.fold_sparsity import FoldSparsity
from edgebert_tvm.target.registry import make_target
from edgebert_tvm.target.cpu import unscheduled_functions
from edgebert_tvm.target.cpu.sparse import (bsr_matmul, csr_matmul, masked_gather, to_bsr, to_csr,
                                            to_masked_table)
from edgebert_tvm.target.cpu import sparse_cost
from edgebert_tvm.target.cpu.sparse_cost import BSR_BLOCKS, CostModel, block_pruned, kind_name, load_cost_model
from edgebert_tvm.training.config import parse_block
from edgebert_tvm.training.pruning import PruningMask

from .conftest import random_inputs, tiny_bert_config, torch_exits

SPARSITIES = (0.0, 0.5, 0.9, 0.99)
KINDS = [None, (16, 1), (32, 32), (8, 4)]  # CSR, then BSR block shapes


@pytest.fixture(scope="module")
def target():
    return make_target("llvm")


def _run(func: tvm.tirx.PrimFunc, arrays: list[np.ndarray], target) -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    args = [tvm.runtime.tensor(a) for a in arrays]
    lib["main"](*args)
    return args[-1].numpy()


@pytest.mark.parametrize("block", KINDS, ids=lambda b: kind_name(b))
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_sparse_matmul_matches_dense(block, sparsity, target):
    rng = np.random.default_rng(int(sparsity * 100))
    m, k, n = 24, 64, 96
    weight = block_pruned(rng, (n, k), block or (1, 1), 1.0 - sparsity)
    weight[:block[0] if block else 1] = 0.0  # a fully empty row (of blocks)
    x = rng.standard_normal((m, k)).astype("float32")
    out = np.full((m, n), np.nan, "float32")
    if block is None:
        csr = to_csr(weight)
        got = _run(csr_matmul(m, csr, width=16), [x, csr.data, csr.indices, csr.indptr, out], target)
    else:
        bsr = to_bsr(weight, block)
        got = _run(bsr_matmul(m, bsr, rows=5), [x, bsr.data, bsr.indices, bsr.indptr, out], target)
    np.testing.assert_allclose(got, x @ weight.T, rtol=1e-5, atol=1e-4)


def test_all_zero_weight_gives_zeros(target):
    weight = np.zeros((32, 32), "float32")
    x = np.ones((4, 32), "float32")
    for block in (None, (32, 32)):
        sparse = to_csr(weight) if block is None else to_bsr(weight, block)
        func = csr_matmul(4, sparse) if block is None else bsr_matmul(4, sparse)
        out = np.full((4, 32), np.nan, "float32")
        assert not _run(func, [x, sparse.data, sparse.indices, sparse.indptr, out], target).any()


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_masked_gather_decodes_rows(sparsity, target):
    rng = np.random.default_rng(1)
    table = rng.standard_normal((500, 64)).astype("float32")
    table[rng.random(table.shape) < sparsity] = 0.0
    table[7] = 0.0  # an empty row
    compressed = to_masked_table(table)
    ids = np.concatenate([[7, 0, 499], rng.integers(0, 500, 13)]).astype("int32")
    out = np.full((16, 64), np.nan, "float32")
    got = _run(masked_gather(16, compressed), [ids, compressed.values, compressed.mask, compressed.offsets, out], target)
    np.testing.assert_array_equal(got, table[ids])
    if sparsity >= 0.5:
        assert compressed.nbytes < 0.65 * table.nbytes


def _forced(kind: str) -> CostModel:
    """A cost model under which `kind` is always fastest (to exercise each rewrite)."""
    kinds = ["dense", "csr", *(kind_name(b) for b in BSR_BLOCKS)]
    return CostModel("test", {k: (0.0, 1e-12 if k == kind else 1.0) for k in kinds})


def _pruned_tiny_bert(block: tuple[int, int], sparsity: float) -> EdgeBertForSequenceClassification:
    torch.manual_seed(2)
    config = tiny_bert_config(num_hidden_layers=2, hidden_size=64, intermediate_size=128)  # room for 32x32 blocks
    model = EdgeBertForSequenceClassification(config, EdgeBertConfig(num_labels=2)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 2 and "encoder" in name and param.shape[0] % block[0] == 0:
                mask = PruningMask(param, "magnitude", block)
                mask.keep = 1.0 - sparsity
                param.copy_(mask(param))
        words = model.backbone.embeddings.word_embeddings.weight
        words[torch.rand_like(words) < 0.6] = 0.0
    return model


@pytest.mark.parametrize("kind,block", [("csr", (1, 1)), ("bsr16x1", (16, 1)), ("bsr32x32", (32, 32))])
def test_fold_sparsity_tiny_bert_matches_pytorch(kind, block):
    model = _pruned_tiny_bert(block, 0.75)
    mod = import_model(model, InputSpec(1, 16))
    target = make_target("llvm")
    with target:
        folded = FoldSparsity(cost_model=_forced(kind))(mod)
    choices = pass_reports(folded)["sparsity"]
    matmuls = [c for c in choices if c["choice"] != "masked_gather"]
    assert len(matmuls) == 12 and {c["choice"] for c in matmuls} == {kind}
    assert [c["choice"] for c in choices].count("masked_gather") == 1
    with target:
        lowered = lowering_pipeline(target)(folded)
    assert not unscheduled_functions(lowered)
    vm = relax.VirtualMachine(tvm.compile(lowered, target, relax_pipeline=None), tvm.cpu())
    inputs = random_inputs(1, 16, 30522, seed=3)
    args = [tvm.runtime.tensor(inputs[k]) for k in ("input_ids", "attention_mask", "token_type_ids")]
    got = vm["all_exits"](*args).numpy()
    reference = torch_exits(model, inputs)
    np.testing.assert_allclose(got, reference, atol=1e-4)


def test_cli_compile_sparse_records_choices(tmp_path, minilm_dir, monkeypatch):
    from edgebert_tvm import cli
    from edgebert_tvm.models.checkpoint import Checkpoint, save
    from edgebert_tvm.target.cpu import fold_sparsity

    monkeypatch.setattr(fold_sparsity, "load_cost_model", lambda target: _forced("bsr16x1"))
    model = _pruned_tiny_bert((16, 1), 0.75)
    save(Checkpoint(model, "tiny-pruned", minilm_dir), tmp_path / "ckpt")
    assert cli.main(["compile", str(tmp_path / "ckpt"), "-o", str(tmp_path / "A"), "--seq-len", "16", "--sparse"]) == 0
    meta = json.loads((tmp_path / "A" / "metadata.json").read_text())
    assert meta["passes"] == ["edgebert.NarrowFinalLayer", "edgebert.FoldSparsity"]
    assert sorted({c["choice"] for c in meta["pass_reports"]["sparsity"]}) == ["bsr16x1", "masked_gather"]
    dense_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert meta["constant_bytes"] < 0.8 * dense_bytes


def test_cost_model_keeps_dense_for_dense_weights():
    model = EdgeBertForSequenceClassification(tiny_bert_config(num_hidden_layers=1), EdgeBertConfig(num_labels=2))
    with make_target("llvm"):
        folded = FoldSparsity(cost_model=_forced("csr"))(import_model(model.eval(), InputSpec(1, 16)))
    choices = pass_reports(folded)["sparsity"]
    assert choices and all(c["choice"] == "dense" and c["density"] == 1.0 for c in choices)


@pytest.mark.parametrize("content", ["{not json", '{"version": 1, "coefficients": {"dense": [1, 2]}}',
                                     '{"version": 99}'])
def test_corrupt_cost_model_is_one_line_error(tmp_path, content):
    path = tmp_path / "cost.json"
    path.write_text(content)
    with pytest.raises(EdgeBertError, match="corrupt sparsity cost model") as info:
        load_cost_model(make_target("llvm"), path)
    assert "\n" not in str(info.value)


def test_cost_model_cache_is_keyed_by_toolchain_and_cpu(monkeypatch):
    """Timings from another TVM, LLVM or CPU are not reused: each names its own cache file."""
    target = make_target("llvm")
    key = sparse_cost.target_key(target)
    assert key.startswith(f"llvm-{target.attrs['mcpu']}-") and key == sparse_cost.target_key(target)
    monkeypatch.setattr(tvm, "__version__", "0.0.0")
    assert sparse_cost.target_key(target) != key
    monkeypatch.undo()
    monkeypatch.setattr(sparse_cost.codegen, "llvm_version_major", lambda: 1)
    assert sparse_cost.target_key(target) != key
    monkeypatch.undo()
    monkeypatch.setattr(sparse_cost, "describe_host", lambda: "another CPU")
    assert sparse_cost.target_key(target) != key


def test_calibration_fits_every_kind_and_is_cached(tmp_path, monkeypatch):
    """A small calibration on this CPU: every kernel kind fitted, the fit written once and then reused."""
    target = make_target("llvm")
    small = sparse_cost.calibrate(target, shapes=((16, 64, 64), (16, 64, 128)), densities=(0.1, 0.9))
    assert set(small.coefficients) == {"dense", "csr", *(kind_name(b) for b in BSR_BLOCKS)}
    assert all(a >= 0 and b > 0 for a, b in small.coefficients.values())
    monkeypatch.setattr(sparse_cost, "calibrate", lambda target: small)
    path = tmp_path / "cost.json"
    assert load_cost_model(target, path).coefficients == small.coefficients
    monkeypatch.setattr(sparse_cost, "calibrate", lambda target: pytest.fail("calibrated again"))
    assert load_cost_model(target, path).coefficients == {k: tuple(v) for k, v in small.coefficients.items()}


def test_block_pruning_keeps_whole_blocks():
    weight = torch.randn(64, 96)
    for method in ("magnitude", "movement"):
        mask = PruningMask(weight, method, parse_block("32x32"))
        if mask.scores is not None:
            torch.nn.init.normal_(mask.scores)
        mask.keep = 0.5
        kept = (mask(weight) != 0).reshape(2, 32, 3, 32).sum(dim=(1, 3))
        assert set(kept.flatten().tolist()) == {0, 1024} and int((kept > 0).sum()) == 3
    with pytest.raises(ValueError):
        PruningMask(weight, "magnitude", (7, 1))
    with pytest.raises(ValueError):
        parse_block("32by32")
