"""Structured import: an EdgeBERT model becomes a Relax module with one function per block.

Each block (embeddings, each distinct encoder layer, each exit) becomes its own function, so block
boundaries stay function boundaries that passes can find by attribute, and ALBERT's shared layer is
one function (its weights once) called by every layer. Blocks of one shape (BERT's layers, the
off-ramps) are exported with torch.export and translated by TVM's Relax torch frontend once, their
weights kept as parameters; each block is that function with its own weights bound as constants, the
same function a separate export would give, at a fraction of the cost (an export and translation
takes about 0.4 s a block). Several compiled lengths (`import_lengths`) share one export per block
shape, its sequence length symbolic and bound to each, and the translations are kept for the
process (`_TRANSLATED`, keyed by everything a block's forward reads besides its weights) and on disk
(`translations`), so a second compile of one model, with other options or in a new process, exports
nothing. Two entry points call the blocks
in order:

- `main(input_ids, attention_mask, token_type_ids) -> (logits, exit_layer)`: the deployed model;
  without early exit folded in, it runs every layer and reports the last one as the exit layer.
- `all_exits(...) -> logits of every exit, (batch, layers, labels)`: for checks against PyTorch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from typing import Any, Callable, Sequence

import torch
import tvm
from torch import nn
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.relax.frontend.torch import from_exported_program
from tvm.relax.utils import copy_with_new_vars

from . import translations
from .contract import (ALL_EXITS, BLOCK_ATTR, EMBEDDINGS, EXIT, GROUP_ATTR, INPUT_NAMES, LAYER, LAYER_ATTR, MAIN,
                       exit_name, layer_name)
from .models.modeling import EdgeBertForSequenceClassification, encoder_layer


class _Block(nn.Module):
    """One block of the model as a module torch.export can trace (only used weights are kept)."""

    def __init__(self, model: EdgeBertForSequenceClassification, run: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        self.run = run

    def forward(self, *args: torch.Tensor) -> Any:
        return self.run(*args)


class _LayerBlock(nn.Module):
    """Encoder layer group `group` with its weights (and span row) named the same in every group, so
    one export serves every layer of the same shape (`_Exporter`)."""

    def __init__(self, model: EdgeBertForSequenceClassification, group: int) -> None:
        super().__init__()
        self.parts = model.layer_parts(group)
        for field in dataclasses.fields(self.parts):
            if isinstance(part := getattr(self.parts, field.name), nn.Module):
                self.add_module(field.name, part)
        self.span_z = None if model.span_z is None else nn.Parameter(model.span_z[group].detach().clone())
        self.span_of = model.span_of
        self.num_heads = model.config.num_attention_heads

    def forward(self, hidden: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        span = None if self.span_z is None else self.span_of(self.span_z, hidden.shape[1])
        return encoder_layer(self.parts, hidden, attn_bias, self.num_heads, span, dropout=0.0)


class _OffRampBlock(nn.Module):
    """One off-ramp, its weights named the same for every layer (`_Exporter`)."""

    def __init__(self, ramp: nn.Module) -> None:
        super().__init__()
        self.ramp = ramp

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.ramp(hidden)


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
    """TVM's Relax torch frontend on one exported block, its lookups clamped (`_ClipTakes`); the
    block's parameters stay function parameters (after the inputs), to be bound by `_Exporter`."""
    with warnings.catch_warnings():
        # torch's own run_decompositions (called by the frontend) deep-copies pytree LeafSpecs, which
        # torch itself deprecates: nothing of ours to fix.
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                category=FutureWarning)
        mod = from_exported_program(program, keep_params_as_input=True, unwrap_unit_return_tuple=True)
    return _ClipTakes(mod).visit_expr(mod["main"])


# Translated blocks, for the process: a block's translation (its weights unbound) depends on its
# code, its parameters' names and shapes, the model's configurations and buffers, and the input
# shapes; `_model_key` and `_Exporter.function`'s key hold all of them. Bounded: a long-lived process
# compiling many models keeps the most recent.
_TRANSLATED: dict[tuple, tuple[relax.Function, dict[str, str]]] = {}
_TRANSLATED_LIMIT = 64


