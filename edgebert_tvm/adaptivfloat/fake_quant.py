"""Weight fake-quantization for PyTorch models: the reference for the compiled model, and QAT.

Forward rounds a weight with a numpy quantizer (the reference one, so PyTorch and the compiled
artifact see the same grid bit for bit); backward passes the gradient straight through (STE,
Bengio et al. 2013), so quantization-aware fine-tuning updates the float master weights.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

Quantizer = Callable[[np.ndarray], np.ndarray]
QUANTIZED_MODULES = (nn.Linear, nn.Embedding)  # the weights the compiler stores quantized (matmul, take)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, quantizer: Quantizer) -> torch.Tensor:  # type: ignore[override]
        values = quantizer(weight.detach().cpu().numpy().astype(np.float32))
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(weight.device)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


def fake_quantize(weight: torch.Tensor, quantizer: Quantizer) -> torch.Tensor:
    """quantizer(weight) in the forward pass, identity in the backward pass."""
    return _StraightThrough.apply(weight, quantizer)


class FakeQuantize(nn.Module):
    """A parametrization: the module's weight is seen through `fake_quantize`."""

    def __init__(self, quantizer: Quantizer) -> None:
        super().__init__()
        self.quantizer = quantizer

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return fake_quantize(weight, self.quantizer)


def quantized_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, QUANTIZED_MODULES)]


def attach(model: nn.Module, quantizer: Quantizer) -> None:
    """Fake-quantize every Linear and Embedding weight of `model` (for quantization-aware training)."""
    for module in quantized_modules(model):
        parametrize.register_parametrization(module, "weight", FakeQuantize(quantizer))


def detach(model: nn.Module) -> None:
    """Remove the parametrizations, leaving the quantized weights in place."""
    for module in quantized_modules(model):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


@torch.no_grad()
def quantize_weights_(model: nn.Module, quantizer: Quantizer) -> None:
    """Round every Linear and Embedding weight of `model` in place (post-training quantization)."""
    for module in quantized_modules(model):
        module.weight.copy_(torch.from_numpy(quantizer(module.weight.numpy())))
