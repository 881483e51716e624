"""Weight pruning as parametrizations of the encoder's linear layers.

Movement pruning (Sanh et al. 2020) learns a score per weight and keeps the top-k scores, with a
straight-through gradient; magnitude pruning keeps the top-k |w|. Either way the kept fraction
follows a cubic schedule, and `finalize` bakes the masks into plain weights that hold zeros, which
is what a checkpoint stores and what the compiler sees. With a block shape (rows x columns of the
[out, in] weight) whole blocks are kept or dropped, scored by their summed movement score or mean
|w|: unstructured zeros rarely pay on a CPU, block zeros can (FoldSparsity's BSR kernels).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .config import METHODS, Block

ENCODER_LINEARS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")


class _TopK(torch.autograd.Function):
    """Binary mask of the top `keep` fraction of `scores`; the gradient passes straight through."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, keep: float) -> torch.Tensor:  # type: ignore[override]
        count = max(1, int(round(keep * scores.numel())))
        threshold = scores.flatten().kthvalue(scores.numel() - count + 1).values
        return (scores >= threshold).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


def _pool(values: torch.Tensor, block: Block) -> torch.Tensor:
    """Sum of `values` over each (rows x cols) block."""
    rows, cols = block
    out, inp = values.shape
    return values.reshape(out // rows, rows, inp // cols, cols).sum(dim=(1, 3))


def _expand(mask: torch.Tensor, block: Block) -> torch.Tensor:
    return mask.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)


class PruningMask(nn.Module):
    """weight -> weight * mask, the mask chosen per block by learned scores (movement) or by |weight|."""

    def __init__(self, weight: torch.Tensor, method: str, block: Block = (1, 1)) -> None:
        super().__init__()
        if weight.shape[0] % block[0] or weight.shape[1] % block[1]:
            raise ValueError(f"pruning block {block[0]}x{block[1]} does not tile a {tuple(weight.shape)} weight")
        self.method = method
        self.block = block
        self.keep = 1.0
        shape = (weight.shape[0] // block[0], weight.shape[1] // block[1])
        self.scores = nn.Parameter(torch.zeros(shape, dtype=weight.dtype)) if method == "movement" else None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.keep >= 1.0:
            return weight if self.scores is None else weight * _expand(_TopK.apply(self.scores, 1.0), self.block)
        scores = self.scores if self.scores is not None else _pool(weight.detach().abs(), self.block)
        return weight * _expand(_TopK.apply(scores, self.keep), self.block)


def cubic_sparsity(step: int, total: int, final: float, warmup: float = 0.1, cooldown: float = 0.2) -> float:
    """Sparsity at `step`: 0 during warm-up, s_f (1 - (1 - progress)^3) after, s_f in the cool-down."""
    start, end = int(total * warmup), int(total * (1 - cooldown))
    if step <= start or end <= start:
        return 0.0 if step <= start else final
    progress = min(1.0, (step - start) / (end - start))
    return final * (1 - (1 - progress) ** 3)


class EncoderPruner:
    """Attach masks to every encoder layer's Q, K, V, attention-output and FFN weights."""

    def __init__(self, model: nn.Module, method: str, block: Block = (1, 1)) -> None:
        if method not in METHODS:
            raise ValueError(f"pruning method must be one of {METHODS}")
        self.masks: list[PruningMask] = []
        self.linears: list[nn.Linear] = []
        for group in range(model.arch.num_distinct_layers(model.config)):
            parts = model.layer_parts(group)
            for name in ENCODER_LINEARS:
                linear = getattr(parts, name)
                mask = PruningMask(linear.weight, method, block)
                parametrize.register_parametrization(linear, "weight", mask)
                self.masks.append(mask)
                self.linears.append(linear)

    def scores(self) -> list[nn.Parameter]:
        return [m.scores for m in self.masks if m.scores is not None]

    def set_sparsity(self, sparsity: float) -> None:
        for mask in self.masks:
            mask.keep = 1.0 - sparsity

    def finalize(self) -> None:
        """Replace each parametrization by the masked weight (zeros where pruned)."""
        for linear in self.linears:
            parametrize.remove_parametrizations(linear, "weight", leave_parametrized=True)


def encoder_sparsity(model: nn.Module) -> float:
    """Fraction of zeros over the encoder layers' Q, K, V, attention-output and FFN weights."""
    zeros = total = 0
    for group in range(model.arch.num_distinct_layers(model.config)):
        parts = model.layer_parts(group)
        for name in ENCODER_LINEARS:
            weight = getattr(parts, name).weight
            zeros += int((weight == 0).sum())
            total += weight.numel()
    return zeros / total


def prune_embeddings(model: nn.Module, keep: float) -> None:
    """Magnitude-prune the word embeddings to keep the largest `keep` fraction (one shot)."""
    embedding = model.backbone.embeddings.word_embeddings.weight
    with torch.no_grad():
        mask = _TopK.apply(embedding.abs(), keep)
        embedding.mul_(mask)
