"""The main job: compile the built-in default model and check the artifact against PyTorch on SST-2 dev."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .artifact import Artifact, write_artifact
from .compiler import CompileOptions, compile_model
from .data import builtin_split, read_tsv, task_for
from .inputs import encode, load_tokenizer
from .models.checkpoint import load

DEFAULT_MODEL = "minilm-l6"
DEFAULT_SEQ_LEN = 64


def run_demo(workdir: Path, sentences: int = 64, model: str = DEFAULT_MODEL, seq_len: int = DEFAULT_SEQ_LEN) -> dict:
    """Compile `model`, run `sentences` SST-2 dev sentences through the artifact and PyTorch, print a report."""
    workdir.mkdir(parents=True, exist_ok=True)
    artifact_dir = workdir / f"{model}-llvm"
    checkpoint = load(model)
    options = CompileOptions(target="llvm", batch=1, seq_len=seq_len)
    print(f"compiling {model} for this CPU (batch 1, seq {seq_len}) ...")
    compiled = compile_model(checkpoint, options)
    write_artifact(checkpoint, compiled, options, artifact_dir)
    artifact = Artifact.load(artifact_dir)
    print(f"  artifact {artifact_dir}: compile {sum(compiled.compile_seconds.values()):.1f} s, "
          f"constants {compiled.constant_bytes / 2**20:.1f} MiB")

    examples = read_tsv(builtin_split(task_for("sst2"), "dev"), task_for("sst2"), limit=sentences)
    inputs = encode(load_tokenizer(artifact.tokenizer_path, seq_len), [e.text for e in examples])
    tvm_ms, torch_ms, diffs, agree = [], [], [], 0
    model_pt = checkpoint.model
    for row in tqdm(range(len(examples)), desc="SST-2 dev", unit="sentence"):
        one = {k: v[row:row + 1] for k, v in inputs.items()}
        result = artifact.run(one)
        tvm_ms.append(result.times_ms[0])
        tensors = [torch.from_numpy(one[k]) for k in ("input_ids", "attention_mask", "token_type_ids")]
        with torch.no_grad():
            start = time.perf_counter()
            reference = model_pt(*tensors)[:, -1].numpy()
            torch_ms.append((time.perf_counter() - start) * 1e3)
        diffs.append(float(np.abs(result.logits - reference).max()))
        agree += int(np.argmax(result.logits) == np.argmax(reference))
    all_exits = artifact.all_exits(inputs)
    with torch.no_grad():
        reference_exits = model_pt(*[torch.from_numpy(inputs[k]) for k in ("input_ids", "attention_mask", "token_type_ids")]).numpy()
    report = {
        "sentences": len(examples),
        "max_abs_diff_final": max(diffs),
        "max_abs_diff_every_exit": float(np.abs(all_exits - reference_exits).max()),
        "same_class": agree / len(examples),
        "tvm_median_ms": float(np.median(tvm_ms)),
        "torch_median_ms": float(np.median(torch_ms)),
    }
    print(f"SST-2 dev, {report['sentences']} sentences, {model} with untrained exits:")
    print(f"  max |TVM - PyTorch| final logits {report['max_abs_diff_final']:.2e}, "
          f"every exit {report['max_abs_diff_every_exit']:.2e}; same class {report['same_class']:.0%}")
    print(f"  latency per sentence (median): edgebert-tvm {report['tvm_median_ms']:.1f} ms, "
          f"PyTorch eager {report['torch_median_ms']:.1f} ms, ratio {report['tvm_median_ms'] / report['torch_median_ms']:.2f}x")
    return report
