"""The edgebert accelerator target: configuration, cost model against a loop-level simulation,
the chip's arithmetic against a numpy model, partitioning, and the CLI end to end."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import te

from edgebert_tvm import cli, compiler
from edgebert_tvm.adaptivfloat.quantizer import hw8_decode, hw8_encode
from edgebert_tvm.errors import EdgeBertError
from edgebert_tvm.target.edgebert import formats, functional
from edgebert_tvm.target.edgebert.config import DEFAULT_CONFIG, load_config, read_config_file
from edgebert_tvm.target.edgebert.cost import (ActMatmul, Add, Dense, Entropy, LayerNorm, Softmax, dense_chunks, op_cost,
                                               seconds)
from edgebert_tvm.target.edgebert.sentence import ChipWorkload, chip_workloads, dvfs_point, run_sentence
from edgebert_tvm.target.targets import host_target

from .conftest import random_inputs, read_json, run_cli, run_cli_fresh, shared_build, torch_exits

# ---------------------------------------------------------------- configuration


def test_default_config_has_a_source_for_every_value():
    config = load_config()
    assert config.vector_size == 16 and config.input_buffer == 64 * 1024 and config.nominal.frequency == 1e9
    raw = read_config_file()
    assert all(raw[k]["source"] for k in raw if not k.startswith("_"))


def _write_config(tmp_path: Path, **changes) -> Path:
    raw = read_config_file()
    for key, value in changes.items():
        if value is None:
            del raw[key]
        else:
            raw[key] = {"value": value, "source": "test"}
    path = tmp_path / "accel.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.mark.parametrize("changes, match", [
    ({"mac_energy": None}, "missing key 'mac_energy'"),
    ({"input_buffer": "-64 KiB"}, "must be a finite number >= 0"),
    ({"dram_bandwidth": "0 B/cycle"}, "dram_bandwidth must be > 0"),
    ({"sram_read_energy": "1.25 pJ/bit"}, "unknown unit 'pJ/bit'"),
    ({"vector_size": "16.5"}, "vector_size must be a positive integer"),
    ({"dvfs_points": [["0.5 V", "1 GHz"], ["0.8 V", "2 GHz"]]}, "nominal one"),
    ({"dvfs_points": [["0.8 V", "1 Gz"]]}, "unknown unit 'Gz'"),
    ({"clock_typo": "1"}, "unknown key 'clock_typo'"),
    ({"weight_sram": "100 B"}, "hold one 16x16 weight tile (288 B)"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, changes, match):
    path = _write_config(tmp_path, **changes)
    with pytest.raises(EdgeBertError, match=re.escape(match)):
        load_config(path)
    # the CLI refuses before loading or compiling anything
    assert cli.main(["compile", "albert-tiny", "--target", "edgebert", "--accelerator-config", str(path),
                     "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err and not (tmp_path / "out").exists()


def test_config_not_json_is_one_line(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text("{ nope")
    assert cli.main(["compile", "albert-tiny", "--target", "edgebert", "--accelerator-config", str(path),
                     "-o", str(tmp_path / "out")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


# ---------------------------------------------------------------- cost model vs loop-level simulation


def simulate_dense(op: Dense, config, mask: np.ndarray, bandwidth: float) -> dict:
    """Tile by tile: a DMA engine fills two buffer banks in turn from a memory of `bandwidth`
    bytes per cycle, the PUs drain them.

    Written independently of cost.py: chunks are grown one column tile at a time while they fit a
    bank and half the mask buffer; a chunk moves its share of the stored bytes (a code per nonzero,
    a bit per weight); every PU cycle and every MAC of a nonzero weight is counted.
    """
    n, pus = config.vector_size, config.processing_units
    density = op.nonzero / (op.inner * op.cols)
    tiles = math.ceil(op.cols / n)
    tile_bytes, tile_mask = op.inner * n, op.inner * n / 8
    chunks, current = [], 0
    for _ in range(tiles):
        if current and ((current + 1) * tile_bytes > config.input_buffer or
                        (current + 1) * tile_mask > config.mask_buffer / 2):
            chunks.append(current)
            current = 0
        current += 1
    chunks.append(current)
    dma_free, pu_free, bank_free = 0, 0, [0, 0]
    load_cycles = compute_cycles = sram_read = macs = 0
    tile_start = 0
    for index, chunk in enumerate(chunks):
        start = max(dma_free, bank_free[index % 2])
        beats = 0
        remaining = chunk * (tile_bytes * density + tile_mask)
        while remaining > 1e-9:  # one bus beat per cycle
            remaining -= bandwidth
            beats += 1
        dma_free = start + beats
        load_cycles += beats
        clock = max(pu_free, dma_free)
        for row in range(op.rows):
            for group in range(0, chunk, pus):
                for k_tile in range(math.ceil(op.inner / n)):
                    clock += 1
                    compute_cycles += 1
                    for tile in range(group, min(group + pus, chunk)):
                        cols = slice((tile_start + tile) * n, (tile_start + tile + 1) * n)
                        macs += int(mask[k_tile * n:(k_tile + 1) * n, cols].sum())
                        sram_read += n * n * 9 / 8 + 2 * n
        pu_free = bank_free[index % 2] = clock
        tile_start += chunk
    return {"cycles": pu_free, "compute": compute_cycles, "memory": load_cycles, "macs": macs, "sram_read": sram_read}


def _small_config(tmp_path: Path, **values) -> object:
    return load_config(_write_config(tmp_path, **values))


@pytest.mark.parametrize("source", ["dram", "weight_sram"])
@pytest.mark.parametrize("case", range(8))
def test_dense_cycles_equal_loop_simulation(tmp_path, case, source):
    rng = np.random.default_rng(case)
    config = _small_config(tmp_path, input_buffer=f"{int(rng.integers(1, 6)) * 512} B",
                           mask_buffer=f"{int(rng.integers(1, 4)) * 128} B",
                           dram_bandwidth=f"{int(rng.choice([1, 4, 16, 64]))} B/cycle",
                           weight_sram_bandwidth=f"{int(rng.choice([8, 32, 128]))} B/cycle",
                           processing_units=str(int(rng.integers(1, 4))))
    rows, inner, cols = (int(v) for v in rng.integers([1, 4, 4], [9, 70, 90]))
    weights = rng.standard_normal((inner, cols)) * (rng.random((inner, cols)) < 0.5)
    padded = np.zeros((math.ceil(inner / 16) * 16, math.ceil(cols / 16) * 16), bool)
    padded[:inner, :cols] = weights != 0
    op = Dense(rows, inner, cols, int(padded.sum()))
    bandwidth = config.dram_bandwidth if source == "dram" else config.weight_sram_bandwidth
    sim, cost = simulate_dense(op, config, padded, bandwidth), op_cost(op, config, source)
    assert (cost.cycles, cost.compute_cycles, cost.memory_cycles) == (sim["cycles"], sim["compute"], sim["memory"])
    assert cost.useful_macs == sim["macs"]
    assert cost.energy["mac"] == pytest.approx(sim["macs"] * config.mac_energy)
    write = (sum(dense_chunks(op, config)) * 16 * inner * 9 / 8 + rows * cols * 2) * config.sram_write_energy
    assert cost.energy["sram"] == pytest.approx(sim["sram_read"] * config.sram_read_energy + write)
    per_byte = config.dram_read_energy if source == "dram" else config.weight_sram_read_energy
    stored = sum(dense_chunks(op, config)) * 16 * inner * (op.nonzero / (inner * cols) + 1 / 8)
    assert cost.energy[source] == pytest.approx(stored * per_byte)
    assert set(cost.energy) & {"dram", "weight_sram"} == {source}


def _two_layer_workload() -> ChipWorkload:
    """Layers of 2 and 1 dense ops, exits of one; every weight block 64 x 64 at half density."""
    dense = {"region": "r", "pattern": "edgebert.dense", "op": Dense(8, 64, 64, 64 * 32)}
    blocks = {"embeddings": [], "layer_0": [dense, dense], "layer_1": [dense], "exit_1": [dense], "exit_2": [dense]}
    return ChipWorkload(blocks, ["layer_0", "layer_1"], ["exit_1", "exit_2"], num_labels=2, early_exit=False)


def test_memory_map_holds_whole_blocks_in_first_use_order_and_spills_the_rest():
    block = 64 * 32 + 64 * 64 / 8  # one dense op's stored bytes: a code per nonzero, a bit per weight
    workload = _two_layer_workload()
    config = dataclasses.replace(load_config(), weight_sram=3.5 * block)
    memory = workload.memory_map(config)
    # layer_0 (2) + exit_1 (1) fit in 3.5; layer_1 does not fit the rest, exit_2 does not either
    assert memory.resident == ("layer_0", "exit_1") and memory.spilled == ("layer_1", "exit_2")
    assert memory.resident_bytes == 3 * block and sum(memory.block_bytes.values()) == 5 * block
    assert workload.memory_map(config, 0.0).resident == () and len(workload.memory_map(config, 5 * block).spilled) == 0
    resident, spilled = workload.block_cost("layer_0", config), workload.block_cost("layer_1", config)
    assert "dram" not in resident.energy and resident.energy["weight_sram"] == pytest.approx(
        2 * block * config.weight_sram_read_energy)
    assert "weight_sram" not in spilled.energy and spilled.energy["dram"] == pytest.approx(block * config.dram_read_energy)
    load = memory.load_cost(config)  # a task switch: DRAM read + weight SRAM write of what stays resident
    assert load.total_energy == pytest.approx(3 * block * (config.dram_read_energy + config.weight_sram_read_energy))
    assert load.cycles == math.ceil(3 * block / config.dram_bandwidth)


def test_dvfs_picks_the_lowest_voltage_that_meets_the_target_and_counts_misses():
    workload, config = _two_layer_workload(), load_config()
    full, one = workload.sentence_cost(2, config), workload.sentence_cost(1, config)
    target = seconds(full.cycles, config.nominal)  # the full-depth latency at the nominal point
    # predicted and actual exit 1: the lowest voltage whose frequency runs layer 1 within the target
    early = run_sentence(workload, config, 1, predicted_layer=1, latency_target=target)
    feasible = [p for p in config.dvfs_points if one.cycles / p.frequency <= target]
    assert early.point == min(feasible, key=lambda p: p.voltage) != config.nominal and early.met_target
    assert early.energy_pj == pytest.approx(one.total_energy * (early.point.voltage / config.nominal.voltage) ** 2)
    assert early.latency_s == pytest.approx(one.cycles / early.point.frequency)
    # predicted 1 but exits at 2: runs on at the point chosen for 1 and misses the target (counted)
    late = run_sentence(workload, config, 2, predicted_layer=1, latency_target=target)
    assert late.point == early.point and late.met_target is False and late.latency_s > target
    # predicted right at full depth: nominal, on target; no predictor or an unreachable target: nominal
    assert run_sentence(workload, config, 2, predicted_layer=2, latency_target=target).point == config.nominal
    assert run_sentence(workload, config, 2).point == config.nominal and run_sentence(workload, config, 2).met_target is None
    assert dvfs_point(full.cycles, target / 10, config) == config.nominal


def test_weight_sram_sweep_saves_energy_as_it_grows_and_the_report_says_what_spilled():
    from edgebert_tvm.target.edgebert.report import accelerator_report, format_report

    workload = _two_layer_workload()
    config = dataclasses.replace(load_config(), weight_sram=2.5 * (64 * 32 + 64 * 64 / 8))
    report = accelerator_report({16: workload}, config, [1, 2, 2])
    sweep = report["weight_sram_sweep"]
    assert [r["weight_sram_bytes"] for r in sweep] == sorted(r["weight_sram_bytes"] for r in sweep)
    assert all(a["energy_uj"] > b["energy_uj"] for a, b in zip(sweep, sweep[1:]) if a["spilled_blocks"] > b["spilled_blocks"])
    assert sweep[0]["spilled_blocks"] == 4 and sweep[-1]["spilled_blocks"] == 0
    assert report["memory_map"]["spilled"] == ["exit_1", "layer_1", "exit_2"]
    per = report["per_sentence"]
    assert per["early_exit"]["energy_uj"] < per["early_exit_dram_weights"]["energy_uj"]
    assert "spilled to DRAM: exit_1, layer_1, exit_2" in format_report(report)


def test_attention_matmul_cycles_equal_loop_count():
    config = load_config()
    op = ActMatmul(batch=3, rows=5, inner=40, cols=33)
    cycles = sum(1 for _ in range(op.batch) for _ in range(op.rows) for _ in range(0, math.ceil(op.cols / 16))
                 for _ in range(math.ceil(op.inner / 16)))
    cost = op_cost(op, config)
    assert cost.cycles == cycles and cost.useful_macs == 3 * 5 * 40 * 33


@pytest.mark.parametrize("op, rows, width, passes, unit, reads", [
    (Softmax(5, 37), 5, 37, 3, "softmax", 1), (LayerNorm(4, 40), 4, 40, 2, "layernorm", 1),
    (Add(70), 1, 70, 1, "add", 2), (Entropy(3), 1, 3, 2, "entropy", 1)])
def test_special_unit_cycles_and_energy_equal_a_loop_over_its_datapath(op, rows, width, passes, unit, reads):
    """Each pass streams a row through the unit one 16-wide vector per cycle; every element is read
    `reads` times per op (both operands of an add) and written once."""
    config = load_config()
    cycles = elements = 0
    for _ in range(rows):
        for _ in range(passes):
            for _ in range(0, width, config.vector_size):
                cycles += 1
        elements += width
    cost = op_cost(op, config)
    assert cost.cycles == cost.compute_cycles == cycles and cost.memory_cycles == 0
    assert cost.energy[unit] == pytest.approx(elements * getattr(config, f"{unit}_energy"))
    assert cost.energy["sram"] == pytest.approx(elements * config.activation_bytes
                                                * (reads * config.sram_read_energy + config.sram_write_energy))


def test_zero_weights_save_energy_and_stored_bytes_not_compute_cycles():
    config = load_config()
    dense, sparse = op_cost(Dense(8, 64, 64, 64 * 64), config), op_cost(Dense(8, 64, 64, 64 * 16), config)
    assert sparse.compute_cycles == dense.compute_cycles  # clock-gated, not skipped
    assert sparse.energy["mac"] == pytest.approx(dense.energy["mac"] / 4)
    # stored as a code per nonzero and a bit per weight: 1/4 + 1/8 of a byte per weight against 1 + 1/8
    assert sparse.energy["dram"] == pytest.approx(dense.energy["dram"] * (1 / 4 + 1 / 8) / (1 + 1 / 8))
    assert sparse.memory_cycles < dense.memory_cycles


# ---------------------------------------------------------------- the chip's arithmetic: numpy model


def fixed(x: np.ndarray) -> np.ndarray:
    """Inputs aligned to Q15, clamped to the widest format's range (+-2048)."""
    limit = np.float32(2**26)
    with np.errstate(over="ignore"):  # -FLT_MAX padding scores become -inf, then clamp
        return np.rint(np.clip(np.asarray(x, np.float32) * np.float32(2**15), -limit, limit)).astype(np.int64)


