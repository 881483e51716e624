"""Artifact directories: exported library + metadata.json + tokenizer (+ compressed weights), written atomically.

An artifact loads in a fresh process with nothing registered by hand: `Artifact.load(dir)` loads
the library onto the Relax VM (and decodes weights kept compressed beside it, rda/weight_store.py)
and `run` feeds it inputs in chunks of the compiled batch size, each at the shortest compiled
length that holds it (edgebert_tvm/lengths.py).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import time
from importlib import metadata as pkg_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tvm
from tvm import relax

from . import __version__
from .rda import weight_store
from .errors import EdgeBertError
from .fileio import atomic_directory
from .contract import ALL_EXITS, INPUT_NAMES, MAIN
from .lengths import fit, length_for, suffix
from .target.cpu import schedule_parameters
from .target.cpu.host import describe_host, isa_flags, missing_isa, size_thread_pool
from .target.targets import run_device

if TYPE_CHECKING:  # running an artifact must not import torch
    from .compiler import CompiledModel
    from .models.checkpoint import Checkpoint

LIBRARY_NAME = "model.so"
METADATA_NAME = "metadata.json"
TOKENIZER_NAME = "tokenizer.json"
FORMAT_VERSION = 1
# The metadata fields loading and running read: anything else is informational.
REQUIRED_METADATA = {"model": ("source", "num_layers", "num_labels", "vocab_size", "type_vocab_size"),
                     "input": ("batch", "seq_len"), "target": ("name",)}


def _versions() -> dict[str, str]:
    versions = {"edgebert-tvm": __version__, "python": platform.python_version()}
    for package in ("apache-tvm", "apache-tvm-ffi", "torch", "transformers"):
        try:
            versions[package] = pkg_metadata.version(package)
        except pkg_metadata.PackageNotFoundError:
            continue
    return versions


def _predictor_for(predictor: dict[str, Any] | None, thresholds: list[float] | None) -> dict[str, Any] | None:
    """The checkpoint's exit-layer predictor, if it was built for the threshold compiled in."""
    if predictor is None or not thresholds or len(set(thresholds)) != 1:
        return None
    return predictor if abs(predictor["threshold"] - thresholds[0]) < 1e-9 else None


def _exit_predictor(model: Any, compiled: "CompiledModel") -> dict[str, Any] | None:
    """The exit-layer predictor for the threshold compiled in: the one fitted with it on the edgebert
    chip's logits, where the chip calibrated its own; otherwise the checkpoint's."""
    chip = compiled.exit_calibration
    return chip["predictor"] if chip is not None and chip["predictor"] is not None else model.edgebert.extra.get(
        "exit_predictor")


