"""RDA storage of the chip's activation buffers, measured on real sentences.

The chip keeps activations in SRAM as 16-bit fixed point with 10 fraction bits (docs/ARCHITECTURE.md,
"The accelerator model"). With RDA on its buffers every layer output is stored the RDA way (threshold in units of the
fixed-point LSB, 1/1024) and read back approximated. What that buys depends on the data, so it is
measured: the model runs calibration sentences with each layer output going through an RDA buffer,
and the bytes per stored value replace the cost model's 2 bytes in every activation read, write
and spill (`AcceleratorConfig.activation_bytes`). Not modelled: the encoder/decoder logic's own
energy, and buffers other than layer outputs (attention scores, the FFN's inner activations) are
assumed to compress like the layer outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import codec as rda
from ..data import Example
from ..models.inference import torch_all_exits

FRACTION_BITS = 10
RAW_BITS = 16
CALIBRATION_SENTENCES = 64


@dataclasses.dataclass(frozen=True)
class ActivationStorage:
    threshold: float
    granularity: rda.Granularity
    sentences: int
    original_bits: int
    compressed_bits: int

    @property
    def compression_rate(self) -> float:
        return 1.0 - self.compressed_bits / self.original_bits

    @property
    def bytes_per_value(self) -> float:
        return self.compressed_bits / 8 / (self.original_bits / RAW_BITS)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "compression_rate": self.compression_rate,
                "bytes_per_value": self.bytes_per_value}


def to_fixed_point(x: torch.Tensor) -> np.ndarray:
    scale = float(1 << FRACTION_BITS)
    return torch.clamp(torch.round(x * scale), -(1 << 15), (1 << 15) - 1).to(torch.int16).numpy()


def from_fixed_point(q: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(q.astype(np.float32) / float(1 << FRACTION_BITS))


@contextlib.contextmanager
def rda_layer_outputs(model: torch.nn.Module, threshold: float, granularity: rda.Granularity,
                      totals: dict[str, int]) -> Iterator[None]:
    """Within the block, every layer output of `model` is stored in a 16-bit fixed-point RDA buffer
    and read back approximated (a forward hook on the model's `layer_output`); `totals` accumulates
    original and compressed bits."""

    def through_buffer(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        encoded = rda.encode(to_fixed_point(output), threshold, granularity)
        totals["original_bits"] += encoded.original_bits
        totals["compressed_bits"] += encoded.compressed_bits
        return from_fixed_point(rda.decode(encoded))

    handle = model.layer_output.register_forward_hook(through_buffer)
    try:
        yield
    finally:
        handle.remove()


def measure(model: torch.nn.Module, tokenizer: Path, examples: list[Example], seq_len: int, threshold: float,
            granularity: rda.Granularity) -> tuple[ActivationStorage, np.ndarray]:
    """Activation compression over `examples`, and every exit's logits with approximated buffers."""
    totals = {"original_bits": 0, "compressed_bits": 0}
    with rda_layer_outputs(model, threshold, granularity, totals):
        logits = torch_all_exits(model, tokenizer, examples, seq_len)
    storage = ActivationStorage(threshold, granularity, len(examples), totals["original_bits"], totals["compressed_bits"])
    return storage, logits