def shift(v: np.ndarray, s: int) -> np.ndarray:
    return (v + (1 << (s - 1))) >> s


def stored(v: np.ndarray, frac: int, f: int, bits: int = 16) -> np.ndarray:
    """v (`frac` fraction bits) in the format with f fraction bits, saturated to `bits`, as float32."""
    q = shift(v, frac - f) if frac > f else v << (f - frac)
    return np.clip(q, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1).astype(np.float32) / np.float32(2**f)


def np_gelu(q: np.ndarray, table: list[int]) -> np.ndarray:
    table, limit, step = np.asarray(table, np.int64), functional.GELU_LIMIT_Q, functional.GELU_STEP_Q
    seg = (np.clip(q, -limit, limit - 1) + limit) // step
    inside = table[seg] + ((table[seg + 1] - table[seg]) * (q + limit - seg * step) + step // 2) // step
    return np.where(q < -limit, 0, np.where(q >= limit, q, inside))


def np_dense(x, w, b, f, gelu=None):
    mask = w != 0  # the bitmask: zero weights are skipped
    wi = np.rint(w.astype(np.float32) * np.float32(2**14)).astype(np.int64)
    acc = np.einsum("...k,kn->...n", fixed(x), wi * mask) + (fixed(b) << 14)  # Q29
    if gelu is None:
        return stored(acc, 29, f)
    return stored(np_gelu(shift(acc, 19), functional.gelu_table(gelu)), 10, f)


def np_exp_q15(d):
    t = (d * functional.LOG2E_Q10) // 1024
    whole = t // 1024
    frac = t - whole * 1024
    seg = frac // 128
    table = np.asarray(functional.POW2_TABLE, np.int64)
    value = table[seg] + ((table[seg + 1] - table[seg]) * (frac - seg * 128) + 64) // 128
    return value >> np.minimum(-whole, 62)


def np_divide(num, den, f):
    return ((num << (f + 1)) + den) // (den * 2)


def np_softmax(x, f, span=None):
    q = shift(fixed(x), 5)  # Q10 differences
    e = np_exp_q15(q - q.max(-1, keepdims=True))
    p = np_divide(e, e.sum(-1, keepdims=True), f)
    if span is None:
        return stored(p, f, f)
    masked = shift(p * fixed(span), 15)
    kept = masked.sum(-1, keepdims=True)
    return stored(np.where(kept > 0, np_divide(masked, np.maximum(kept, 1), f), 0), f, f)


def np_log2_q15(s, max_shift):
    k = sum((s >= 2 ** (15 + bit)).astype(np.int64) for bit in range(1, max_shift + 1))
    frac = (s >> k) - 2**15
    seg = frac // 4096
    table = np.asarray(functional.LOG2_TABLE, np.int64)
    return (k << 15) + table[seg] + ((table[seg + 1] - table[seg]) * (frac - seg * 4096) + 2048) // 4096


def np_exit_entropy(x, f):
    q = shift(fixed(x), 5)
    d = q - q.max(-1, keepdims=True)
    e = np_exp_q15(d)
    total, moment = e.sum(-1), (d * e).sum(-1)
    h = shift(np_log2_q15(total, x.shape[-1].bit_length()) * functional.LN2_Q15, 15) + np_divide(-moment, total, 5)
    return stored(h.max(), 15, f)


def np_layernorm(x, gamma, beta, eps, f):
    q = fixed(x)
    width = q.shape[-1]
    mean = (q.sum(-1, keepdims=True) * 2 + width) // (2 * width)
    centred = q - mean
    coarse = shift(centred, 5)
    var = (coarse * coarse).sum(-1, keepdims=True) // width
    inv = np.minimum(np.rint(2.0**30 / np.sqrt(var.astype(np.float64) + eps * 2.0**20)), 2.0**35).astype(np.int64)
    normed = shift(centred * inv, 20)  # Q15
    return stored(normed * fixed(gamma) + (fixed(beta) << 15), 30, f)


def register(f: int, bits: int = 16) -> np.ndarray:
    return np.array([f, bits, 0], "int64")


def _run(kernel_inputs, compute, *arrays):
    out_tensor = compute(*kernel_inputs)
    lib = functional.build_kernels({"k": functional.kernel_func("k", kernel_inputs, out_tensor)}, host_target())
    args = [tvm.runtime.tensor(a) for a in arrays]
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out_tensor.shape], "float32"))
    lib["k"](*args, result)
    return result.numpy()


