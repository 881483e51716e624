"""The adaptive attention span mask (docs/ARCHITECTURE.md, "Attention spans"), for PyTorch and numpy alike.

Torch-free, so that FoldAttentionSpan computes at compile time exactly the mask the PyTorch model
learns with: both call `span_mask`, on tensors in training and on arrays in the pass.

Two forms. "distance" (Sukhbaatar et al.) masks key j for query i by their distance |i - j|: it
means the same at every length and with any padding, and a head whose span reaches 0 attends to
nothing. "key" is EdgeBERT's reference code: the distance is counted from the last padded position
whatever the query, so a span only has a meaning at the padded length it was trained at.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

SPAN_FORMS = ("distance", "key")

# Guard of the span renormalisation: small enough that rows are renormalised exactly (a head whose
# unmasked keys hold 1e-8 of the probability still attends to them), large enough that a row with
# no unmasked key stays zero instead of 0/0.
SPAN_RENORM_EPS = 1e-30

Array = TypeVar("Array")  # a numpy array or a torch tensor: the formula uses only operators both share


def key_offsets(seq_len: int, padded_len: int | None = None) -> np.ndarray:
    """j - (T - 1) for key index j < seq_len and padded length T (default seq_len), float32."""
    padded = max(padded_len or seq_len, seq_len)
    return np.arange(seq_len, dtype=np.float32) - (padded - 1)


def distance_offsets(seq_len: int) -> np.ndarray:
    """-|i - j| for query i and key j, (seq_len, seq_len) float32."""
    positions = np.arange(seq_len, dtype=np.float32)
    return -np.abs(positions[:, None] - positions[None, :])


def span_mask(span_z: Array, offsets: Array, span_max: int, span_ramp: int, form: str = "key") -> Array:
    """Mask for spans z (heads,): (heads, keys) from `key_offsets`, (heads, queries, keys) from
    `distance_offsets`.

    key: m = clamp((offset + z S) / R + 1, 0, 1), the reference AdaptiveMask's template over S keys
    cut to the last T of them; a batch shorter than T takes its first `seq_len` keys, so a
    dynamically padded batch computes what the fully padded one does.
    distance: m = clamp((offset + z S) / R, 0, 1): keys closer than z S - R count fully, the ramp
    falls to 0 at distance z S, and z = 0 masks every key (the head can be removed).
    """
    z = span_z.reshape((-1,) + (1,) * offsets.ndim)
    lift = 1 if form == "key" else 0
    return ((offsets[None] + z * span_max) / span_ramp + lift).clip(0.0, 1.0)
