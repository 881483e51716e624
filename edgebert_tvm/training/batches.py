"""Tokenised task data in length-bucketed, dynamically padded batches."""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import torch
from tokenizers import Tokenizer

from ..data import Example


@dataclasses.dataclass
class Encoded:
    """Token ids per example (unpadded) and labels."""

    ids: list[list[int]]
    types: list[list[int]]
    labels: np.ndarray


def encode_examples(tokenizer: Tokenizer, examples: list[Example], max_len: int) -> Encoded:
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_len)
    pairs = [(e.text, e.text_pair) if e.text_pair is not None else e.text for e in examples]
    encodings = tokenizer.encode_batch(pairs)
    return Encoded([e.ids for e in encodings], [e.type_ids for e in encodings],
                   np.array([e.label for e in examples], dtype=np.int64))


def _pad(encoded: Encoded, rows: np.ndarray) -> dict[str, torch.Tensor]:
    width = max(len(encoded.ids[r]) for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    types = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        n = len(encoded.ids[r])
        ids[i, :n], types[i, :n], mask[i, :n] = encoded.ids[r], encoded.types[r], 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "token_type_ids": torch.from_numpy(types), "labels": torch.from_numpy(encoded.labels[rows])}


def batches(encoded: Encoded, batch_size: int, seed: int | None = None, skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Batches in a seeded shuffled order (or in order when seed is None), skipping the first `skip`.

    Shuffled batches are drawn from length-sorted chunks of 50 batches, so padding stays small.
    """
    order = np.arange(len(encoded.labels))
    if seed is not None:
        rng = np.random.default_rng(seed)
        order = rng.permutation(order)
        chunk = batch_size * 50
        order = np.concatenate([
            sorted(order[i:i + chunk], key=lambda r: len(encoded.ids[r])) for i in range(0, len(order), chunk)
        ]).astype(np.int64)
        groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        groups = [groups[i] for i in rng.permutation(len(groups))]
    else:
        groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for group in groups[skip:]:
        yield _pad(encoded, group)


def batches_by_length(encoded: Encoded, batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """(rows, batch) in order of length, for inference over a whole set with the least padding."""
    order = np.argsort([len(ids) for ids in encoded.ids], kind="stable")
    for i in range(0, len(order), batch_size):
        yield order[i:i + batch_size], _pad(encoded, order[i:i + batch_size])


def num_batches(encoded: Encoded, batch_size: int) -> int:
    return (len(encoded.labels) + batch_size - 1) // batch_size