def _ph(array: np.ndarray, name: str) -> te.Tensor:
    return te.placeholder(array.shape, dtype=str(array.dtype), name=name)


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(7)


def test_kernel_library_is_built_once_for_equal_kernels(monkeypatch):
    """A chip compile's calibration builds and its artifact ask for the same kernels (the formats are
    arguments): one build serves them; other kernels or another target build anew."""
    builds = []
    build = tvm.tirx.build
    monkeypatch.setattr(tvm.tirx, "build", lambda mod, target: builds.append(mod) or build(mod, target=target))

    def kernels(width: int) -> dict:
        a, b, r = te.placeholder((2, width), name="a"), te.placeholder((2, width), name="b"), \
            te.placeholder((3,), "int64", name="r")
        return {"add": functional.kernel_func("add", [a, b, r], functional.residual_add(a, b, r))}

    first = functional.build_kernels(kernels(24), host_target())
    assert functional.build_kernels(kernels(24), host_target()) is first and len(builds) == 1
    assert functional.build_kernels(kernels(40), host_target()) is not first and len(builds) == 2
    assert functional.build_kernels(kernels(24), tvm.target.Target({"kind": "llvm"})) is not first
    assert len(builds) == 3


@pytest.mark.parametrize("gelu", [None, "erf", "tanh"])
def test_dense_kernel_equals_numpy_model(rng, gelu):
    x = (rng.standard_normal((2, 5, 40)) * 3).astype("float32")
    w = hw8_decode(*hw8_encode(rng.standard_normal((40, 24)) * (rng.random((40, 24)) < 0.5) * 0.3))
    b = rng.standard_normal(24).astype("float32")
    r = register(10)
    got = _run([_ph(x, "x"), _ph(w, "w"), _ph(b, "b"), _ph(r, "r")], lambda *t: functional.dense(*t, gelu), x, w, b, r)
    np.testing.assert_array_equal(got, np_dense(x, w, b, 10, gelu))
    reference = x @ w + b  # and it is close to float (Q10 rounding, plus the GELU's PWL error)
    if gelu == "erf":
        reference = 0.5 * reference * (1 + np.vectorize(math.erf)(reference / np.sqrt(2)))
    if gelu != "tanh":
        assert np.abs(got - reference).max() < 0.02