def write_artifact(checkpoint: "Checkpoint", compiled: "CompiledModel", out_dir: Path) -> None:
    """Export the library and write the artifact directory; nothing appears unless all of it is written."""
    options = compiled.options
    model = checkpoint.model
    config = model.config
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": {
            "source": checkpoint.source,
            "model_type": config.model_type,
            "num_layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size,
            "num_attention_heads": config.num_attention_heads,
            "num_labels": model.edgebert.num_labels,
            "vocab_size": config.vocab_size,
            "type_vocab_size": config.type_vocab_size,
            "parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        },
        "input": {"names": list(INPUT_NAMES), "batch": options.batch, "seq_len": options.seq_len,
                  "lengths": list(options.lengths)},
        "target": {"name": options.target, "tvm": str(compiled.target), "isa": isa_flags(compiled.target)},
        "passes": compiled.passes,
        "exit_thresholds": options.exit_thresholds,
        "from_checkpoint": list(options.from_checkpoint),  # the options the checkpoint's own settings filled in
        "weight_format": (None if options.weight_format is None
                          else {"name": options.weight_format, "bits": options.weight_bits, "exp_bits": options.exp_bits}),
        "exit_predictor": _predictor_for(_exit_predictor(model, compiled), options.exit_thresholds),
        "edgebert": model.edgebert.to_dict(),
        "constant_bytes": compiled.constant_bytes,
        "cpu_schedule": schedule_parameters(compiled.target),
        "unscheduled_functions": compiled.unscheduled,
        "pass_reports": compiled.reports,
        "tuning_records": str(options.tuning_records) if options.tuning_records is not None else None,
        "tuned_functions": compiled.tuned,
        "compile_seconds": compiled.compile_seconds,
        "versions": _versions(),
    }
    if compiled.accelerator is not None:
        meta["accelerator"] = compiled.accelerator
    with atomic_directory(out_dir) as tmp:
        compiled.executable.export_library(str(tmp / LIBRARY_NAME))
        if compiled.stored_weights is not None:
            weight_store.write(compiled.stored_weights, tmp / weight_store.FILE_NAME)
            meta["weight_store"] = {"file": weight_store.FILE_NAME, "tensors": len(compiled.stored_weights.tensors),
                                    "bytes": (tmp / weight_store.FILE_NAME).stat().st_size}
        if checkpoint.tokenizer_dir is not None:
            shutil.copy2(checkpoint.tokenizer_dir / TOKENIZER_NAME, tmp / TOKENIZER_NAME)
        (tmp / METADATA_NAME).write_text(json.dumps(meta, indent=2) + "\n")


def _check_metadata(meta: Any, path: Path) -> None:
    """Refuse metadata this version cannot run: another format, or a field it reads missing."""
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        found = meta.get("format_version") if isinstance(meta, dict) else None
        raise EdgeBertError(f"{path}: unsupported artifact format {found!r} (this edgebert-tvm reads version "
                            f"{FORMAT_VERSION}; recompile the model)")
    for section, fields in REQUIRED_METADATA.items():
        values = meta.get(section)
        missing = [f for f in fields if not isinstance(values, dict) or f not in values]
        if missing:
            raise EdgeBertError(f"{path}: {section}.{missing[0]} is missing (a damaged artifact; recompile the model)")


def _check_isa(meta: dict[str, Any], directory: Path) -> None:
    """Refuse an artifact compiled for ISA extensions this CPU lacks: its first such instruction would
    kill the process (SIGILL) instead of failing with a message."""
    isa = meta["target"].get("isa", [])
    if not isinstance(isa, list) or not all(isinstance(flag, str) for flag in isa):
        raise EdgeBertError(f"{directory / METADATA_NAME}: target.isa must be a list of ISA flags (a damaged "
                            "artifact; recompile the model)")
    missing = missing_isa(isa)
    if missing:
        mcpu = (meta.get("cpu_schedule") or {}).get("mcpu", "another CPU")
        raise EdgeBertError(f"{directory}: compiled for {mcpu}, whose {' '.join(missing)} this CPU lacks "
                            f"({describe_host()}): recompile it on this machine, or with --mcpu for this CPU")


@dataclasses.dataclass
class RunResult:
    """Outputs of `main` for every input row, and optionally per-call times in milliseconds."""

    logits: np.ndarray
    exit_layer: np.ndarray
    times_ms: list[float]


