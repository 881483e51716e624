"""The adaptive attention span mask (docs/ARCHITECTURE.md, "Attention spans"), for PyTorch and numpy alike.

Torch-free, so that FoldAttentionSpan computes at compile time exactly the mask the PyTorch model
learns with: both call `span_mask`, on tensors in training and on arrays in the pass.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

# Guard of the span renormalisation: small enough that rows are renormalised exactly (a head whose
# unmasked keys hold 1e-8 of the probability still attends to them), large enough that a row with
# no unmasked key stays zero instead of 0/0.
SPAN_RENORM_EPS = 1e-30

Array = TypeVar("Array")  # a numpy array or a torch tensor: the formula uses only operators both share


def key_offsets(seq_len: int, padded_len: int | None = None) -> np.ndarray:
    """j - (T - 1) for key index j < seq_len and padded length T (default seq_len), float32."""
    padded = max(padded_len or seq_len, seq_len)
    return np.arange(seq_len, dtype=np.float32) - (padded - 1)


def span_mask(span_z: Array, offsets: Array, span_max: int, span_ramp: int) -> Array:
    """Mask (heads, keys) for spans z (heads,): m_j = clamp((offset_j + z * S) / R + 1, 0, 1).

    With `key_offsets`' offsets this is the reference AdaptiveMask's template over S keys, cut to
    the last T of them; a batch shorter than T takes the first `seq_len` keys of it, so a dynamically
    padded batch computes exactly what the fully padded one does (the keys past its length are
    padding with zero attention either way).
    """
    return ((offsets[None, :] + span_z[:, None] * span_max) / span_ramp + 1).clip(0.0, 1.0)
