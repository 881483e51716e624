"""The PyTorch model over a task's examples: the reference every compiled artifact is checked against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..contract import INPUT_NAMES
from ..data import Example
from ..inputs import encode, load_tokenizer
from .modeling import EdgeBertForSequenceClassification


def torch_all_exits(model: EdgeBertForSequenceClassification, tokenizer_path: Path, examples: list[Example],
                    seq_len: int, batch_size: int = 64) -> np.ndarray:
    """Every exit's logits from the PyTorch model, (examples, layers, labels)."""
    tokenizer = load_tokenizer(tokenizer_path, seq_len)
    outputs = []
    for start in tqdm(range(0, len(examples), batch_size), desc="PyTorch", unit="batch"):
        chunk = examples[start:start + batch_size]
        arrays = encode(tokenizer, [e.text for e in chunk], [e.text_pair for e in chunk])
        with torch.no_grad():
            outputs.append(model(*[torch.from_numpy(arrays[k]) for k in INPUT_NAMES]).numpy())
    return np.concatenate(outputs)