def test_a_format_with_fewer_fraction_bits_holds_what_q10_saturates(rng):
    """Outputs up to about 150 (as MiniLM's FFN output at [CLS]): Q10 saturates at 32, Q7 holds them."""
    x = (rng.standard_normal((4, 64)) * 40).astype("float32")
    w = hw8_decode(*hw8_encode(rng.standard_normal((64, 16)) * 0.3))
    b = np.zeros(16, "float32")
    reference = x @ w
    assert 100 < np.abs(reference).max() < 256
    for f, error in ((10, 50.0), (7, 0.01), (formats.fraction_bits(float(np.abs(reference).max())), 0.01)):
        r = register(f)
        got = _run([_ph(x, "x"), _ph(w, "w"), _ph(b, "b"), _ph(r, "r")], lambda *t: functional.dense(*t, None),
                   x, w, b, r)
        np.testing.assert_array_equal(got, np_dense(x, w, b, f))
        assert (np.abs(got - reference).max() > error) if f == 10 else (np.abs(got - reference).max() < error)


def test_fraction_bits_hold_the_peak_with_the_most_precision():
    assert [formats.fraction_bits(p) for p in (0.0, 0.4, 0.99, 1.0, 31.9, 32.0, 198.0, 5000.0)] == \
        [15, 15, 15, 14, 10, 9, 7, 4]
    for peak in (0.3, 1.5, 7.0, 198.0, 2047.0):  # the peak fits, and one bit more would not hold it
        f = formats.fraction_bits(peak)
        assert peak <= (2**15 - 1) / 2**f and (f == 15 or peak > (2**15 - 1) / 2 ** (f + 1))


