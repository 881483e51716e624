"""edgebert.FoldAttentionSpan: learned attention spans become compile-time structure.

The imported layer builds each head's span mask at run time (arange, clamp), multiplies the
softmax output by it and renormalises the rows, and computes every head over every key. With the
spans known at compile time (docs/ARCHITECTURE.md, "Attention spans"; models/span.py: by key
index j, m_j = clamp(((j - (T - 1)) + z S) / R + 1, 0, 1), or by distance, m = clamp((z S - |i - j|) / R, 0, 1))
this pass re-emits the layer's attention in three steps, each a `level`:

- "mask": the mask is a constant multiplied into the softmax output; nothing is built at run time.
- "heads": heads whose mask is all zero (they output zero) are removed: their rows of the Q, K, V
  weights and their columns of the attention-output weight are sliced away at compile time.
- "keys": key spans: heads whose mask is zero on a prefix of the keys score and read only the
  keys from the first non-zero one on. Heads are grouped by that first key, one batched attention
  per group, and the mask enters as log(m) added to the scores: softmax(s + log m) is the
  renormalised p * m. A group that starts past key 0 may see only padding for a short sentence,
  where the reference outputs zero; an indicator (any real key left) keeps that so.
  Distance spans: heads are grouped by their reach (the largest distance their mask keeps), and
  each group's queries read only the 2 reach + 1 keys around them (passes/banded_attention.py), in
  place from the layer's Q, K and V; log(m) enters the band's scores the same way.

The attention is found from the softmax: the scores are `matmul(q, k) * scale + bias`, q, k and v
trace back through views to `bias + matmul(x, permute_dims(W))` with constant W, and the output
projection is the constant-weight matmul that the context flows into. A layer without that shape
is an error, not a silent skip.

Place in the pipeline: first of the graph passes (compiler.PIPELINE_ORDER). It needs the importer's
per-projection attention with float32 constant weights, so it runs before FuseQKV, FoldSparsity,
QuantizeWeightsAdaptivFloat and ApproximateRedundantData change those weights or that form; llvm and
cuda only (the edgebert chip applies spans in its softmax unit).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import tvm
from tvm import relax

from ..errors import EdgeBertError, InternalError
from ..contract import GROUP_ATTR, LAYER, block_functions, with_report
from ..models.span import SPAN_FORMS, SPAN_RENORM_EPS, distance_offsets, key_offsets, span_mask
from .banded_attention import BAND_OUTSIDE, banded_context, banded_scores

LEVELS = ("mask", "heads", "keys")
VIEW_OPS = frozenset({"relax.reshape", "relax.permute_dims", "relax.broadcast_to", "relax.expand_dims",
                      "relax.squeeze"})
# Ops between the softmax and the value matmul in the imported graph: the run-time span mask.
MASK_OPS = frozenset({"relax.multiply", "relax.divide"})


def check_spans(spans: object, num_groups: int, num_heads: int) -> np.ndarray:
    """Spans as a (layer groups, heads) array of z in [0, 1], or a one-line error."""
    try:
        z = np.asarray(spans, dtype=np.float64)
    except (TypeError, ValueError):
        raise EdgeBertError("attention spans must be a list of rows of numbers") from None
    if z.shape != (num_groups, num_heads):
        raise EdgeBertError(f"attention spans must have shape [{num_groups}, {num_heads}] (layers x heads), "
                            f"got {list(z.shape)}")
    if not np.all(np.isfinite(z)) or z.min() < 0 or z.max() > 1:
        raise EdgeBertError("attention spans must lie in [0, 1]")
    return z


def span_masks(z: np.ndarray, seq_len: int, span_max: int, span_ramp: int, padded_len: int | None,
               form: str = "key") -> np.ndarray:
    """Masks of one layer group, the same function the PyTorch model applies: (heads, keys) for key
    spans, (heads, queries, keys) for distance spans."""
    offsets = distance_offsets(seq_len) if form == "distance" else key_offsets(seq_len, padded_len)
    return span_mask(np.asarray(z, dtype=np.float32), offsets, span_max, span_ramp, form)


@dataclasses.dataclass
class Projection:
    """`bias + x @ weight.T` with constant weight (out, in) and bias (out,)."""

    weight: np.ndarray
    bias: np.ndarray


@dataclasses.dataclass
class Attention:
    """The pieces of one multi-head attention found in a layer function."""

    hidden: relax.Expr  # the layer input the projections read
    num_heads: int
    attention_bias: relax.Expr  # additive padding bias, (batch, 1, 1, keys)
    scale: float
    query: Projection
    key: Projection
    value: Projection
    output_var: relax.Var  # bound to the output projection's matmul (bias added after it)
    output_weight: np.ndarray  # (out, in)


class _Graph:
    """Bindings of a dataflow function, for walking from a value to its producer."""

    def __init__(self, func: relax.Function) -> None:
        self.bindings: dict[relax.Var, relax.Expr] = {}
        for block in func.body.blocks:
            for binding in block.bindings:
                self.bindings[binding.var] = binding.value

    def call(self, expr: relax.Expr, op: str | None = None) -> relax.Call | None:
        value = self.bindings.get(expr, expr) if isinstance(expr, relax.Var) else expr
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and (op is None or value.op.name == op):
            return value
        return None

    def through(self, expr: relax.Expr, ops: frozenset[str]) -> relax.Expr:
        """Follow first arguments back through the calls of `ops`."""
        while (call := self.call(expr)) is not None and call.op.name in ops:
            expr = call.args[0]
        return expr

    def calls(self, op: str) -> list[tuple[relax.Var, relax.Call]]:
        return [(var, call) for var in self.bindings if (call := self.call(var, op)) is not None]


def _constant(expr: relax.Expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None


def _split_add(graph: _Graph, expr: relax.Expr) -> tuple[relax.Expr, relax.Expr] | None:
    """add(a, b) as (the argument that is a call, the other one)."""
    add = graph.call(expr, "relax.add")
    if add is None:
        return None
    a, b = add.args
    return (a, b) if graph.call(a) is not None else (b, a)


def _weight_matmul(graph: _Graph, expr: relax.Expr) -> tuple[relax.Expr, np.ndarray] | None:
    """matmul(x, permute_dims(W)) with constant W: (x, W)."""
    matmul = graph.call(expr, "relax.matmul")
    if matmul is None:
        return None
    transpose = graph.call(matmul.args[1], "relax.permute_dims")
    weight = _constant(transpose.args[0]) if transpose is not None else None
    return None if weight is None else (matmul.args[0], weight)


def _projection(graph: _Graph, expr: relax.Expr) -> tuple[relax.Expr, Projection]:
    parts = _split_add(graph, graph.through(expr, VIEW_OPS))
    found = _weight_matmul(graph, parts[0]) if parts is not None else None
    bias = _constant(parts[1]) if parts is not None else None
    if found is None or bias is None:
        raise EdgeBertError("FoldAttentionSpan: a Q/K/V input is not a constant-weight linear projection")
    x, weight = found
    return graph.through(x, VIEW_OPS), Projection(weight, bias.reshape(-1))


def _num_heads(graph: _Graph, query: relax.Expr) -> int:
    """H from the (batch, seq, H, d) reshape that splits the query projection into heads."""
    expr = query
    while (call := graph.call(expr)) is not None and call.op.name in VIEW_OPS:
        if call.op.name == "relax.reshape" and len(call.ty.shape) == 4:
            return int(call.ty.shape[2])
        expr = call.args[0]
    raise EdgeBertError("FoldAttentionSpan: found no reshape that splits the query into heads")


def find_attention(func: relax.Function) -> Attention:
    """Locate the attention of an imported encoder layer (see the module docstring)."""
    graph = _Graph(func)
    softmaxes = graph.calls("relax.nn.softmax")
    if len(softmaxes) != 1:
        raise EdgeBertError(f"FoldAttentionSpan: expected one softmax in a layer, found {len(softmaxes)}")
    probs, softmax = softmaxes[0]
    scores = _split_add(graph, softmax.args[0])
    scaled = graph.call(scores[0], "relax.multiply") if scores is not None else None
    qk = graph.call(graph.through(scaled.args[0], VIEW_OPS), "relax.matmul") if scaled is not None else None
    scale = _constant(scaled.args[1]) if scaled is not None else None
    if qk is None or scale is None or scale.size != 1:
        raise EdgeBertError("FoldAttentionSpan: attention scores are not matmul(q, k) * scale + bias")
    hidden, query = _projection(graph, qk.args[0])
    key_input, key = _projection(graph, qk.args[1])
    context = [(var, call) for var, call in graph.calls("relax.matmul")
               if graph.through(call.args[0], VIEW_OPS | MASK_OPS).same_as(probs)]
    if len(context) != 1:
        raise EdgeBertError("FoldAttentionSpan: no single matmul reads the attention probabilities")
    context_var, context_call = context[0]
    value_input, value = _projection(graph, context_call.args[1])
    if not (key_input.same_as(hidden) and value_input.same_as(hidden)):
        raise EdgeBertError("FoldAttentionSpan: Q, K and V do not project the same hidden state (not self-attention)")
    outputs = [(var, found[1]) for var, call in graph.calls("relax.matmul")
               if graph.through(call.args[0], VIEW_OPS).same_as(context_var)
               and (found := _weight_matmul(graph, var)) is not None]
    if len(outputs) != 1:
        raise EdgeBertError("FoldAttentionSpan: the attention context feeds no single output projection")
    output_var, output_weight = outputs[0]
    return Attention(hidden, _num_heads(graph, qk.args[0]), scores[1], float(scale.reshape(())), query, key, value,
                     output_var, output_weight)


@dataclasses.dataclass(frozen=True)
class HeadGroup:
    """Heads (original indices) that attend to the same keys: the range [first_key, seq_len) (key
    spans), or with `reach` the band of keys within that distance of each query (distance spans)."""

    heads: tuple[int, ...]
    first_key: int = 0
    reach: int | None = None


def _reach(mask: np.ndarray) -> int:
    """The largest query-key distance a (queries, keys) distance mask keeps."""
    queries, keys = np.indices(mask.shape)
    return int(np.abs(queries - keys)[mask > 0].max())


def _log_mask(masks: np.ndarray) -> np.ndarray:
    """log m as float32 scores to add, BAND_OUTSIDE where m is 0: softmax(s + log m) is p * m renormalised."""
    with np.errstate(divide="ignore"):
        return np.where(masks > 0, np.log(masks), BAND_OUTSIDE).astype("float32")


def head_groups(masks: np.ndarray, level: str) -> list[HeadGroup]:
    """Which heads are computed, over which keys, at `level` (in the order they are emitted)."""
    heads = range(masks.shape[0])
    if level != "mask":
        heads = [h for h in heads if masks[h].any()]
    if level != "keys":
        return [HeadGroup(tuple(heads))] if heads else []
    if masks.ndim == 3:  # distance spans: a band per reach; a band as wide as the sequence is no band
        seq_len = masks.shape[-1]
        reach = {h: r if 2 * (r := _reach(masks[h])) + 1 < seq_len else None for h in heads}
        ordered = sorted(heads, key=lambda h: (reach[h] is None, reach[h] or 0, h))
        return [HeadGroup(tuple(g), reach=r) for r, g in itertools.groupby(ordered, key=reach.get)]
    first = {h: int(np.flatnonzero(masks[h])[0]) for h in heads}
    ordered = sorted(heads, key=lambda h: (first[h], h))
    return [HeadGroup(tuple(g), k) for k, g in itertools.groupby(ordered, key=first.get)]


def span_plan(z: np.ndarray, seq_len: int, span_max: int, span_ramp: int, padded_len: int | None,
              level: str, form: str = "key") -> list[dict[str, object]]:
    """Per layer group: the heads kept and the keys each group of them reads (for metadata)."""
    plan = []
    for row in z:
        groups = head_groups(span_masks(row, seq_len, span_max, span_ramp, padded_len, form), level)
        kept = sorted(h for g in groups for h in g.heads)
        ranges = [{"heads": list(g.heads), "first_key": g.first_key} if form == "key" else
                  {"heads": list(g.heads), "reach": g.reach} for g in groups]
        plan.append({"heads_kept": kept, "heads_removed": [h for h in range(len(row)) if h not in kept],
                     "key_ranges": ranges})
    return plan


class _AttentionEmitter:
    """Emits the folded attention into a block builder (shapes: B batch, T keys, d head size)."""

    def __init__(self, bb: relax.BlockBuilder, attention: Attention, masks: np.ndarray, level: str) -> None:
        self.bb, self.attn, self.masks, self.level = bb, attention, masks, level
        self.head_dim = attention.query.weight.shape[0] // attention.num_heads
        self.batch, self.seq_len, self.width = (int(d) for d in attention.hidden.ty.shape)

    def _rows(self, heads: list[int]) -> np.ndarray:
        return np.concatenate([np.arange(h * self.head_dim, (h + 1) * self.head_dim) for h in heads])

    def _project(self, x: relax.Expr, proj: Projection, rows: np.ndarray) -> relax.Expr:
        """(B, heads, T, d) in the importer's form: bias + matmul(x, permute_dims(W))."""
        weight = relax.const(np.ascontiguousarray(proj.weight[rows]))
        y = self.bb.emit(relax.op.matmul(x, relax.op.permute_dims(weight, [1, 0])))
        y = self.bb.emit(relax.op.add(relax.const(np.ascontiguousarray(proj.bias[rows])), y))
        y = self.bb.emit(relax.op.reshape(y, (self.batch, self.seq_len, len(rows) // self.head_dim, self.head_dim)))
        return self.bb.emit(relax.op.permute_dims(y, [0, 2, 1, 3]))

    def _slice(self, x: relax.Expr, axes: list[int], begin: list[int], end: list[int]) -> relax.Expr:
        shape = [int(d) for d in x.ty.shape]
        if all(b == 0 and e == shape[a] for a, b, e in zip(axes, begin, end)):
            return x
        return self.bb.emit(relax.op.strided_slice(x, axes, begin, end))

    def _band(self, q: relax.Expr, k: relax.Expr, v: relax.Expr, start: int, group: HeadGroup) -> relax.Expr:
        """Each query against only the keys within `group.reach` of it, read in place from q, k, v."""
        reach, width = group.reach, 2 * group.reach + 1
        queries = np.arange(self.seq_len)[:, None]
        keys = queries - reach + np.arange(width)[None, :]  # (queries, band slots)
        inside = (keys >= 0) & (keys < self.seq_len)
        masks = self.masks[list(group.heads)][:, queries, keys.clip(0, self.seq_len - 1)]
        log_mask = relax.const(_log_mask(np.where(inside, masks, 0)))  # slots past either end: no key
        bias = self.attn.attention_bias
        scores = self.bb.emit_te(banded_scores, q, k, bias, log_mask, start, reach, self.attn.scale,
                                 primfunc_name_hint="banded_scores")
        probs = self.bb.emit(relax.op.nn.softmax(scores, axis=-1))
        return self.bb.emit_te(banded_context, probs, v, bias, start, reach, primfunc_name_hint="banded_context")

    def _group(self, q: relax.Expr, k: relax.Expr, v: relax.Expr, start: int, group: HeadGroup) -> relax.Expr:
        if group.reach is not None:
            return self._band(q, k, v, start, group)
        stop, first, seq = start + len(group.heads), group.first_key, self.seq_len
        q = self._slice(q, [1], [start], [stop])
        k = self._slice(k, [1, 2], [start, first], [stop, seq])
        v = self._slice(v, [1, 2], [start, first], [stop, seq])
        scores = self.bb.emit(relax.op.matmul(q, relax.op.permute_dims(k, [0, 1, 3, 2])))
        scores = self.bb.emit(relax.op.multiply(scores, relax.const(self.attn.scale, "float32")))
        bias = self._slice(self.attn.attention_bias, [3], [first], [seq])
        scores = self.bb.emit(relax.op.add(scores, bias))
        if self.masks.ndim == 3:  # distance spans, every key: (1, heads, queries, keys)
            masks = self.masks[list(group.heads)][None].astype("float32")
        else:
            masks = self.masks[list(group.heads), first:][None, :, None, :].astype("float32")
        if self.level == "keys":
            if (masks < 1).any():
                scores = self.bb.emit(relax.op.add(scores, relax.const(_log_mask(masks))))
            probs = self.bb.emit(relax.op.nn.softmax(scores, axis=-1))
        else:
            probs = self.bb.emit(relax.op.nn.softmax(scores, axis=-1))
            probs = self.bb.emit(relax.op.multiply(probs, relax.const(masks)))
            total = self.bb.emit(relax.op.sum(probs, axis=[-1], keepdims=True))
            probs = self.bb.emit(relax.op.divide(probs, relax.op.add(total, relax.const(SPAN_RENORM_EPS, "float32"))))
        context = self.bb.emit(relax.op.matmul(probs, v))
        if first > 0:
            context = self.bb.emit(relax.op.multiply(context, self._any_real_key(bias)))
        return context

    def _any_real_key(self, bias: relax.Expr) -> relax.Expr:
        """1 where a row's key range holds a real token, else 0 (the reference outputs zero there).

        Real tokens are contiguous (right- or left-padded rows), so the range holds one exactly
        when its first or its last key is real: two element reads instead of a reduction, which
        would not fuse into the context matmul's epilogue.
        """
        keys = int(bias.ty.shape[-1])
        ends = relax.op.maximum(self._slice(bias, [3], [0], [1]), self._slice(bias, [3], [keys - 1], [keys]))
        return relax.op.astype(relax.op.greater(ends, relax.const(-1e30, "float32")), "float32")

    def emit(self, groups: list[HeadGroup], output_shape: list[int]) -> relax.Expr:
        """The output projection's matmul result (before its bias), in `output_shape`."""
        heads = [h for g in groups for h in g.heads]
        if not heads:  # every head is dead: the attention contributes only its output bias
            return self.bb.emit(relax.const(np.zeros(output_shape, "float32")))
        rows = self._rows(heads)
        x = self.attn.hidden
        q, k, v = (self._project(x, p, rows) for p in (self.attn.query, self.attn.key, self.attn.value))
        contexts, start = [], 0
        for group in groups:
            contexts.append(self._group(q, k, v, start, group))
            start += len(group.heads)
        context = contexts[0] if len(contexts) == 1 else self.bb.emit(relax.op.concat(contexts, axis=1))
        context = self.bb.emit(relax.op.permute_dims(context, [0, 2, 1, 3]))
        context = self.bb.emit(relax.op.reshape(context, (self.batch, self.seq_len, len(rows))))
        weight = relax.const(np.ascontiguousarray(self.attn.output_weight[:, rows]))
        out = self.bb.emit(relax.op.matmul(context, relax.op.permute_dims(weight, [1, 0])))
        return self.bb.emit(relax.op.reshape(out, output_shape))


@relax.expr_functor.mutator
class _LayerRewriter(relax.PyExprMutator):
    """Replaces the output projection's binding with the folded attention; the rest is left dead."""

    def __init__(self, mod: tvm.IRModule, attention: Attention, masks: np.ndarray, level: str) -> None:
        super().__init__(mod)
        self.attention, self.masks, self.level = attention, masks, level

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if not binding.var.same_as(self.attention.output_var):
            super().visit_var_binding_(binding)
            return
        attention = dataclasses.replace(self.attention, hidden=self.visit_expr(self.attention.hidden),
                                        attention_bias=self.visit_expr(self.attention.attention_bias))
        emitter = _AttentionEmitter(self.builder_, attention, self.masks, self.level)
        shape = [int(d) for d in binding.var.ty.shape]
        self.set_var_remap(binding.var, emitter.emit(head_groups(self.masks, self.level), shape))


@tvm.transform.module_pass(opt_level=0, name="edgebert.FoldAttentionSpan")
class FoldAttentionSpan:
    """Fold per-head spans z (layer groups x heads) into every encoder layer of a structured module.

    `span_max`, `span_ramp` and `padded_len` are the model's S, R and training length (its
    `edgebert.json`); `level` is "mask", "heads" or "keys" (each includes the ones before).
    """

    def __init__(self, spans: object, span_max: int, span_ramp: int, padded_len: int | None = None,
                 level: str = "keys", form: str = "key") -> None:
        if level not in LEVELS:
            raise EdgeBertError(f"span folding level must be one of {', '.join(LEVELS)}, got {level!r}")
        if span_max < 1 or span_ramp < 1:
            raise EdgeBertError("span_max and span_ramp must be >= 1")
        if form not in SPAN_FORMS:
            raise EdgeBertError(f"span form must be one of {', '.join(SPAN_FORMS)}, got {form!r}")
        self.spans, self.span_max, self.span_ramp, self.padded_len, self.level, self.form = (
            spans, span_max, span_ramp, padded_len, level, form)

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        layers = block_functions(mod, LAYER)
        if not layers:
            raise InternalError("FoldAttentionSpan needs a module from the structured importer (layer blocks)")
        found = {gv: find_attention(f) for gv, f in layers.items()}
        z = check_spans(self.spans, len(layers), next(iter(found.values())).num_heads)
        seq_len = int(next(iter(found.values())).hidden.ty.shape[1])
        for gv, func in layers.items():
            masks = span_masks(z[int(func.attrs[GROUP_ATTR])], seq_len, self.span_max, self.span_ramp, self.padded_len,
                               self.form)
            rewriter = _LayerRewriter(mod, found[gv], masks, self.level)
            rewritten = rewriter.visit_expr(func)
            for kernel, prim_func in rewriter.builder_.get().functions_items():  # the banded kernels
                if isinstance(prim_func, tvm.tirx.PrimFunc) and kernel not in mod:
                    mod[kernel] = prim_func
            mod[gv] = relax.analysis.remove_all_unused(rewritten)
        return with_report(mod, "attention_spans", {
            "level": self.level, "form": self.form, "spans": z.tolist(),
            "layer_groups": span_plan(z, seq_len, self.span_max, self.span_ramp, self.padded_len, self.level,
                                      self.form)})
