"""RDA storage: the codec, the Relax pass against PyTorch, the CLI, and the AxBench kernels against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from benchmarks import axbench
from edgebert_tvm import rda
from edgebert_tvm.rda import weight_store
from edgebert_tvm.contract import pass_reports
from edgebert_tvm.errors import EdgeBertError
from edgebert_tvm.importer import InputSpec, import_model
from edgebert_tvm.passes.approximate_redundant_data import ApproximateRedundantData
from edgebert_tvm.target.targets import lowering_pipeline
from edgebert_tvm.target.registry import make_target

from .conftest import random_inputs, read_json, run_cli, run_cli_fresh, tiny_bert_config, torch_exits

INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")


def _round_trips(x: np.ndarray, threshold: float, granularity: rda.Granularity) -> np.ndarray:
    encoded = rda.encode(x, threshold, granularity)
    decoded = rda.decode(encoded)
    stored = rda.Encoded.from_bytes(encoded.to_bytes(), x.shape, x.dtype, granularity)
    assert len(encoded.to_bytes()) <= (encoded.compressed_bits + 7) // 8 + 3  # streams pad to bytes, no more
    np.testing.assert_array_equal(rda.decode(stored), decoded)
    assert decoded.dtype == x.dtype and decoded.shape == x.shape
    return decoded


@pytest.mark.parametrize("granularity", [1, 3, 8, "layer"])
@pytest.mark.parametrize("dtype", ["float32", "uint8", "int16"])
def test_threshold_zero_round_trip_is_exact_on_random_tensors(dtype, granularity):
    rng = np.random.default_rng(0)
    for shape in [(7, 13), (3, 4, 16), (5,), (), (2, 0)]:
        x = rng.standard_normal(shape) * 40 if dtype == "float32" else rng.integers(0, 60, shape)
        x = np.where(rng.random(shape) < 0.4, 0, x).astype(dtype)  # zeros and repeats so the patterns fire
        if x.size > 4:
            x.reshape(-1)[:4] = x.reshape(-1)[4]
        np.testing.assert_array_equal(_round_trips(x, 0, granularity), x)


@pytest.mark.real_model
def test_threshold_zero_round_trip_is_exact_on_minilm(minilm_dir):
    from safetensors.numpy import load_file

    weights = load_file(minilm_dir / "model.safetensors")
    for name in ["embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight",
                 "encoder.layer.5.output.LayerNorm.bias"]:
        key = next(k for k in weights if k.endswith(name))
        np.testing.assert_array_equal(_round_trips(weights[key], 0, 8), weights[key])


def test_approximation_error_is_bounded_by_the_threshold():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 64)).astype(np.uint8)
    decoded = _round_trips(image, 63, 8)
    assert np.abs(decoded.astype(int) - image).max() <= 63
    weights = rng.standard_normal((16, 48)).astype(np.float32)
    decoded = _round_trips(weights, 2000, 8)
    assert np.abs(decoded - weights).max() <= 2000 * np.abs(weights).max() / rda.FLOAT_GRID + 1e-7


def _reference_pattern(group: list[float], t: float, word_bits: int) -> tuple[str, list[float]]:
    """Brute force over every candidate base in the group: the cheapest pattern that covers the group."""
    g = len(group)
    options = []
    if all(abs(v) <= t for v in group):
        options.append((2, "zero", [0.0] * g))
    for b in group:
        if all(abs(v - b) <= t for v in group):
            options.append((2 + word_bits, "repeated", [b] * g))
        if all(abs(v) <= t or abs(v - b) <= t for v in group):
            options.append((2 + word_bits + g, "two_bases", [0.0 if abs(v) <= t else b for v in group]))
    options.append((2 + g * word_bits, "exact", list(group)))
    cost, name, _ = min(options, key=lambda o: o[0])
    return name, [o[2] for o in options if o[0] == cost and o[1] == name]


def test_pattern_selection_matches_a_brute_force_reference():
    crafted = [
        [0, 0, 0, 0, 0, 0, 0, 0], [3, 0, 5, 1, 0, 0, 2, 0], [200, 200, 200, 200, 200, 200, 200, 200],
        [100, 120, 90, 110, 100, 105, 95, 130], [0, 200, 0, 210, 195, 0, 3, 205], [0, 200, 90, 210, 0, 0, 0, 0],
        [255, 0, 128, 64, 32, 16, 8, 4], [7, 7, 7, 7, 7, 7, 7, 8],
    ]
    rng = np.random.default_rng(2)
    groups = crafted + [list(rng.choice([0, 50, 60, 70, 180, 240], 8)) for _ in range(200)]
    data = np.array(groups, dtype=np.uint8)
    for t in (0, 10, 20, 63):
        encoded = rda.encode(data, t, 8)
        decoded = rda.decode(encoded)
        names = [rda.Pattern(tag).name.lower() for tag in encoded.tags]
        for row, group in enumerate(groups):
            expected, decodings = _reference_pattern([float(v) for v in group], t, 8)
            assert names[row] == expected, (group, t)
            if expected in ("zero", "exact"):
                np.testing.assert_array_equal(decoded[row], decodings[0])
            else:  # the base is a data value; ours minimises the largest error among them
                assert decoded[row].tolist() in [[int(v) for v in d] for d in decodings]
                best = min(max(abs(a - b) for a, b in zip(group, d)) for d in decodings)
                assert np.abs(decoded[row].astype(int) - data[row]).max() == best


def test_compression_rate_counts_tag_and_payload_bits():
    data = np.array([[0] * 8, [9] * 8, [0, 9] * 4, list(range(8))], dtype=np.uint8)
    encoded = rda.encode(data, 0, 8)
    assert encoded.pattern_counts() == {"zero": 1, "repeated": 1, "two_bases": 1, "exact": 1}
    bits = 4 * 2 + 8 + (8 + 8) + 8 * 8
    assert encoded.compressed_bits == bits
    assert encoded.compression_rate == pytest.approx(1 - bits / (32 * 8))
    assert rda.compressed_nbytes(data, 0, 8) == (bits + 7) // 8


@pytest.mark.parametrize("threshold, granularity", [(-1, 8), (float("nan"), 8), (3, 0), (3, "row"), (3, 2.5)])
def test_invalid_threshold_or_granularity_is_one_error(threshold, granularity):
    with pytest.raises(EdgeBertError):
        rda.encode(np.zeros(8, np.float32), threshold, granularity)


def test_nan_tensor_is_refused():
    with pytest.raises(EdgeBertError):
        rda.encode(np.array([1.0, np.nan], np.float32), 0)


def _tiny_model():
    from edgebert_tvm.models.config import EdgeBertConfig
    from edgebert_tvm.models.modeling import EdgeBertForSequenceClassification

    torch.manual_seed(3)
    return EdgeBertForSequenceClassification(tiny_bert_config(), EdgeBertConfig(num_labels=3)).eval()


@pytest.mark.parametrize("threshold, granularity, at_load", [(0, 8, False), (3000, 8, False), (3000, 8, True),
                                                             (16000, "layer", True)])
def test_compiled_model_matches_pytorch_with_the_same_approximated_weights(threshold, granularity, at_load):
    model = _tiny_model()
    rda_pass = ApproximateRedundantData(threshold, granularity, at_load=at_load)
    mod, store = weight_store.detach(rda_pass(import_model(model, InputSpec(2, 16))))
    report = pass_reports(mod)["rda"]["tensors"]
    assert (0 < len(store.tensors) <= len(report)) if at_load else store is None  # equal ones shared
    if at_load:  # linear weights are looked up transposed (made once at load), embeddings as they are
        assert any("|1,0" in view for view in store.views) and any("|" not in view for view in store.views)
    state = model.state_dict()
    floating = {k: v for k, v in state.items() if v.is_floating_point() and v.ndim >= 1}
    assert len(report) == len(floating)  # every weight tensor, each once
    changed = 0
    with torch.no_grad():
        for tensor in floating.values():
            decoded, _ = rda.approximate(tensor.numpy(), threshold, granularity)
            changed += int(not np.array_equal(decoded, tensor.numpy()))
            tensor.copy_(torch.from_numpy(decoded))
    assert (changed > 0) == (threshold > 0)
    expected_rate = pass_reports(mod)["rda"]["summary"]["compression_rate"]
    assert -0.01 < expected_rate < 1
    target = make_target("llvm")
    with target:
        mod = lowering_pipeline(target)(mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target, relax_pipeline=None), tvm.cpu())
    if at_load:
        weight_store.fill_cache(store, tvm.cpu())
    inputs = random_inputs(2, 16, model.config.vocab_size)
    got = vm["all_exits"](*[tvm.runtime.tensor(inputs[k]) for k in INPUT_ORDER]).numpy()
    np.testing.assert_allclose(got, torch_exits(model, inputs), atol=2e-5, rtol=1e-4)


def test_artifact_keeps_weights_compressed_and_decodes_them_at_load(tiny_bert_dir, tmp_path):
    """The library holds no weight the RDA store holds; a fresh process decodes the store and runs the
    same model as the plain artifact's weights approximated; a damaged store is refused in one line."""
    plain, stored = tmp_path / "plain", tmp_path / "stored"
    run_cli("compile", str(tiny_bert_dir), "-o", str(plain), "--seq-len", "16", check=True)
    run_cli("compile", str(tiny_bert_dir), "-o", str(stored), "--seq-len", "16", "--rda-threshold", "0",
            "--rda-storage", "load", check=True)
    meta = read_json(stored / "metadata.json")
    store = stored / meta["weight_store"]["file"]
    summary = meta["pass_reports"]["rda"]["summary"]
    assert 0 < meta["weight_store"]["tensors"] <= summary["tensors"]  # equal tensors (LayerNorm ones) stored once
    assert store.stat().st_size < summary["compressed_bytes"] + 64 * 1024  # the compressed bytes + a header
    library_saving = (plain / "model.so").stat().st_size - (stored / "model.so").stat().st_size
    assert library_saving > 0.95 * summary["original_bytes"]
    np.savez(tmp_path / "in.npz", **random_inputs(2, 16, 30522))
    outputs = []
    for artifact, run in ((plain, run_cli), (stored, run_cli_fresh)):
        run("run", str(artifact), "--inputs", str(tmp_path / "in.npz"), "--all-exits", "--json",
            str(tmp_path / "out.json"), check=True)
        outputs.append(np.array(read_json(tmp_path / "out.json")["all_exit_logits"]))
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-5)  # threshold 0: lossless

    blob = bytearray(store.read_bytes())
    blob[-100] ^= 0xFF
    store.write_bytes(bytes(blob))
    proc = run_cli("run", str(stored), "--inputs", str(tmp_path / "in.npz"))
    assert proc.returncode == 2 and "corrupt compressed weight store" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    store.unlink()
    proc = run_cli("run", str(stored), "--inputs", str(tmp_path / "in.npz"))
    assert proc.returncode == 2 and "missing" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_cli_records_the_report_and_rejects_bad_values(tiny_bert_dir, tmp_path):
    out = tmp_path / "artifact"
    run_cli("compile", str(tiny_bert_dir), "-o", str(out), "--seq-len", "16", "--rda-threshold", "500",
            "--exit-threshold", "0.3", check=True)
    meta = read_json(out / "metadata.json")
    assert meta["passes"] == ["edgebert.NarrowFinalLayer", "edgebert.ApproximateRedundantData", "edgebert.FoldEntropyExit"]
    assert meta["pass_reports"]["rda"]["threshold"] == 500 and meta["pass_reports"]["rda"]["granularity"] == 8
    tensors = meta["pass_reports"]["rda"]["tensors"]
    assert len(tensors) > 20 and all(set(t) >= {"compression_rate", "max_abs_error", "patterns"} for t in tensors)
    for args in (["--rda-threshold", "-1"], ["--rda-threshold", "5", "--rda-granularity", "0"],
                 ["--rda-threshold", "5", "--rda-granularity", "wide"]):
        proc = run_cli("compile", str(tiny_bert_dir), "-o", str(tmp_path / "bad"), "--seq-len", "16", *args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "RDA" in proc.stderr
        assert not (tmp_path / "bad").exists()


def test_sobel_kernel_matches_numpy():
    image = axbench.grey_image("coins")
    np.testing.assert_array_equal(axbench.sobel_workload(image.shape).run(image), axbench.sobel_reference(image))


def test_jpeg_kernels_match_numpy():
    image = axbench.rgb_image("chelsea")
    got, ref = axbench.jpeg_workload(image.shape).run(image), axbench.jpeg_reference(image)
    assert np.abs(got - ref).max() <= 1 and np.mean(got != ref) < 1e-4  # float rounding at x.5 only
    assert 0.5 < axbench.image_nrmse(image, got) < 5  # a real JPEG round trip loses a little


def test_kmeans_kernels_match_numpy():
    image = axbench.rgb_image("astronaut")[:, :128, :128].copy()
    np.testing.assert_allclose(axbench.kmeans_workload(image.shape).run(image), axbench.kmeans_reference(image),
                               atol=1e-2)


def test_fft_kernels_match_numpy():
    x = axbench.signal()
    got, ref = axbench.fft_workload().run(x), axbench.fft_reference(x)
    assert axbench.mean_relative_error(ref, got) < 1e-2  # percent
    approx = axbench.fft_workload().run(rda.approximate(x, 127)[0])
    assert axbench.mean_relative_error(ref, approx) > 0