def _model_key(model: EdgeBertForSequenceClassification) -> str:
    """What, besides a block's own parameters, its forward can read: the model's class, both
    configurations and its buffers' contents."""
    digest = hashlib.sha256()
    digest.update(type(model).__name__.encode())
    digest.update(model.config.to_json_string(use_diff=False).encode())
    digest.update(json.dumps(model.edgebert.to_dict(), sort_keys=True, default=str).encode())
    for name, buffer in model.named_buffers():
        digest.update(name.encode())
        digest.update(buffer.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


class _Exporter:
    """Relax functions of blocks, one export and translation per block shape (and model, for the
    process: `_TRANSLATED`), for every length.

    The shape of a `_LayerBlock` or `_OffRampBlock` is its class, its modules' types and its
    parameters' names, shapes and dtypes; its forward depends on nothing else (the model's
    configuration is the same for every block), so two blocks of one shape differ only in the weights
    bound into the translated function. A block is exported once with its sequence length symbolic
    (`torch.export.Dim`, 1..cap) and the translated function is bound to each compiled length
    (`bind_symbolic_vars`): one export serves every length, and the bound function is structurally
    equal to a static export at that length (tests/test_lengths.py). With `symbolic` off (one length,
    or spans whose formula changes at the trained length: `import_lengths`) it is exported at each
    length.
    """

    def __init__(self, model: EdgeBertForSequenceClassification, cap: int, symbolic: bool) -> None:
        self._seq = torch.export.Dim("seq", min=1, max=cap) if symbolic else None
        self._model = _model_key(model)
        # By parameter, which the entry keeps alive (a freed parameter's id could be reused by another
        # block's): every length binds the same tensors.
        self._weights: dict[int, tuple[torch.Tensor, tvm.runtime.Tensor]] = {}

    def function(self, block: nn.Module, args: tuple[torch.Tensor, ...], seq_dims: tuple[int, ...], name: str,
                 attrs: dict[str, Any]) -> relax.Function:
        """`block` as a Relax function at the length of `args`, whose sequence axes are `seq_dims`."""
        params = dict(block.named_parameters(remove_duplicate=False))  # tied weights under every name
        # A `_Block` holds the whole model and runs a lambda: its shape says nothing of what it computes.
        shape = (name,) if isinstance(block, _Block) else (
            type(block).__name__, tuple(type(m).__name__ for m in block.modules()),
            tuple((n, tuple(p.shape), p.dtype) for n, p in params.items()))
        length = args[0].shape[seq_dims[0]]
        inputs = tuple((tuple(a.shape[:d]) + tuple(a.shape[d + 1:]), a.dtype) for a, d in zip(args, seq_dims))
        key = (self._model, inputs, *shape, ("symbolic", self._seq.max) if self._seq is not None else length)
        if key not in _TRANSLATED:
            while len(_TRANSLATED) >= _TRANSLATED_LIMIT:
                del _TRANSLATED[next(iter(_TRANSLATED))]
            _TRANSLATED[key] = translations.load(key) or self._export_and_keep(key, block, args, seq_dims)
        func, names = _TRANSLATED[key]
        if self._seq is not None:
            (seq,) = relax.analysis.defined_symbolic_vars(func)
            func = func.bind_symbolic_vars({seq: length})
        weights = {var: self._weight(params[target]) for var, target in names.items()}
        # Fresh variables: two functions must not share a definition (Relax's well-formedness).
        func = copy_with_new_vars(func.bind_params(weights))
        return func.with_attrs({"global_symbol": name, BLOCK_ATTR: attrs.pop("block"), **attrs})

    def _export_and_keep(self, key: tuple, block: nn.Module, args: tuple[torch.Tensor, ...],
                         seq_dims: tuple[int, ...]) -> tuple[relax.Function, dict[str, str]]:
        func, names = self._export(block, args, seq_dims)
        translations.save(key, func, names)
        return func, names

    def _export(self, block: nn.Module, args: tuple[torch.Tensor, ...],
                seq_dims: tuple[int, ...]) -> tuple[relax.Function, dict[str, str]]:
        dynamic = None
        if self._seq is not None:
            dynamic = tuple({dim: self._seq} for dim in seq_dims)
            dynamic = (dynamic,) if isinstance(block, _Block) else dynamic  # a `_Block` takes *args
        with torch.no_grad():
            program = torch.export.export(block.eval(), args, dynamic_shapes=dynamic)
        names = {spec.arg.name: spec.target for spec in program.graph_signature.input_specs
                 if spec.kind is torch.export.graph_signature.InputKind.PARAMETER}
        # Without the frontend's bookkeeping: its copy of the weights ("params"; `function` binds each
        # block's own) and its input count and length bounds, which binding makes stale.
        func = _translate(program)
        for attr in ("params", "num_input", "tir_var_lower_bound", "tir_var_upper_bound"):
            func = func.without_attr(attr)
        return func, names

    def _weight(self, param: torch.Tensor) -> tvm.runtime.Tensor:
        if id(param) not in self._weights:
            self._weights[id(param)] = (param, tvm.runtime.tensor(param.detach().contiguous().numpy()))
        return self._weights[id(param)][1]


def import_model(model: EdgeBertForSequenceClassification, spec: InputSpec) -> tvm.IRModule:
    """Translate `model` (in eval mode) into the block-structured Relax module described above."""
    return import_lengths(model, spec.batch, [spec.seq_len])[0]


def import_lengths(model: EdgeBertForSequenceClassification, batch: int, lengths: Sequence[int]) -> list[tvm.IRModule]:
    """`import_model` at each of `lengths`, every block exported once for all of them (`_Exporter`)."""
    model = model.eval()
    cap = max(lengths)
    # A symbolic export costs about 0.7x a static one more: it pays from two lengths on. The span
    # formula counts from the trained length T, or from the input's end past it (or with no T): a
    # branch on the length that one symbolic export cannot take, and an offset by the symbolic length
    # that TVM's frontend mistypes (float tensor minus int64), so such a model is exported at each length.
    trained = model.edgebert.seq_len
    symbolic = len(set(lengths)) > 1 and (model.span_z is None or (trained is not None and trained >= cap))
    exporter = _Exporter(model, cap, symbolic)
    # The cap first: torch.export takes its example length as typical, and a length of 1 as a constant.
    modules = {length: _import_at(model, exporter, InputSpec(batch, length)) for length in sorted(lengths, reverse=True)}
    return [modules[length] for length in lengths]


def _import_at(model: EdgeBertForSequenceClassification, exporter: _Exporter, spec: InputSpec) -> tvm.IRModule:
    """The module at one input shape, its blocks from `exporter`."""
    # Distinct tensors per input: torch.export would alias one tensor passed twice.
    ids, types, mask = (torch.full((spec.batch, spec.seq_len), v, dtype=torch.int64) for v in (0, 0, 1))
    with torch.no_grad():
        hidden, attn_bias = model.embed(ids, types, mask)

    bb = relax.BlockBuilder()
    embeddings = bb.add_func(
        exporter.function(_Block(model, lambda i, t, m: model.embed(i, t, m)), (ids, types, mask), (1, 1, 1), EMBEDDINGS,
                          {"block": EMBEDDINGS}),
        EMBEDDINGS,
    )
    groups = [model.arch.layer_group(model.config, i) for i in range(model.num_layers)]
    layer_funcs = {}
    for group in sorted(set(groups)):
        func = exporter.function(_LayerBlock(model, group), (hidden, attn_bias), (1, 3), layer_name(group),
                                 {"block": LAYER, GROUP_ATTR: group})
        layer_funcs[group] = bb.add_func(func, layer_name(group))
    exit_funcs = []
    for index in range(model.num_layers):
        name = exit_name(index + 1)
        block = (_OffRampBlock(model.offramps[index]) if index < model.num_layers - 1
                 else _Block(model, lambda h: model.exit_logits(model.num_layers - 1, h)))
        func = exporter.function(block, (hidden,), (1,), name, {"block": EXIT, LAYER_ATTR: index + 1})
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