class Artifact:
    """A compiled model loaded onto the Relax VM of its target's device."""

    def __init__(self, directory: Path, metadata: dict[str, Any], vm: relax.VirtualMachine, device: tvm.runtime.Device) -> None:
        self.directory = directory
        self.metadata = metadata
        self.vm = vm
        self.device = device

    @classmethod
    def load(cls, directory: Path) -> "Artifact":
        size_thread_pool()  # before the VM runs anything: TVM's own default is half the cores on x86
        directory = Path(directory)
        meta_path, lib_path = directory / METADATA_NAME, directory / LIBRARY_NAME
        if not directory.is_dir():
            raise EdgeBertError(f"{directory}: no such artifact directory")
        if not meta_path.is_file() or not lib_path.is_file():
            raise EdgeBertError(f"{directory}: not an artifact (needs {METADATA_NAME} and {LIBRARY_NAME})")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise EdgeBertError(f"{meta_path}: not valid JSON ({err})") from None
        _check_metadata(meta, meta_path)
        _check_isa(meta, directory)
        device = run_device(meta["target"]["name"])
        if not device.exist:
            raise EdgeBertError(f"{directory}: compiled for {meta['target']['name']}, but no such device is present")
        try:
            library = tvm.runtime.load_module(str(lib_path))
        except RuntimeError as err:  # TVM's errors derive from RuntimeError
            raise EdgeBertError(f"{lib_path}: cannot load library ({str(err).splitlines()[-1]})") from None
        if "weight_store" in meta:
            store = directory / meta["weight_store"]["file"]
            if not store.is_file():
                raise EdgeBertError(f"{directory}: the compressed weights {store.name} are missing")
            weight_store.fill_cache(weight_store.read(store), device)
        return cls(directory, meta, relax.VirtualMachine(library, device), device)

    @property
    def batch(self) -> int:
        return self.metadata["input"]["batch"]

    @property
    def seq_len(self) -> int:
        return self.metadata["input"]["seq_len"]

    @property
    def lengths(self) -> list[int]:
        """The compiled sequence lengths, ascending; the last is `seq_len`, the longest input it takes."""
        return list(self.metadata["input"].get("lengths", [self.seq_len]))

    @property
    def tokenizer_path(self) -> Path | None:
        path = self.directory / TOKENIZER_NAME
        return path if path.is_file() else None

    def _plan(self, attention_mask: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Rows in compiled-batch chunks (the last padded by repeating its final row), each with the
        shortest compiled length that holds its rows."""
        rows, lengths = len(attention_mask), self.lengths
        picks = [np.minimum(np.arange(start, start + self.batch), rows - 1) for start in range(0, rows, self.batch)]
        return [(picked, length_for(attention_mask[picked], lengths)) for picked in picks]

    def row_lengths(self, attention_mask: np.ndarray) -> list[int]:
        """The compiled length each row runs at (its chunk's)."""
        lengths = [length for picked, length in self._plan(attention_mask) for _ in picked]
        return lengths[:len(attention_mask)]

    def _chunks(self, inputs: dict[str, np.ndarray]) -> list[tuple[str, list[tvm.runtime.Tensor]]]:
        """The chunks of `_plan`, each cut or padded to its length; with the suffix of that length."""
        return [(suffix(length, self.seq_len),
                 [tvm.runtime.tensor(fit(inputs[name][picked], length), self.device) for name in INPUT_NAMES])
                for picked, length in self._plan(inputs["attention_mask"])]

    def _call(self, function: str, inputs: dict[str, np.ndarray], repeat: int) -> tuple[list[np.ndarray], list[float]]:
        """Call `function` on every chunk `repeat` times; outputs (rows first) and per-call milliseconds."""
        rows = len(inputs["input_ids"])
        chunks = self._chunks(inputs)
        times: list[float] = []
        for _ in range(repeat):
            outputs = []
            for tail, args in chunks:
                start = time.perf_counter()
                out = self.vm[function + tail](*args)
                fields = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)
                outputs.append([field.numpy() for field in fields])
                times.append((time.perf_counter() - start) * 1e3)
        return [np.concatenate(parts)[:rows] for parts in zip(*outputs)], times

    def run(self, inputs: dict[str, np.ndarray], repeat: int = 1) -> RunResult:
        """The deployed model (`main`) on inputs already checked by `inputs.check_inputs`."""
        (logits, exit_layer), times = self._call(MAIN, inputs, repeat)
        return RunResult(logits, exit_layer, times)

    def all_exits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Logits of every exit, (rows, layers, labels), for checks against the PyTorch model."""
        (logits,), _ = self._call(ALL_EXITS, inputs, 1)
        return logits