def test_attention_matmul_kernel_equals_numpy_model(rng):
    a, b = (rng.standard_normal((4, 6, 20)).astype("float32"), rng.standard_normal((4, 20, 7)).astype("float32"))
    r = register(11)
    got = _run([_ph(a, "a"), _ph(b, "b"), _ph(r, "r")], functional.attention_matmul, a, b, r)
    np.testing.assert_array_equal(got, stored(np.einsum("zik,zkj->zij", fixed(a), fixed(b)), 30, 11))
    # Q K^T with the 1/sqrt(d) scale folded in (a scale register in Q16), viewed as (batch, heads, rows, cols)
    a, scale = a * 2, np.array(0.125 ** 0.5, "float32")
    got = _run([_ph(a, "a"), _ph(b, "b"), _ph(r, "r"), _ph(scale, "s")],
               lambda x, y, reg, s: functional.attention_matmul(x, y, reg, s, [2, 2, 6, 7]), a, b, r, scale)
    scale_q = int(np.rint(scale * np.float32(2**16)))
    acc = np.einsum("zik,zkj->zij", fixed(a), fixed(b))
    np.testing.assert_array_equal(got, stored(shift(acc, 15) * scale_q, 31, 11).reshape(2, 2, 6, 7))
    assert np.abs(got - (a @ b * scale).reshape(2, 2, 6, 7)).max() < 0.002


@pytest.mark.parametrize("with_span", [False, "key", "distance"])
def test_softmax_kernel_equals_numpy_model(rng, with_span):
    x = (rng.standard_normal((1, 3, 5, 16)) * 4).astype("float32")
    x[..., -3:] = np.finfo(np.float32).min  # padding keys, as the attention bias makes them
    r = register(14)
    if with_span:
        span = rng.random((1, 3, 1 if with_span == "key" else 5, 16)).astype("float32")
        span[0, 1] = 0.0  # a head whose span is zero
        got = _run([_ph(x, "x"), _ph(span, "s"), _ph(r, "r")], functional.softmax, x, span, r)
        expected = np_softmax(x, 14, span)
    else:
        got = _run([_ph(x, "x"), _ph(r, "r")], lambda t, reg: functional.softmax(t, None, reg), x, r)
        expected = np_softmax(x, 14)
        exact = np.exp(x - x.max(-1, keepdims=True))
        assert np.abs(got - exact / exact.sum(-1, keepdims=True)).max() < 0.01
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("rows, labels, scale", [(1, 2, 0.5), (1, 2, 8.0), (4, 3, 2.0), (3, 17, 1.0)])
def test_exit_entropy_kernel_equals_numpy_model_and_is_close_to_float(rng, rows, labels, scale):
    x = (rng.standard_normal((rows, labels)) * scale).astype("float32")
    x[0, 0] = 0.0 if labels == 2 and scale > 4 else x[0, 0]  # a confident row beside an unsure one
    r = register(formats.fraction_bits(math.log(labels)))
    got = _run([_ph(x, "x"), _ph(r, "r")], functional.exit_entropy, x, r)
    np.testing.assert_array_equal(got, np_exit_entropy(x, int(r[0])))
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    exact = float((-(p * np.log(np.maximum(p, 1e-30))).sum(-1)).max())
    assert abs(float(got) - exact) < 0.004  # the PWL exp and log: a few thousandths of a nat


def test_layernorm_and_add_kernels_equal_numpy_model(rng):
    x = (rng.standard_normal((4, 32)) * 40 + 1).astype("float32")  # beyond Q10's +-32, as a residual sum can be
    y = rng.standard_normal((4, 32)).astype("float32")
    gamma, beta = rng.standard_normal(32).astype("float32"), rng.standard_normal(32).astype("float32")
    r = register(11)
    got = _run([_ph(x, "x"), _ph(gamma, "g"), _ph(beta, "b"), _ph(r, "r")],
               lambda x_, g, b, reg: functional.layernorm(x_, g, b, reg, 1e-12), x, gamma, beta, r)
    np.testing.assert_array_equal(got, np_layernorm(x, gamma, beta, 1e-12, 11))
    mean, std = x.mean(-1, keepdims=True), x.std(-1, keepdims=True)
    assert np.abs(got - ((x - mean) / std * gamma + beta)).max() < 0.002
    f = formats.fraction_bits(float(np.abs(x + y).max()))
    got = _run([_ph(x, "x"), _ph(y, "y"), _ph(register(f), "r")], functional.residual_add, x, y, register(f))
    np.testing.assert_array_equal(got, stored(fixed(x) + fixed(y), 15, f))
    assert f < 10 and np.abs(got - (x + y)).max() <= 2 ** -(f + 1) + 2**-15  # rounding to f, inputs to Q15


