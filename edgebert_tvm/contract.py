"""The IR contract: the names and attributes by which the importer, the passes, the targets and the
runtime find the parts of a block-structured module (docs/ARCHITECTURE.md, "The IR contract").

The importer emits one Relax function per block, marked with `BLOCK_ATTR`; passes and targets find
blocks with `block_functions`, never by name patterns or literals of their own. Torch-free, so that
passes and the runtime can import it without PyTorch.
"""

from __future__ import annotations

import json
from typing import Any

import tvm
from tvm import relax

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")  # the order of every entry point's parameters

# Block kinds, the values of BLOCK_ATTR.
EMBEDDINGS = "embeddings"
LAYER = "layer"
EXIT = "exit"
BLOCK_KINDS = (EMBEDDINGS, LAYER, EXIT)

BLOCK_ATTR = "edgebert.block"  # on every block function: its kind
LAYER_ATTR = "edgebert.layer"  # on an exit: the 1-based layer it follows
GROUP_ATTR = "edgebert.layer_group"  # on a layer: its distinct-layer group (ALBERT's layers share group 0)
EXIT_THRESHOLDS_ATTR = "edgebert.exit_thresholds"  # on `main`, once FoldEntropyExit has folded exits in

REPORT_ATTR_PREFIX = "edgebert.report."  # module attrs: what each pass did, as JSON, for metadata.json

MAIN = "main"  # (input_ids, attention_mask, token_type_ids) -> (logits, exit_layer)
ALL_EXITS = "all_exits"  # same inputs -> every exit's logits, (batch, layers, labels)


def layer_name(group: int) -> str:
    """The function of distinct layer `group` (0-based)."""
    return f"layer_{group}"


def exit_name(layer: int) -> str:
    """The off-ramp after `layer` (1-based)."""
    return f"exit_{layer}"


def block_kind(func: tvm.ir.BaseFunc) -> str | None:
    """The block kind of a Relax function, or None for entry points, PrimFuncs and helpers."""
    if not isinstance(func, relax.Function) or func.attrs is None or BLOCK_ATTR not in func.attrs:
        return None
    return str(func.attrs[BLOCK_ATTR])


def block_functions(mod: tvm.IRModule, kind: str | None = None) -> dict[tvm.ir.GlobalVar, relax.Function]:
    """The block functions of `mod` (of one kind, or every kind), in the module's order."""
    if kind is not None and kind not in BLOCK_KINDS:
        raise ValueError(f"unknown block kind {kind!r}")
    return {gv: func for gv, func in mod.functions_items()
            if (found := block_kind(func)) is not None and (kind is None or found == kind)}


def block_calls(func: relax.Function, mod: tvm.IRModule) -> list[tuple[str, tvm.ir.GlobalVar]]:
    """The block functions an entry point calls, in the order it calls them: (block kind, callee)."""
    calls = []

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.GlobalVar):
            if (kind := block_kind(mod[expr.op])) is not None:
                calls.append((kind, expr.op))

    relax.analysis.post_order_visit(func.body, visit)
    return calls


def with_report(mod: tvm.IRModule, key: str, report: Any) -> tvm.IRModule:
    """`mod` carrying a pass's report (JSON-serialisable) under `key` in the artifact's `pass_reports`.
    Passes keep no state: what they did travels with the module they return."""
    return mod.with_attr(REPORT_ATTR_PREFIX + key, json.dumps(report))


def pass_reports(mod: tvm.IRModule) -> dict[str, Any]:
    """Every report the passes attached to `mod`, by key."""
    items = mod.attrs.items() if mod.attrs is not None else []
    return {str(k)[len(REPORT_ATTR_PREFIX):]: json.loads(str(v)) for k, v in items if str(k).startswith(REPORT_ATTR_PREFIX)}
