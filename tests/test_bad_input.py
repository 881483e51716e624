"""Bad input gets one line on stderr, exit status 2, no traceback and no partial artifact."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tvm

from edgebert_tvm import __version__, cli
from edgebert_tvm.errors import InternalError

from .conftest import run_cli


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

    monkeypatch.setattr(cli, "compile_model", broken_compile)
    args = ["compile", "albert-tiny", "-o", str(tmp_path / "A"), "--seq-len", "8"]
    assert cli.main(args) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "internal error: FoldEntropyExit ran before FoldSparsity" in err and f"edgebert-tvm {__version__}" in err
    monkeypatch.setattr(cli, "compile_model", lambda checkpoint, options: {}["missing"])  # any other bug
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
    ({"input_ids": np.ones((2, 9), np.int64)}, "takes (n, 8)"),
    ({"input_ids": np.ones((8,), np.int64)}, "takes (n, 8)"),
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
    proc = run_cli("compile", str(tmp_path / "missing"), "-o", str(tmp_path / "A"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"edgebert-tvmc: error: {tmp_path / 'missing'}: no such checkpoint directory"]


def test_eval_rejects_bad_thresholds(capsys):
    _fails_cleanly(capsys, "eval", "albert-tiny", "--thresholds", "0.1", "-1", match="finite number >= 0")
    _fails_cleanly(capsys, "eval", "albert-tiny", "--thresholds", "nan", match="finite number >= 0")
