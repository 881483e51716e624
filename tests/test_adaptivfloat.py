"""AdaptivFloat: the reference quantizer against an independent one, the TVM datatype and its lowering,
and the quantized model against PyTorch with the same weights."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
import tvm
from tvm import relax, te

from edgebert_tvm import cli
from edgebert_tvm.adaptivfloat import quantizer as q
from edgebert_tvm.adaptivfloat import registry
from edgebert_tvm.adaptivfloat.fake_quant import fake_quantize, quantize_weights_
from edgebert_tvm.compiler import CompileOptions, compile_model
from edgebert_tvm.errors import EdgeBertError
from edgebert_tvm.models.checkpoint import Checkpoint
from edgebert_tvm.models.config import EdgeBertConfig
from edgebert_tvm.models.modeling import EdgeBertForSequenceClassification
from edgebert_tvm.passes.lower_adaptivfloat import LowerAdaptivFloat, register_pipeline

from .conftest import INPUT_ORDER, random_inputs, tiny_bert_config, torch_exits

FORMATS = [(8, 3), (8, 4), (6, 3), (5, 2), (4, 2), (4, 1), (12, 5), (16, 5)]


# --- an independent quantizer: enumerate the grid, take the nearest point, ties to the even code ----------

def grid(bits: int, exp_bits: int, bias: int) -> tuple[np.ndarray, np.ndarray]:
    """Every nonnegative value of the format in increasing order, and each one's mantissa field."""
    man_bits = bits - 1 - exp_bits
    values, mantissas = [0.0], [0]
    for field in range(2**exp_bits):
        for mantissa in range(2**man_bits):
            if field == 0 and mantissa == 0:
                continue  # the zero code
            values.append(math.ldexp(1.0 + mantissa / 2**man_bits, field + bias))
            mantissas.append(mantissa)
    return np.array(values), np.array(mantissas)


def independent_quantize(x: np.ndarray, bits: int, exp_bits: int) -> np.ndarray:
    peak = float(np.max(np.abs(x.astype(np.float64))))
    if peak == 0.0:
        return np.zeros_like(x)
    bias = math.frexp(peak)[1] - 1 - (2**exp_bits - 1)
    points, mantissas = grid(bits, exp_bits, bias)
    magnitude = np.abs(x.astype(np.float64))
    upper = np.clip(np.searchsorted(points, magnitude), 1, len(points) - 1)
    lo, hi = points[upper - 1], points[upper]
    below, above = magnitude - lo, hi - magnitude
    pick_hi = (above < below) | ((above == below) & (mantissas[upper] % 2 == 0))
    out = np.where(pick_hi, hi, lo)
    out = np.where(magnitude >= points[-1], points[-1], out)  # saturate
    out = np.where((magnitude >= points[1] / 2) & (magnitude < points[1]), points[1], out)  # no denormals
    out = np.where(magnitude < points[1] / 2, 0.0, out)
    return np.copysign(out, x.astype(np.float64)).astype(np.float32)


