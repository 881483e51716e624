"""Structured import: an EdgeBERT model becomes a Relax module with one function per block.

Each block (embeddings, each distinct encoder layer, each exit) is exported on its own with
torch.export and translated by TVM's Relax torch frontend, so block boundaries stay function
boundaries that passes can find by attribute, and ALBERT's shared layer is one function (its
weights once) called by every layer. Two entry points call the blocks in order:

- `main(input_ids, attention_mask, token_type_ids) -> (logits, exit_layer)`: the deployed model;
  without early exit folded in, it runs every layer and reports the last one as the exit layer.
- `all_exits(...) -> logits of every exit, (batch, layers, labels)`: for checks against PyTorch.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable

import torch
import tvm
from torch import nn
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.relax.frontend.torch import from_exported_program

from .contract import (ALL_EXITS, BLOCK_ATTR, EMBEDDINGS, EXIT, GROUP_ATTR, INPUT_NAMES, LAYER, LAYER_ATTR, MAIN,
                       exit_name, layer_name)
from .models.modeling import EdgeBertForSequenceClassification


class _Block(nn.Module):
    """One block of the model as a module torch.export can trace (only used weights are kept)."""

    def __init__(self, model: EdgeBertForSequenceClassification, run: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        self.run = run

    def forward(self, *args: torch.Tensor) -> Any:
        return self.run(*args)


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """Static input shape that the module is compiled for."""

    batch: int
    seq_len: int


@mutator
class _ClipTakes(PyExprMutator):
    """`take` in "clip" mode, not the frontend's default "fast": the same rows for in-range ids, a
    clamped read instead of one past the table for an out-of-range id (the Python API does not check ids
    as the CLI does), and no "Fast mode segfaults" line logged by TVM's legalization for every lookup."""

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 (visitor naming)
        call = super().visit_call_(call)
        if call.op.same_as(tvm.ir.Op.get("relax.take")) and call.attrs.mode == "fast":
            return relax.op.take(call.args[0], call.args[1], call.attrs.axis, mode="clip")
        return call


def _translate(program: torch.export.ExportedProgram) -> relax.Function:
    """TVM's Relax torch frontend on one exported block, its lookups clamped (`_ClipTakes`)."""
    with warnings.catch_warnings():
        # torch's own run_decompositions (called by the frontend) deep-copies pytree LeafSpecs, which
        # torch itself deprecates: nothing of ours to fix.
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                category=FutureWarning)
        mod = from_exported_program(program, unwrap_unit_return_tuple=True)
    return _ClipTakes(mod).visit_expr(mod["main"])


def _export_block(block: _Block, args: tuple[torch.Tensor, ...], name: str, attrs: dict[str, Any]) -> relax.Function:
    with torch.no_grad():
        program = torch.export.export(block.eval(), args)
    return _translate(program).with_attrs({"global_symbol": name, BLOCK_ATTR: attrs.pop("block"), **attrs})


def import_model(model: EdgeBertForSequenceClassification, spec: InputSpec) -> tvm.IRModule:
    """Translate `model` (in eval mode) into the block-structured Relax module described above."""
    model = model.eval()
    # Distinct tensors per input: torch.export would alias one tensor passed twice.
    ids, types, mask = (torch.full((spec.batch, spec.seq_len), v, dtype=torch.int64) for v in (0, 0, 1))
    with torch.no_grad():
        hidden, attn_bias = model.embed(ids, types, mask)

    bb = relax.BlockBuilder()
    embeddings = bb.add_func(
        _export_block(_Block(model, lambda i, t, m: model.embed(i, t, m)), (ids, types, mask), EMBEDDINGS,
                      {"block": EMBEDDINGS}),
        EMBEDDINGS,
    )
    groups = [model.arch.layer_group(model.config, i) for i in range(model.num_layers)]
    layer_funcs = {}
    for group in sorted(set(groups)):
        first = groups.index(group)
        func = _export_block(
            _Block(model, lambda h, b, first=first: model.layer(first, h, b)), (hidden, attn_bias),
            layer_name(group), {"block": LAYER, GROUP_ATTR: group},
        )
        layer_funcs[group] = bb.add_func(func, layer_name(group))
    exit_funcs = []
    for index in range(model.num_layers):
        name = exit_name(index + 1)
        func = _export_block(
            _Block(model, lambda h, index=index: model.exit_logits(index, h)), (hidden,),
            name, {"block": EXIT, LAYER_ATTR: index + 1},
        )
        exit_funcs.append(bb.add_func(func, name))

    def entry(name: str, body: Callable[[list[relax.Expr]], relax.Expr]) -> None:
        params = [relax.Var(n, relax.TensorType((spec.batch, spec.seq_len), "int64")) for n in INPUT_NAMES]
        input_ids, attention_mask, token_type_ids = params
        with bb.function(name, params, attrs={"global_symbol": name}):
            with bb.dataflow():
                emb = bb.emit(relax.Call(embeddings, [input_ids, token_type_ids, attention_mask]))
                h, bias = bb.emit(relax.TupleGetItem(emb, 0)), bb.emit(relax.TupleGetItem(emb, 1))
                exits = []
                for index, group in enumerate(groups):
                    h = bb.emit(relax.Call(layer_funcs[group], [h, bias]))
                    exits.append(bb.emit(relax.Call(exit_funcs[index], [h])))
                out = bb.emit_output(body(exits))
            bb.emit_func_output(out)

    last_layer = relax.const([model.num_layers] * spec.batch, "int64")
    entry(MAIN, lambda exits: relax.Tuple([exits[-1], last_layer]))
    entry(ALL_EXITS, lambda exits: relax.op.stack(exits, axis=1))
    return bb.finalize()
