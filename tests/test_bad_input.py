"""Bad input gets one line on stderr, exit status 2, no traceback and no partial artifact."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tvm
from safetensors.torch import load_file, save_file

from edgebert_tvm import __version__, cli
from edgebert_tvm.commands import compile as compile_command
from edgebert_tvm.errors import InternalError
from edgebert_tvm.target.cpu.host import isa_flags, missing_isa
from edgebert_tvm.target.registry import make_target

from .conftest import compile_shared, run_cli_fresh


def _fails_cleanly(capsys, *args: str, match: str) -> str:
    assert cli.main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("edgebert-tvmc: error: ") and match in err, err
    return err


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.fixture
def checkpoint_copy(tiny_bert_dir, tmp_path) -> Path:
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_bert_dir, copy)
    return copy


def test_missing_directory(capsys, tmp_path):
    _fails_cleanly(capsys, "compile", str(tmp_path / "nope"), "-o", str(tmp_path / "A"), match="no such checkpoint")
    assert not (tmp_path / "A").exists()


def test_missing_weights(capsys, checkpoint_copy, tmp_path):
    (checkpoint_copy / "model.safetensors").unlink()
    _fails_cleanly(capsys, "compile", str(checkpoint_copy), "-o", str(tmp_path / "A"), match="no model.safetensors")


def test_truncated_weights(capsys, checkpoint_copy, tmp_path):
    weights = checkpoint_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _fails_cleanly(capsys, "compile", str(checkpoint_copy), "-o", str(tmp_path / "A"), match="unreadable safetensors")
    assert not (tmp_path / "A").exists() and _leftovers(tmp_path) == []


def test_pickle_checkpoint_is_refused_not_unpickled(capsys, checkpoint_copy, tmp_path):
    (checkpoint_copy / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    # A pickle that would create `marker` if anything ever unpickled it.
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    (checkpoint_copy / "pytorch_model.bin").write_bytes(payload)
    _fails_cleanly(capsys, "compile", str(checkpoint_copy), "-o", str(tmp_path / "A"), match="pickle checkpoints are refused")
    assert not marker.exists()


def test_unknown_model_type(capsys, checkpoint_copy, tmp_path):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["model_type"] = "gpt2"
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    _fails_cleanly(capsys, "compile", str(checkpoint_copy), "-o", str(tmp_path / "A"), match="unknown model_type 'gpt2'")


def test_weights_that_do_not_fit_the_config(capsys, checkpoint_copy, tmp_path):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["hidden_size"], config["num_attention_heads"] = 64, 4
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    _fails_cleanly(capsys, "compile", str(checkpoint_copy), "-o", str(tmp_path / "A"), match="do not fit")


def test_unwritable_output_fails_before_compiling(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    _fails_cleanly(capsys, "compile", "albert-tiny", "-o", str(blocker / "A"), match="does not exist")
    _fails_cleanly(capsys, "compile", "albert-tiny", "-o", "/proc/edgebert-artifact", match="cannot write")
    _fails_cleanly(capsys, "compile", "albert-tiny", "-o", str(blocker), match="not a directory")


def test_failed_write_leaves_nothing(monkeypatch, capsys, tmp_path):
    """A full disk is the environment's fault: one line, exit 2, and no partial artifact."""
    def broken_export(self, path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(tvm.runtime.Executable, "export_library", broken_export)
    _fails_cleanly(capsys, "compile", "albert-tiny", "-o", str(tmp_path / "A"), "--seq-len", "8",
                   match="No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_internal_error_is_one_line_and_status_3(monkeypatch, capsys, tmp_path):
    """A broken invariant of ours is not the user's fault: it says it is a bug, with the version."""
    def broken_compile(checkpoint, options):
        raise InternalError("FoldEntropyExit ran before FoldSparsity")

    monkeypatch.setattr(compile_command, "compile_model", broken_compile)
    args = ["compile", "albert-tiny", "-o", str(tmp_path / "A"), "--seq-len", "8"]
    assert cli.main(args) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "internal error: FoldEntropyExit ran before FoldSparsity" in err and f"edgebert-tvm {__version__}" in err
    monkeypatch.setattr(compile_command, "compile_model", lambda checkpoint, options: {}["missing"])  # any other bug
    assert cli.main(args) == 3 and "internal error (KeyError)" in capsys.readouterr().err
    monkeypatch.setenv("EDGEBERT_TVM_DEBUG", "1")  # the traceback, for whoever debugs it
    with pytest.raises(KeyError):
        cli.main(args)
    assert not (tmp_path / "A").exists()


def test_sparse_with_adaptivfloat_weights_is_refused_not_half_applied(capsys, tmp_path):
    _fails_cleanly(capsys, "compile", "albert-tiny", "-o", str(tmp_path / "A"), "--seq-len", "8", "--sparse",
                   "--weights", "adaptivfloat8", match="--sparse with --weights")
    assert not (tmp_path / "A").exists()


def test_invalid_seq_len(capsys, tmp_path):
    _fails_cleanly(capsys, "compile", "albert-tiny", "-o", str(tmp_path / "A"), "--seq-len", "4096", match="--seq-len")


@pytest.mark.parametrize("arrays, match", [
    ({"input_ids": np.ones((2, 9), np.int64)}, "takes (n, 1..8)"),
    ({"input_ids": np.ones((8,), np.int64)}, "takes (n, 1..8)"),
    ({"input_ids": np.ones((1, 8), np.float32)}, "dtype float32"),
    ({"input_ids": np.ones((1, 8), np.int64), "attention_mask": np.ones((2, 8), np.int64)}, "attention_mask has shape"),
    ({"input_ids": np.full((1, 8), 10**6, np.int64)}, "outside [0, 30000)"),
    ({"input_ids": np.ones((1, 8), np.int64), "position_ids": np.ones((1, 8), np.int64)}, "unknown input"),
    ({"attention_mask": np.ones((1, 8), np.int64)}, "no input_ids"),
])
def test_bad_npz_inputs(capsys, tiny_artifact, tmp_path, arrays, match):
    np.savez(tmp_path / "in.npz", **arrays)
    _fails_cleanly(capsys, "run", str(tiny_artifact), "--inputs", str(tmp_path / "in.npz"), match=match)


def test_npz_that_is_not_an_archive(capsys, tiny_artifact, tmp_path):
    np.save(tmp_path / "in.npy", np.ones((1, 8), np.int64))
    _fails_cleanly(capsys, "run", str(tiny_artifact), "--inputs", str(tmp_path / "in.npy"), match="single array")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    _fails_cleanly(capsys, "run", str(tiny_artifact), "--inputs", str(tmp_path / "junk.npz"), match="not a readable")


def test_text_for_artifact_without_tokenizer(capsys, tiny_artifact):
    _fails_cleanly(capsys, "run", str(tiny_artifact), "--text", "hello", match="no tokenizer")


def test_not_an_artifact(capsys, tmp_path):
    _fails_cleanly(capsys, "run", str(tmp_path), "--text", "hi", match="not an artifact")
    _fails_cleanly(capsys, "run", str(tmp_path / "nope"), "--text", "hi", match="no such artifact")


def test_json_output_to_a_directory(capsys, tiny_artifact, tmp_path):
    np.savez(tmp_path / "in.npz", input_ids=np.ones((1, 8), np.int64))
    _fails_cleanly(capsys, "run", str(tiny_artifact), "--inputs", str(tmp_path / "in.npz"), "--json", str(tmp_path),
                   match="is a directory")


def test_fresh_process_reports_one_line(tmp_path):
    proc = run_cli_fresh("compile", str(tmp_path / "missing"), "-o", str(tmp_path / "A"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"edgebert-tvmc: error: {tmp_path / 'missing'}: no such checkpoint directory"]


def test_eval_rejects_bad_thresholds(capsys):
    _fails_cleanly(capsys, "eval", "albert-tiny", "--thresholds", "0.1", "-1", match="finite number >= 0")
    _fails_cleanly(capsys, "eval", "albert-tiny", "--thresholds", "nan", match="finite number >= 0")


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("file, changes, match", [
    ("edgebert.json", {"exit_thresholds": 0.3}, "exit_thresholds must be a list of numbers or null, got 0.3"),
    ("edgebert.json", {"attention_spans": "all"}, "attention_spans must be a list of rows"),
    ("config.json", {"hidden_size": "big"}, "invalid bert config"),
    ("config.json", {"num_hidden_layers": -1}, "num_hidden_layers must be a positive integer"),
    ("config.json", {"hidden_size": 10**9, "num_attention_heads": 1}, "GiB of weights; this machine has"),
    ("config.json", {"num_attention_heads": 5}, "describes no valid model"),
])
def test_checkpoint_json_with_wrong_values(capsys, checkpoint_copy, tmp_path, file, changes, match):
    if not (checkpoint_copy / file).exists():
        (checkpoint_copy / file).write_text("{}")
    _edit_json(checkpoint_copy / file, **changes)
    err = _fails_cleanly(capsys, "compile", str(checkpoint_copy), "-o", str(tmp_path / "A"), match=match)
    assert str(checkpoint_copy / file) in err
    assert not (tmp_path / "A").exists()


@pytest.mark.parametrize("contents, match", [(None, "no config.json"), ("{oops", "not valid JSON")])
def test_config_json_missing_or_not_json(capsys, checkpoint_copy, tmp_path, contents, match):
    config = checkpoint_copy / "config.json"
    config.unlink() if contents is None else config.write_text(contents)
    _fails_cleanly(capsys, "compile", str(checkpoint_copy), "-o", str(tmp_path / "A"), match=match)


def test_safetensors_header_that_lies_about_sizes(capsys, checkpoint_copy, tmp_path):
    path = checkpoint_copy / "model.safetensors"
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 10**9  # claims a gigabyte the file does not hold
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + raw[8 + size:])
    _fails_cleanly(capsys, "compile", str(checkpoint_copy), "-o", str(tmp_path / "A"), match="unreadable safetensors")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights(capsys, checkpoint_copy, tmp_path, value):
    weights = load_file(checkpoint_copy / "model.safetensors")
    name = next(k for k in weights if k.endswith("query.weight"))
    weights[name][0, 0] = value
    save_file(weights, checkpoint_copy / "model.safetensors")
    _fails_cleanly(capsys, "compile", str(checkpoint_copy), "-o", str(tmp_path / "A"),
                   match=f"weight {name} holds NaN or Inf")


def test_corrupt_tokenizer_fails_at_load_not_at_first_sentence(capsys, checkpoint_copy, tmp_path):
    (checkpoint_copy / "tokenizer.json").write_text("{garbage")
    _fails_cleanly(capsys, "compile", str(checkpoint_copy), "-o", str(tmp_path / "A"), match="unreadable tokenizer")
    assert not (tmp_path / "A").exists()


def test_unknown_name_lists_the_built_ins(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fails_cleanly(capsys, "compile", "bert-huge", "-o", "A", match="not a built-in model (albert-base")


@pytest.fixture
def artifact_copy(tiny_artifact, tmp_path) -> Path:
    copy = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, copy)
    return copy


def _damage_metadata(directory: Path, **changes) -> None:
    meta = json.loads((directory / "metadata.json").read_text())
    for key, value in changes.items():
        meta.pop(key) if value is None else meta.update({key: value})
    (directory / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, match", [
    (lambda d: (d / "metadata.json").write_text("{bad"), "metadata.json: not valid JSON"),
    (lambda d: _damage_metadata(d, format_version=99), "unsupported artifact format 99"),
    (lambda d: _damage_metadata(d, input=None), "input.batch is missing"),
    (lambda d: _damage_metadata(d, model={"source": "x"}), "model.num_layers is missing"),
    (lambda d: (d / "model.so").write_bytes(b"\x7fELF truncated"), "model.so: cannot load library"),
    (lambda d: (d / "model.so").unlink(), "not an artifact"),
    (lambda d: _damage_metadata(d, target={"name": "llvm", "isa": "avx2"}), "target.isa must be a list of ISA flags"),
    (lambda d: _damage_metadata(d, target={"name": "llvm", "isa": ["sse4_2", "no_such_isa"]}),
     "whose no_such_isa this CPU lacks"),
])
def test_damaged_artifact(capsys, artifact_copy, damage, match):
    damage(artifact_copy)
    _fails_cleanly(capsys, "run", str(artifact_copy), "--inputs", "unused.npz", match=match)


def _cpu_this_one_is_not() -> str:
    """An x86 CPU with an ISA extension this machine lacks."""
    for mcpu in ("sapphirerapids", "graniterapids", "znver5", "znver4", "skylake-avx512"):
        if missing_isa(isa_flags(make_target("llvm", mcpu=mcpu))):
            return mcpu
    pytest.skip("this CPU has every ISA extension of the CPUs tried")


def test_compiling_for_another_cpu_runs_nothing_here_and_its_artifact_is_refused(capsys, tmp_path):
    """`--mcpu` for a CPU with instructions this one lacks: the compile runs none of them (the
    weight packing is built for this CPU), and the artifact refuses to load instead of dying of SIGILL."""
    mcpu, out = _cpu_this_one_is_not(), tmp_path / "A"
    assert cli.main(["compile", "albert-tiny", "--seq-len", "8", "--lengths", "8", "--mcpu", mcpu, "-o", str(out)]) == 0
    capsys.readouterr()
    _fails_cleanly(capsys, "run", str(out), "--inputs", "unused.npz", match=f"compiled for {mcpu}, whose ")
    for args, match in [(["--sparse"], "--sparse runs code for --mcpu"),
                        (["--target", "edgebert"], "--mcpu is for llvm and cuda")]:
        _fails_cleanly(capsys, "compile", "albert-tiny", "--mcpu", mcpu, *args, "-o", str(tmp_path / "B"), match=match)
    _fails_cleanly(capsys, "tune", "albert-tiny", "--mcpu", mcpu, "--trials", "1", "-o", str(tmp_path / "T"),
                   match="tune runs code for --mcpu")
    _fails_cleanly(capsys, "compile", "albert-tiny", "--mcpu", "no-such-cpu", "-o", str(tmp_path / "B"),
                   match="--mcpu 'no-such-cpu' is not a CPU LLVM knows")
    assert not (tmp_path / "B").exists() and not (tmp_path / "T").exists()


def test_corrupt_tokenizer_in_artifact(capsys, tiny_bert_dir, tmp_path):
    artifact = tmp_path / "A"
    assert cli.main(["compile", str(tiny_bert_dir), "-o", str(artifact), "--seq-len", "8"]) == 0
    capsys.readouterr()
    (artifact / "tokenizer.json").write_text("{bad")
    _fails_cleanly(capsys, "run", str(artifact), "--text", "hello", match="tokenizer.json: unreadable tokenizer")


@pytest.mark.parametrize("text, match", [("", "text 1 of 1 is empty"), ("   ", "text 1 of 1 is empty"),
                                         ("caf\udce9", "text 1 of 1 is not valid UTF-8")])
def test_unreadable_text(capsys, tiny_bert_artifact, text, match):
    _fails_cleanly(capsys, "run", str(tiny_bert_artifact), "--text", text, match=match)


def test_over_long_text_is_cut_with_a_note(capsys, tiny_bert_artifact):
    assert cli.main(["run", str(tiny_bert_artifact), "--text", "a fine film " * 400, "short"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["edgebert-tvmc: note: text 1 is longer than the compiled 8 tokens; its end is cut off"]


@pytest.fixture(scope="module")
def tiny_bert_artifact(tiny_bert_dir, tmp_path_factory) -> Path:
    """The tiny BERT compiled at seq 8, with its tokenizer."""
    return compile_shared(tmp_path_factory, "tiny-bert-8", str(tiny_bert_dir), "--seq-len", "8")


@pytest.mark.parametrize("name, value, match", [
    ("attention_mask", 3, "attention_mask holds values outside [0, 2)"),
    ("attention_mask", 0, "attention_mask row 0 masks every token"),
    ("token_type_ids", 5, "token_type_ids holds values outside [0, 2)"),
    ("token_type_ids", -1, "token_type_ids holds values outside [0, 2)"),
])
def test_mask_and_token_types_out_of_range(capsys, tiny_artifact, tmp_path, name, value, match):
    np.savez(tmp_path / "in.npz", input_ids=np.ones((2, 8), np.int64), **{name: np.full((2, 8), value, np.int64)})
    _fails_cleanly(capsys, "run", str(tiny_artifact), "--inputs", str(tmp_path / "in.npz"), match=match)


@pytest.mark.parametrize("contents, match", [
    (b"", "is empty (no header row)"),
    (b"sentence\tlabel\n", "no examples after the header row"),
    (b"sentence\tlabel\ncaf\xe9 au lait\t1\n", "not UTF-8 text (byte 0xe9 at offset 18)"),
])
def test_unreadable_tsv(capsys, tiny_artifact, tmp_path, contents, match):
    (tmp_path / "dev.tsv").write_bytes(contents)
    _fails_cleanly(capsys, "eval", str(tiny_artifact), "--file", str(tmp_path / "dev.tsv"), match=match)


def test_corrupt_tuning_record_file(capsys, tmp_path):
    records = tmp_path / "tune"
    records.mkdir()
    (records / "database_workload.json").write_text("")
    (records / "database_tuning_record.json").write_text("garbage\n")
    _fails_cleanly(capsys, "compile", "albert-tiny", "-o", str(tmp_path / "A"), "--seq-len", "8",
                   "--tuning-records", str(records), match="database_tuning_record.json:1: corrupt tuning database")


def test_tune_kernels_that_match_nothing(capsys, tmp_path):
    _fails_cleanly(capsys, "tune", "albert-tiny", "--seq-len", "16", "--trials", "1", "--kernels", "no_such_kernel",
                   "-o", str(tmp_path / "T"), match="no kernel of albert-tiny matches --kernels 'no_such_kernel'")


@pytest.mark.parametrize("state", ['{"progress": [1]}', "{half", '{"progress": {"stage": 1, "step": 3}}'])
def test_corrupt_training_state(capsys, tiny_bert_dir, tmp_path, state):
    """A state a kill or another run left behind is named, never half-loaded or trained on top of."""
    state_dir = tmp_path / ".out.train-state"
    state_dir.mkdir()
    (state_dir / "state.json").write_text(state)  # the last case has no state.safetensors beside it
    _fails_cleanly(capsys, "train", "--backbone", str(tiny_bert_dir), "-o", str(tmp_path / "out"),
                   "--max-examples", "64", match="corrupt training state")
    assert not (tmp_path / "out").exists()


def test_eval_of_a_model_with_other_labels_than_the_task(capsys, tiny_bert_dir, tiny_bert_artifact):
    """The tiny BERT has 3 labels: an accuracy on 2-label SST-2 would mean nothing."""
    for model in (tiny_bert_dir, tiny_bert_artifact):
        _fails_cleanly(capsys, "eval", str(model), "--limit", "4", match="has 3 labels; task sst2 has 2")