def test_calibration_word_holds_what_the_chip_word_saturates(rng):
    x = (rng.standard_normal((4, 32)) * 40).astype("float32")
    y = np.zeros_like(x)
    for bits, holds in ((16, False), (32, True)):
        r = register(15, bits)
        got = _run([_ph(x, "x"), _ph(y, "y"), _ph(r, "r")], functional.residual_add, x, y, r)
        assert np.array_equal(got, stored(fixed(x), 15, 15, bits)) and (np.abs(got - x).max() < 1e-4) == holds


def test_embedding_kernel_equals_numpy_model(rng):
    table = hw8_decode(*hw8_encode(rng.standard_normal((50, 8)) * 0.1))
    ids = rng.integers(0, 50, size=9).astype("int32")
    r = register(13)
    got = _run([_ph(table, "t"), _ph(ids, "i"), _ph(r, "r")], functional.embedding, table, ids, r)
    np.testing.assert_array_equal(got, stored(fixed(table[ids]), 15, 13))


# ---------------------------------------------------------------- partition, artifact, CLI


@pytest.fixture(scope="module")
def spans_checkpoint(tmp_path_factory, minilm_dir) -> Path:
    """A 2-layer random BERT with attention spans (so the span multiply is offloaded)."""
    import torch

    from edgebert_tvm.models.checkpoint import Checkpoint, save
    from edgebert_tvm.models.config import EdgeBertConfig
    from edgebert_tvm.models.modeling import EdgeBertForSequenceClassification

    from .conftest import tiny_bert_config

    def build(directory: Path) -> None:
        torch.manual_seed(3)
        model = EdgeBertForSequenceClassification(tiny_bert_config(num_hidden_layers=2),
                                                  EdgeBertConfig(num_labels=2, task="sst2"))
        model.enable_spans(0.02)
        save(Checkpoint(model.eval(), "spans", minilm_dir), directory)

    return shared_build(tmp_path_factory, "spans", build)


EXIT_THRESHOLD = 0.685  # between the test model's exit-1 entropies (0.679 to 0.692 nats): some rows exit


@pytest.fixture(scope="module")
def edgebert_artifact(tmp_path_factory, spans_checkpoint) -> Path:
    """Two lengths, early exit, and RDA activation buffers measured at compile."""

    def build(out: Path) -> None:
        run_cli("compile", str(spans_checkpoint), "--target", "edgebert", "--seq-len", "16", "--lengths", "8", "16",
                "--exit-threshold", str(EXIT_THRESHOLD), "--rda-activations", "255", "-o", str(out), check=True)

    return shared_build(tmp_path_factory, "spans-edgebert", build)


def _workloads(artifact: Path) -> dict[int, ChipWorkload]:
    return chip_workloads(read_json(artifact / "metadata.json")["accelerator"], str(artifact))


def test_partition_offloads_every_pattern(edgebert_artifact):
    workloads = _workloads(edgebert_artifact)
    assert sorted(workloads) == [8, 16] and workloads[8].layer_blocks == ["layer_0__len8", "layer_1_narrowed__len8"]
    workload = workloads[16]
    layer = [r["pattern"].split(".")[1] for r in workload.blocks["layer_0"]]
    assert layer == ["dense", "dense", "dense", "attention_scores", "softmax_span", "attention_matmul", "dense",
                     "residual_add", "layernorm", "dense_gelu", "dense", "residual_add", "layernorm"]
    assert [r["pattern"].split(".")[1] for r in workload.blocks["exit_1"]] == ["dense", "dense"]
    assert "embedding" in [r["pattern"].split(".")[1] for r in workload.blocks["embeddings"]]
    assert workload.early_exit and workload.layer_blocks == ["layer_0", "layer_1_narrowed"]


def test_every_region_call_has_its_calibrated_format(edgebert_artifact):
    """One format per call site, shared by the block's copies at every length; probabilities get the
    most fraction bits, and nothing is given more range than the widest format."""
    bits = read_json(edgebert_artifact / "metadata.json")["accelerator"]["fraction_bits"]
    blocks = _workloads(edgebert_artifact)[16].blocks
    assert sorted(bits) == sorted(f"{block}/{position}" for block, regions in blocks.items()
                                  for position in range(len(regions)))
    for block, regions in blocks.items():
        for position, region in enumerate(regions):
            f = bits[f"{block}/{position}"]
            assert functional.MIN_FRAC <= f <= functional.MAX_FRAC
            assert f >= 14 or "softmax" not in region["pattern"]