def hard_tensor(rng: np.random.Generator, bits: int, exp_bits: int, scale: float, size: int) -> np.ndarray:
    """Normal values at `scale` plus zeros, signed zeros, tiny and huge values, grid points and exact ties."""
    x = (rng.standard_normal(size) * scale).astype(np.float32)
    x[rng.random(size) < 0.05] = 0.0
    x[rng.random(size) < 0.01] = -0.0
    x[rng.random(size) < 0.01] = np.float32(scale * 1e-30)
    x[:3] = [scale * 40, -scale * 40, np.float32(1e-45)]  # peak and a float32 denormal
    peak = float(np.max(np.abs(x)))
    bias = math.frexp(peak)[1] - 1 - (2**exp_bits - 1)
    points, _ = grid(bits, exp_bits, bias)
    picks = rng.integers(0, len(points) - 1, size=size // 5)
    ties = (points[picks] + points[picks + 1]) / 2  # midpoints, exact in float32 for these widths
    on_grid = points[rng.integers(0, len(points), size=size // 10)]
    signs = np.where(rng.random(size // 5 + size // 10) < 0.5, -1.0, 1.0)
    special = np.concatenate([ties, on_grid, [points[1] / 2, points[1] * 0.75, points[-1] * 1.01]])
    n = len(special)
    x[3:3 + n] = (special * np.resize(signs, n)).astype(np.float32)
    return rng.permutation(x)


def test_quantizer_matches_independent_implementation_bit_for_bit():
    rng = np.random.default_rng(0)
    total = 0
    for bits, exp_bits in FORMATS:
        if bits > 12:
            continue  # the enumerated grid grows as 2^bits
        for scale in (1e-3, 0.05, 1.0, 3e4, 1e-35, 1e30):
            x = hard_tensor(rng, bits, exp_bits, scale, 25_000)
            got, want = q.quantize(x, bits, exp_bits), independent_quantize(x, bits, exp_bits)
            mismatch = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
            assert mismatch.size == 0, (bits, exp_bits, scale, x[mismatch[:5]], got[mismatch[:5]], want[mismatch[:5]])
            total += x.size
    assert total >= 1_000_000


def test_quantizer_properties_at_16_bits():
    x = np.random.default_rng(1).standard_normal(100_000).astype(np.float32)
    out = q.quantize(x, 16, 5)
    assert np.array_equal(q.quantize(out, 16, 5), out)  # idempotent
    assert np.max(np.abs(out - x) / np.maximum(np.abs(x), 1e-3)) < 2.0**-10  # 10 mantissa bits: relative 2^-11


def test_encode_decode_round_trip():
    x = np.random.default_rng(2).standard_normal((64, 48)).astype(np.float32) * 0.1
    for bits, exp_bits in FORMATS:
        codes, bias = q.encode(x, bits, exp_bits)
        assert codes.dtype == (np.uint8 if bits <= 8 else np.uint16)
        assert np.array_equal(q.decode_with_bias(codes, bits, exp_bits, bias), q.quantize(x, bits, exp_bits))


def test_all_zero_and_non_finite_tensors():
    assert np.array_equal(q.quantize(np.zeros(5, np.float32), 8, 3), np.zeros(5, np.float32))
    with pytest.raises(EdgeBertError, match="NaN or infinite"):
        q.quantize(np.array([1.0, np.inf], np.float32), 8, 3)


def test_hw8_format_matches_the_accelerator_formula():
    codes = np.arange(256, dtype=np.uint8)
    sign, exp, man = codes >> 7, (codes >> 4) & 7, codes & 15
    for register in range(8):
        want = np.where((exp == 0) & (man == 0), 0.0, 2.0 ** (exp.astype(int) + register - 10) * (1 + man / 16))
        want = np.where(sign == 1, -want, want).astype(np.float32)
        assert np.array_equal(q.hw8_decode(codes, register), want)
    x = np.random.default_rng(3).standard_normal(4096).astype(np.float32) * 0.3  # max |x| ~ 1: register 3
    codes, register = q.hw8_encode(x)
    assert codes.dtype == np.uint8 and register == q.fitted_bias(x, 3) + 10
    assert np.array_equal(q.hw8_decode(codes, register), q.quantize(x, 8, 3))
    _, big = q.hw8_encode(np.array([1000.0], np.float32))
    assert big == 7  # outside the register's range: clamped (the value saturates)
    with pytest.raises(EdgeBertError, match="3 bits"):
        q.hw8_decode(codes, 8)


def _compiled_decode(bits: int, exp_bits: int, bias: int):
    fmt = registry.AdaptivFloatFormat(bits, exp_bits, bias)
    codes = te.placeholder((2**bits,), fmt.dtype, name="codes")
    values = te.compute(codes.shape, lambda i: codes[i].astype("float32"), name="values")
    func = te.create_prim_func([codes, values]).with_attr(registry.METADATA_ATTR, {"codes": fmt.as_metadata()})
    return tvm.compile(tvm.IRModule({"main": func}), target="llvm", tir_pipeline=register_pipeline())["main"]


@pytest.mark.parametrize("bits,exp_bits,biases", [(8, 3, range(-10, -2)), (8, 4, (-20, 0, 5)), (6, 2, (-4,)),
                                                   (12, 4, (-8,))])
def test_compiled_decode_equals_numpy_for_every_code(bits, exp_bits, biases):
    codes = np.arange(2**bits, dtype=np.uint8 if bits <= 8 else np.uint16)
    for bias in biases:
        out = tvm.runtime.tensor(np.zeros(codes.size, np.float32))
        _compiled_decode(bits, exp_bits, bias)(tvm.runtime.tensor(codes), out)
        want = q.decode_with_bias(codes, bits, exp_bits, bias)
        assert np.array_equal(out.numpy().view(np.uint32), want.view(np.uint32)), (bits, exp_bits, bias)


def test_registry_is_idempotent_and_parses():
    assert registry.register() == registry.register() == registry.TYPE_CODE
    dtype = tvm.DataType(registry.dtype(8))
    assert dtype.type_code == registry.TYPE_CODE and dtype.bits == 8
    assert registry.is_adaptivfloat(registry.dtype(6)) and not registry.is_adaptivfloat("float32")


@pytest.mark.parametrize("bits,exp_bits", [(3, 1), (17, 3), (8, 7), (8, 0), (4, 3)])
def test_registry_rejects_impossible_formats(bits, exp_bits):
    with pytest.raises(EdgeBertError):
        registry.AdaptivFloatFormat(bits, exp_bits, 0)


def test_lowering_needs_the_format_metadata():
    codes = te.placeholder((4,), registry.dtype(8), name="codes")
    func = te.create_prim_func([codes, te.compute((4,), lambda i: codes[i].astype("float32"))])
    with pytest.raises(Exception, match="no format"):
        LowerAdaptivFloat()(tvm.IRModule({"main": func}))


def test_fake_quantize_passes_gradients_straight_through():
    w = torch.randn(8, 8, requires_grad=True)
    out = fake_quantize(w, functools.partial(q.quantize, bits=4, exp_bits=2))
    assert torch.equal(out, torch.from_numpy(q.quantize(w.detach().numpy(), 4, 2)))
    (out * torch.arange(64.0).reshape(8, 8)).sum().backward()
    assert torch.equal(w.grad, torch.arange(64.0).reshape(8, 8))


@pytest.mark.parametrize("bits,exp_bits", [(8, 3), (5, 2)])
def test_tiny_bert_matches_pytorch_with_the_same_quantized_weights(bits, exp_bits):
    config = functools.partial(tiny_bert_config, num_hidden_layers=2)
    torch.manual_seed(1)
    model = EdgeBertForSequenceClassification(config(), EdgeBertConfig(num_labels=3)).eval()
    options = CompileOptions(seq_len=16, weight_format=f"adaptivfloat{bits}", exp_bits=exp_bits)
    compiled = compile_model(Checkpoint(model, "tiny", None), options)
    assert compiled.unscheduled == [] and compiled.passes == ["edgebert.NarrowFinalLayer", "edgebert.QuantizeWeightsAdaptivFloat"]
    parameter_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert compiled.constant_bytes < parameter_bytes / 3.8  # no float copy of the weights is kept

    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    inputs = random_inputs(1, 16, 30522)
    got = vm["all_exits"](*[tvm.runtime.tensor(inputs[k]) for k in INPUT_ORDER]).numpy()
    reference = EdgeBertForSequenceClassification(config(), EdgeBertConfig(num_labels=3)).eval()
    reference.load_state_dict(model.state_dict())
    quantize_weights_(reference, functools.partial(q.quantize, bits=bits, exp_bits=exp_bits))
    want = torch_exits(reference, inputs)
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(want - torch_exits(model, inputs)).max() > 1e-3  # the quantization is really there


def test_cli_rejects_bad_weight_formats(capsys, tiny_bert_dir, tmp_path):
    for args in (["--weights", "adaptivfloat3"], ["--weights", "adaptivfloat8", "--exp-bits", "7"],
                 ["--weights", "int8"]):
        assert cli.main(["compile", str(tiny_bert_dir), "-o", str(tmp_path / "A"), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err and "error:" in err, err
        assert not (tmp_path / "A").exists()


def test_cli_records_the_weight_format(tiny_bert_dir, tmp_path):
    out = tmp_path / "A"
    assert cli.main(["compile", str(tiny_bert_dir), "-o", str(out), "--seq-len", "8", "--weights", "adaptivfloat6"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["weight_format"] == {"name": "adaptivfloat6", "bits": 6, "exp_bits": 3}
    assert meta["unscheduled_functions"] == []
