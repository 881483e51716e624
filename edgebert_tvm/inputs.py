"""Model inputs: tokenised text or an .npz of HuggingFace-named arrays, checked against the artifact."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Encoding, Tokenizer

from .contract import INPUT_NAMES
from .errors import EdgeBertError
from .lengths import attended_length, fit


def load_tokenizer(path: Path, seq_len: int) -> Tokenizer:
    """A fast tokenizer that truncates every input to `seq_len` tokens and pads a batch to its longest row."""
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises plain Exception for unreadable files
        raise EdgeBertError(f"{path}: unreadable tokenizer ({err})") from None
    padding = tokenizer.padding or {}
    tokenizer.enable_padding(pad_id=padding.get("pad_id", 0), pad_token=padding.get("pad_token", "[PAD]"))
    tokenizer.enable_truncation(max_length=seq_len)
    return tokenizer


def check_texts(texts: Sequence[str]) -> None:
    """Refuse text no model can read: empty, or not UTF-8 (a shell passes undecodable bytes as surrogates)."""
    for number, text in enumerate(texts, start=1):
        if not text.strip():
            raise EdgeBertError(f"text {number} of {len(texts)} is empty")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise EdgeBertError(f"text {number} of {len(texts)} is not valid UTF-8") from None


def encode(tokenizer: Tokenizer, texts: Sequence[str], pairs: Sequence[str | None] | None = None) -> dict[str, np.ndarray]:
    """Tokenise sentences (or sentence pairs) into int64 arrays of shape (n, longest row, at most the
    tokenizer's truncation length)."""
    batch = list(texts) if pairs is None else [(a, b) if b is not None else a for a, b in zip(texts, pairs)]
    return to_arrays(tokenizer.encode_batch(batch))


def to_arrays(encodings: Sequence[Encoding]) -> dict[str, np.ndarray]:
    """The model's input arrays from the tokenizer's encodings (padded to one length by `load_tokenizer`'s)."""
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def unpadded(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`arrays` cut after the last token any row attends to: a batch at its true length."""
    end = attended_length(arrays["attention_mask"])
    return {name: fit(array, end) for name, array in arrays.items()}


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Read an .npz of input arrays without unpickling anything."""
    if not path.is_file():
        raise EdgeBertError(f"{path}: {'not a regular file' if path.exists() else 'no such file'}")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise EdgeBertError(f"{path}: not a readable .npz file ({err})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise EdgeBertError(f"{path}: expected an .npz archive of named arrays, got a single array")
    try:
        with data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise EdgeBertError(f"{path}: not a readable .npz file ({err})") from None
    unknown = sorted(set(arrays) - set(INPUT_NAMES))
    if unknown:
        raise EdgeBertError(f"{path}: unknown input(s) {', '.join(unknown)} (expected {', '.join(INPUT_NAMES)})")
    return arrays


def check_inputs(arrays: dict[str, np.ndarray], seq_len: int, vocab_size: int, type_vocab_size: int) -> dict[str, np.ndarray]:
    """Validate shapes (rows of at most `seq_len` tokens), dtypes and ranges; fill a missing mask with
    ones and token types with zeros."""
    if "input_ids" not in arrays:
        raise EdgeBertError("inputs have no input_ids")
    ids = arrays["input_ids"]
    if ids.ndim != 2 or not 1 <= ids.shape[1] <= seq_len or ids.shape[0] == 0:
        raise EdgeBertError(f"input_ids has shape {list(ids.shape)}; this artifact takes (n, 1..{seq_len})")
    checked = {}
    limits = {"input_ids": vocab_size, "attention_mask": 2, "token_type_ids": type_vocab_size}
    defaults = {"attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    for name in INPUT_NAMES:
        array = arrays.get(name, defaults.get(name))
        if array.shape != ids.shape:
            raise EdgeBertError(f"{name} has shape {list(array.shape)}, input_ids has {list(ids.shape)}")
        if not np.issubdtype(array.dtype, np.integer):
            raise EdgeBertError(f"{name} has dtype {array.dtype}; integer ids are required")
        if array.min() < 0 or array.max() >= limits[name]:
            raise EdgeBertError(f"{name} holds values outside [0, {limits[name]})")
        checked[name] = array.astype(np.int64)
    blank = np.flatnonzero(checked["attention_mask"].sum(axis=1) == 0)
    if blank.size:
        raise EdgeBertError(f"attention_mask row {blank[0]} masks every token (nothing to attend to)")
    return checked