def test_one_encoder_layer_counted_by_hand(edgebert_artifact):
    """Layer 1 of the 2-layer test model at 16 tokens (hidden 32, 4 heads of 8, FFN 64), from its
    shapes alone: compute cycles are 16x16 tiles per row plus the special units' vectors, MACs those of
    the nonzero weights and of the attention products."""
    config = load_config()
    workload = _workloads(edgebert_artifact)[16]
    tokens, hidden, heads, head_dim, ffn, n = 16, 32, 4, 8, 64, config.vector_size

    def tiles(inner: int, cols: int) -> int:
        return tokens * math.ceil(cols / n) * math.ceil(inner / n)

    dense = 4 * tiles(hidden, hidden) + tiles(hidden, ffn) + tiles(ffn, hidden)  # Q, K, V, output; FFN in and out
    attention = 2 * heads * tokens * math.ceil(tokens / n) * math.ceil(head_dim / n)  # Q K^T, P V (one tile each way)
    specials = (3 * heads * tokens * math.ceil(tokens / n)  # softmax: 3 passes per row of scores
                + 2 * 2 * tokens * math.ceil(hidden / n)  # two LayerNorms, 2 passes
                + 2 * math.ceil(tokens * hidden / n))  # two residual adds
    cost = workload.block_cost("layer_0", config)
    assert cost.compute_cycles == dense + attention + specials == 1024
    weights = [r["op"] for r in workload.blocks["layer_0"] if isinstance(r["op"], Dense)]
    assert sorted((w.inner, w.cols) for w in weights) == sorted([(hidden, hidden)] * 4 + [(hidden, ffn), (ffn, hidden)])
    macs = tokens * sum(w.nonzero for w in weights) + 2 * heads * tokens * tokens * head_dim
    assert cost.useful_macs == macs and cost.energy["mac"] == pytest.approx(macs * config.mac_energy)
    # the weights come from the weight SRAM (8 MiB holds this model), each stored byte read once per call
    stored = sum(w.nonzero + w.inner * w.cols / 8 for w in weights)
    assert "dram" not in cost.energy and cost.energy["weight_sram"] == pytest.approx(stored * config.weight_sram_read_energy)


def test_artifact_runs_in_fresh_process_with_report(edgebert_artifact, spans_checkpoint, tmp_path):
    from edgebert_tvm.models.checkpoint import load

    inputs = random_inputs(3, 16, 30522, seed=2)
    inputs["attention_mask"][0, 5:] = 0  # a short sentence: it runs (and is costed) at length 8
    inputs["input_ids"] *= inputs["attention_mask"]
    inputs["token_type_ids"] *= inputs["attention_mask"]
    np.savez(tmp_path / "in.npz", **inputs)
    proc = run_cli_fresh("run", str(edgebert_artifact), "--inputs", str(tmp_path / "in.npz"), "--all-exits", "--json",
                         str(tmp_path / "out.json"), "--report", "--report-json", str(tmp_path / "r.json"),
                         "--report-plot", str(tmp_path / "r.png"), check=True)
    assert "per sentence" in proc.stdout and (tmp_path / "r.png").stat().st_size > 0
    result, report = read_json(tmp_path / "out.json"), read_json(tmp_path / "r.json")
    # the accelerator's numbers stay close to the float model
    reference = torch_exits(load(str(spans_checkpoint)).model, inputs)
    assert np.abs(np.array(result["all_exit_logits"]) - reference).max() < 0.05
    # the exit decision is the chip's entropy unit's on the chip's logits
    logits = np.array(result["all_exit_logits"], np.float32)
    chip_entropy = [float(np_exit_entropy(logits[row, :1], 15)) for row in range(3)]
    assert result["exit_layer"] == [1 if h < EXIT_THRESHOLD else 2 for h in chip_entropy]
    assert set(result["exit_layer"]) == {1, 2}
    # per-sentence totals follow the exit layer at the length the sentence ran at: embeddings + (layer +
    # exit + entropy) per layer taken
    config = load_config()
    workloads = _workloads(edgebert_artifact)
    lengths = [8 if inputs["attention_mask"][row].nonzero()[0].max() < 8 else 16 for row in range(3)]
    assert [row["length"] for row in report["rows"]] == lengths and lengths[0] == 8
    for row, layer in zip(report["rows"], result["exit_layer"]):
        assert row["exit_layer"] == layer
        assert row["cycles"] == workloads[row["length"]].sentence_cost(layer, config).cycles
    assert workloads[8].sentence_cost(2, config).cycles < workloads[16].sentence_cost(2, config).cycles
    workload = workloads[16]
    one = workload.sentence_cost(1, config)
    two = workload.sentence_cost(2, config, early_exit=True)
    assert two.cycles > one.cycles and report["full_depth_sentence"]["cycles"] == workload.sentence_cost(
        2, config, early_exit=False).cycles


def test_distance_spans_run_in_the_softmax_unit(spans_checkpoint, tmp_path):
    """Distance spans (a mask per query row) are offloaded with the softmax, and the chip stays close to float."""
    import torch

    from edgebert_tvm.models.checkpoint import load, save

    checkpoint = load(str(spans_checkpoint))
    model = checkpoint.model
    model.edgebert.span_form, model.edgebert.span_max, model.edgebert.span_ramp = "distance", 16, 4
    with torch.no_grad():
        model.span_z.copy_(torch.tensor([[0.0, 0.3, 0.6, 1.0], [0.2, 0.4, 0.0, 0.8]]))
    model.edgebert.attention_spans = model.span_z.tolist()
    save(checkpoint, tmp_path / "distance")
    run_cli("compile", str(tmp_path / "distance"), "--target", "edgebert", "--seq-len", "16", "-o", str(tmp_path / "A"),
            check=True)
    layer = [r["pattern"] for r in _workloads(tmp_path / "A")[16].blocks["layer_0"]]
    assert "edgebert.softmax_span" in layer
    inputs = random_inputs(2, 16, 30522, seed=6)
    np.savez(tmp_path / "in.npz", **inputs)
    run_cli("run", str(tmp_path / "A"), "--inputs", str(tmp_path / "in.npz"), "--all-exits", "--json",
            str(tmp_path / "out.json"), check=True)
    got = np.array(read_json(tmp_path / "out.json")["all_exit_logits"])
    assert np.abs(got - torch_exits(load(str(tmp_path / "distance")).model, inputs)).max() < 0.05


