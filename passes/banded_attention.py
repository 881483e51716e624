"""Banded attention in TE: each query of a head group against only the keys within `reach` of it.

FoldAttentionSpan emits these for distance spans (passes/fold_attention_span.py). Band slot t of
query i is key j = i - reach + t; q, k and v are the layer's (batch, heads, seq, head_dim) tensors
of every kept head, read in place at the group's first head `start` (no per-group copy), and
`bias` is the (batch, 1, 1, seq) padding bias. Between the two kernels the band is a plain
(batch, heads, seq, 2 reach + 1) softmax.
"""

from __future__ import annotations

from tvm import te, tirx

# Score of a band slot past either end of the sequence or where the mask is 0: its softmax weight
# underflows to 0, and the context kernel skips the slot outright. Finite, so that a row whose real
# keys are all outside its band (a padded query) has no inf - inf.
BAND_OUTSIDE = -1e30
# The padding bias is the dtype's minimum for padded keys and 0 for real ones.
PADDED_BELOW = -1e30


def _key(i: tirx.PrimExpr, t: tirx.PrimExpr, reach: int, seq_len: tirx.PrimExpr) -> tirx.PrimExpr:
    """The key of band slot t of query i, clamped into the sequence (slots outside are masked)."""
    return tirx.max(tirx.min(i - reach + t, seq_len - 1), 0)


def banded_scores(q: te.Tensor, k: te.Tensor, bias: te.Tensor, log_mask: te.Tensor, start: int, reach: int,
                  scale: float) -> te.Tensor:
    """scores[b, h, i, t] = q_i . k_j * scale + bias_j + log m(|i - j|) for head start + h;
    `log_mask` (group heads, seq, band) holds log m, and BAND_OUTSIDE where a slot has no key."""
    batch, _, seq_len, head_dim = q.shape
    heads, _, width = log_mask.shape
    d = te.reduce_axis((0, head_dim), name="d")
    dot = te.compute(
        (batch, heads, seq_len, width),
        lambda b, h, i, t: te.sum(q[b, start + h, i, d] * k[b, start + h, _key(i, t, reach, seq_len), d], axis=d),
        name="band_dot")
    return te.compute(
        (batch, heads, seq_len, width),
        lambda b, h, i, t: dot[b, h, i, t] * tirx.const(scale, "float32") + bias[b, 0, 0, _key(i, t, reach, seq_len)]
        + log_mask[h, i, t],
        name="band_scores")


def banded_context(probs: te.Tensor, v: te.Tensor, bias: te.Tensor, start: int, reach: int) -> te.Tensor:
    """context[b, h, i, :] = sum over the band of probs * v_j, real keys only: a row whose band holds
    no real key is zero, as the span-masked reference's renormalisation makes it."""
    batch, heads, seq_len, width = probs.shape
    head_dim = v.shape[3]
    t = te.reduce_axis((0, width), name="t")

    def real(b: tirx.PrimExpr, i: tirx.PrimExpr, t: tirx.PrimExpr) -> tirx.PrimExpr:
        j = i - reach + t
        return tirx.all(j >= 0, j < seq_len, bias[b, 0, 0, _key(i, t, reach, seq_len)] > tirx.const(PADDED_BELOW, "float32"))

    return te.compute(
        (batch, heads, seq_len, head_dim),
        lambda b, h, i, e: te.sum(tirx.Select(real(b, i, t), probs[b, h, i, t] * v[b, start + h, _key(i, t, reach, seq_len), e],
                                              tirx.const(0.0, "float32")), axis=t),
        name="band_context")