def test_no_sentences_to_calibrate_on_is_one_line(spans_checkpoint, tmp_path, capsys, monkeypatch):
    """A task without a built-in train split (QNLI here) and no recipe: nothing to choose formats
    from, said before the import."""
    from edgebert_tvm.models.checkpoint import load, save

    checkpoint = load(str(spans_checkpoint))
    checkpoint.model.edgebert.task = "qnli"
    save(checkpoint, tmp_path / "qnli")
    monkeypatch.setattr(compiler, "import_lengths", lambda *args: pytest.fail("refused only after the import"))
    assert cli.main(["compile", str(tmp_path / "qnli"), "--target", "edgebert", "--seq-len", "16", "-o",
                     str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no sentences to calibrate the chip's formats on" in err, err
    assert not (tmp_path / "out").exists()


def test_report_needs_an_edgebert_artifact(tiny_artifact, tmp_path):
    inputs = random_inputs(1, 8, 30000)
    np.savez(tmp_path / "in.npz", **inputs)
    proc = run_cli("run", str(tiny_artifact), "--inputs", str(tmp_path / "in.npz"), "--report")
    assert proc.returncode == 2 and "--target edgebert" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_run_with_bad_config_exit_2(edgebert_artifact, tmp_path):
    np.savez(tmp_path / "in.npz", **random_inputs(1, 16, 30522))
    path = _write_config(tmp_path, envm_read_energy="-3 pJ/B")
    proc = run_cli("run", str(edgebert_artifact), "--inputs", str(tmp_path / "in.npz"), "--report",
                   "--accelerator-config", str(path))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "envm_read_energy" in proc.stderr


def test_activation_bytes_scale_activation_sram_traffic_only():
    config = load_config()
    half = dataclasses.replace(config, activation_bytes=1.0)
    for op in (ActMatmul(batch=2, rows=16, inner=32, cols=16), Softmax(16, 16), LayerNorm(16, 32)):
        full, compressed = op_cost(op, config), op_cost(op, half)
        assert compressed.energy["sram"] == pytest.approx(full.energy["sram"] / 2)
        assert compressed.cycles == full.cycles
        assert {k: v for k, v in compressed.energy.items() if k != "sram"} == {
            k: v for k, v in full.energy.items() if k != "sram"}
    dense, dense_half = op_cost(Dense(16, 64, 64, 64 * 64), config), op_cost(Dense(16, 64, 64, 64 * 64), half)
    assert dense.energy["dram"] == dense_half.energy["dram"]  # weights are not activations
    assert dense.energy["sram"] > dense_half.energy["sram"]


def test_rda_activation_buffers_measured_at_compile_and_charged_in_report(edgebert_artifact, tmp_path):
    out = edgebert_artifact
    storage = read_json(out / "metadata.json")["accelerator"]["activation_storage"]
    assert storage["sentences"] == 64 and storage["threshold"] == 255
    assert storage["bytes_per_value"] == pytest.approx(storage["compressed_bits"] / 8 / (storage["original_bits"] / 16))
    np.savez(tmp_path / "in.npz", **random_inputs(2, 16, 30522))
    run_cli("run", str(out), "--inputs", str(tmp_path / "in.npz"), "--report", "--report-json",
            str(tmp_path / "r.json"), check=True)
    report = read_json(tmp_path / "r.json")
    assert report["config"]["activation_bytes"] == storage["bytes_per_value"]
    rda, plain = report["per_sentence"]["early_exit"], report["per_sentence"]["early_exit_16bit_activations"]
    assert rda["cycles"] == plain["cycles"]
    assert np.sign(rda["energy_uj"] - plain["energy_uj"]) == np.sign(storage["bytes_per_value"] - 2)


@pytest.mark.parametrize("args, match", [
    (["--target", "llvm", "--rda-activations", "63"], "--target edgebert"),
    (["--target", "edgebert", "--rda-activations", "-1"], "threshold"),
])
def test_bad_rda_activations_exit_2(spans_checkpoint, tmp_path, args, match):
    proc = run_cli("compile", str(spans_checkpoint), "--seq-len", "16", *args, "-o", str(tmp_path / "A"))
    assert proc.returncode == 2 and match in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "A").exists()


def test_default_config_file_is_the_packaged_one():
    assert DEFAULT_CONFIG.name == "edgebert.json" and DEFAULT_CONFIG.is_file()


@pytest.mark.parametrize("flags, match", [(["--sparse"], "--sparse is for llvm"), (["--weights", "adaptivfloat8"], "--weights is for llvm"),
                                          (["--fuse-qkv"], "--fuse-qkv is for llvm"), (["--rda-threshold", "1", "--rda-storage", "load"], "--rda-storage load")])
def test_options_the_chip_cannot_honour_are_refused(tmp_path, flags, match):
    """Never half-applied: a pass that would leave the chip's patterns unmatched is refused up front."""
    proc = run_cli("compile", "albert-tiny", "--target", "edgebert", "--seq-len", "8", *flags, "-o", str(tmp_path / "A"))
    assert proc.returncode == 2 and match in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "A").exists()
