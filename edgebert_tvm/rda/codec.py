"""Redundant data approximation (RDA): approximate storage of error-tolerant data in fewer bits.

The codec behind `edgebert.ApproximateRedundantData`, the AxBench benchmarks and the accelerator's
buffer model (after "approximate computing based on data redundancy"; docs/ARCHITECTURE.md,
"Redundant data approximation (RDA)").

Groups. A tensor is viewed as rows along its last axis (for a weight (out, in): one neuron's
inputs; for an image: one image row). Each row is cut into groups of `granularity` values (the
last group of a row may be shorter); `granularity="layer"` makes a group one whole row, the
layer's width, as the paper groups a 3-8 network's values by 8. A group never straddles a row, a
tensor, or (since every block function of the compiled model is one layer) a layer.

Patterns. Every group is matched against three redundancy patterns with two bases, zero and one
value `b` chosen from the group's own data; the shortest matching encoding wins, otherwise the group
is stored exactly. With word width w bits (the data's dtype) and group length g, each group costs a
2-bit tag plus:

    tag  pattern      payload              matches when                       decodes to
    00   zero         nothing              every |v - 0| <= t                  0
    01   repeated     b (w bits)           every |v - b| <= t                  b
    10   two bases    b (w) + g selectors  every v within t of 0 or of b       0 or b per selector bit
    11   exact        g values (g * w)     always                             the values

`b` is the group's value nearest the midpoint of the values it must cover (this minimises the
largest distance among values of the data). Deltas are dropped, so the patterns are lossy by at
most t; with t = 0 they only match exactly (zeros, equal values) and the round trip is exact.

Threshold t (the paper's 63 or 127) is measured in units of the data's least significant bit on
an integer scale: integer data (8-bit pixels, 16-bit PCM) use their own values, so t = 63 on an
8-bit image collapses values within 63 grey levels of a base; floating data are measured on a signed
16-bit grid scaled to the tensor, one unit = max|x| / 32767 (so t = 63 is 0.19 % of the tensor's
largest magnitude). The decoded values are always data values (bases come from the data), so a
float tensor stays float; only the distance is measured on the grid.

Compression rate, as the paper defines it: 1 - compressed bits / original bits, where compressed bits
count every tag and payload bit above and original bits = values * w.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Iterator

import numpy as np

from ..errors import EdgeBertError

TAG_BITS = 2
FLOAT_GRID = 32767  # floats are measured on a signed 16-bit grid: one unit = max|x| / 32767
DEFAULT_GRANULARITY = 8
LAYER = "layer"

Granularity = int | str


class Pattern(enum.IntEnum):
    ZERO = 0
    REPEATED = 1
    TWO_BASES = 2
    EXACT = 3


def check_threshold(threshold: float) -> float:
    """A threshold is a finite number >= 0 (units of the data's integer scale, see the module doc)."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise EdgeBertError(f"RDA threshold must be a number, got {threshold!r}") from None
    if not np.isfinite(value) or value < 0:
        raise EdgeBertError(f"RDA threshold must be a finite number >= 0, got {threshold}")
    return value


def check_granularity(granularity: Granularity) -> Granularity:
    """A group size in values (an integer >= 1), or "layer" for one group per row (the layer's width)."""
    if granularity == LAYER:
        return LAYER
    text = str(granularity).strip()
    if isinstance(granularity, bool) or not text.isdigit() or int(text) < 1:
        raise EdgeBertError(f"RDA granularity must be an integer >= 1 or '{LAYER}', got {granularity!r}")
    return int(text)


def distance_unit(x: np.ndarray) -> float:
    """One unit of threshold: 1 for integer data, max|x| / 32767 for floating data."""
    if not np.issubdtype(x.dtype, np.floating):
        return 1.0
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return peak / FLOAT_GRID if peak > 0 else 1.0


def _check_data(x: np.ndarray) -> None:
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise EdgeBertError(f"RDA stores integer or floating data, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise EdgeBertError("RDA cannot store a tensor with NaN or infinite values")


def _group_length(width: int, granularity: Granularity) -> int:
    return width if granularity == LAYER else min(int(granularity), width)


def _parts(rows: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """The groups of every row as 2-D arrays (groups, length): the full groups, then the row tails."""
    full = rows.shape[1] // size * size
    if full:
        yield rows[:, :full].reshape(-1, size)
    if full < rows.shape[1]:
        yield rows[:, full:]


def _rows(x: np.ndarray) -> np.ndarray:
    if not x.ndim:
        return x.reshape(1, 1)
    return x.reshape(int(np.prod(x.shape[:-1], dtype=np.int64)), x.shape[-1])


def _nearest_to_midpoint(values: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Per group, the covered value nearest the midpoint of the covered values (their best base)."""
    high = np.where(covered, values, -np.inf).max(axis=1)
    low = np.where(covered, values, np.inf).min(axis=1)
    with np.errstate(invalid="ignore"):  # a group with nothing to cover has no midpoint (and needs no base)
        mid = np.where(covered.any(axis=1), (high + low) / 2, 0.0)
    distance = np.where(covered, np.abs(values - mid[:, None]), np.inf)
    return np.take_along_axis(values, distance.argmin(axis=1)[:, None], axis=1)[:, 0]


def classify(groups: np.ndarray, limit: float, word_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Pattern and base of each group (rows of `groups`, float64), cheapest matching encoding first."""
    n, length = groups.shape
    near_zero = np.abs(groups) <= limit
    everywhere = np.ones_like(near_zero)
    base_all = _nearest_to_midpoint(groups, everywhere)
    base_far = _nearest_to_midpoint(groups, ~near_zero)
    matches = np.stack([
        near_zero.all(axis=1),
        (np.abs(groups - base_all[:, None]) <= limit).all(axis=1),
        (near_zero | (np.abs(groups - base_far[:, None]) <= limit)).all(axis=1),
        np.ones(n, dtype=bool),
    ], axis=1)
    cost = np.array([TAG_BITS, TAG_BITS + word_bits, TAG_BITS + word_bits + length, TAG_BITS + length * word_bits])
    tags = np.where(matches, cost, np.iinfo(np.int64).max).argmin(axis=1).astype(np.uint8)
    bases = np.where(tags == Pattern.REPEATED, base_all, base_far)
    return tags, bases


@dataclasses.dataclass(frozen=True)
class Encoded:
    """A tensor in RDA storage: group tags, bases of repeated/two-base groups, selector bits, exact values."""

    shape: tuple[int, ...]
    dtype: np.dtype
    granularity: Granularity
    tags: np.ndarray       # uint8 Pattern per group, groups in storage order
    bases: np.ndarray      # dtype, one per REPEATED or TWO_BASES group
    selectors: np.ndarray  # bool, g per TWO_BASES group (True: the value decodes to b, False: to 0)
    exact: np.ndarray      # dtype, g per EXACT group

    @property
    def word_bits(self) -> int:
        return self.dtype.itemsize * 8

    @property
    def original_bits(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.word_bits

    @property
    def compressed_bits(self) -> int:
        return TAG_BITS * self.tags.size + self.word_bits * (self.bases.size + self.exact.size) + self.selectors.size

    @property
    def compression_rate(self) -> float:
        """The paper's rate: 1 - compressed bits / original bits."""
        return 1.0 - self.compressed_bits / self.original_bits if self.original_bits else 0.0

    def pattern_counts(self) -> dict[str, int]:
        counts = np.bincount(self.tags, minlength=len(Pattern))
        return {p.name.lower(): int(counts[p]) for p in Pattern}

    def to_bytes(self) -> bytes:
        """The storage format: packed 2-bit tags, bases, packed selector bits, exact values."""
        tag_bits = np.unpackbits(self.tags[:, None], axis=1)[:, -TAG_BITS:].ravel()
        return b"".join([np.packbits(tag_bits).tobytes(), self.bases.tobytes(),
                         np.packbits(self.selectors).tobytes(), self.exact.tobytes()])

    @classmethod
    def from_bytes(cls, blob: bytes, shape: tuple[int, ...], dtype: np.dtype, granularity: Granularity) -> Encoded:
        """Read `to_bytes` back; the stream lengths follow from the shape, granularity and tags."""
        dtype = np.dtype(dtype)
        lengths = group_lengths(shape, granularity)
        offset = (TAG_BITS * lengths.size + 7) // 8
        bits = np.unpackbits(np.frombuffer(blob[:offset], np.uint8))[: TAG_BITS * lengths.size]
        tags = (bits.reshape(-1, TAG_BITS) * (1 << np.arange(TAG_BITS - 1, -1, -1))).sum(axis=1).astype(np.uint8)

        def take(count: int, itemsize: int) -> bytes:
            nonlocal offset
            chunk = blob[offset: offset + count * itemsize]
            offset += count * itemsize
            return chunk

        n_bases = int(np.isin(tags, [Pattern.REPEATED, Pattern.TWO_BASES]).sum())
        bases = np.frombuffer(take(n_bases, dtype.itemsize), dtype)
        n_sel = int(lengths[tags == Pattern.TWO_BASES].sum())
        selectors = np.unpackbits(np.frombuffer(take((n_sel + 7) // 8, 1), np.uint8))[:n_sel].astype(bool)
        exact = np.frombuffer(take(int(lengths[tags == Pattern.EXACT].sum()), dtype.itemsize), dtype)
        return cls(tuple(shape), dtype, granularity, tags, bases, selectors, exact)


def group_lengths(shape: tuple[int, ...], granularity: Granularity) -> np.ndarray:
    """Length of every group in storage order (full groups of all rows, then the row tails)."""
    width = shape[-1] if shape else 1
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if shape else 1
    if width == 0 or rows == 0:
        return np.zeros(0, dtype=np.int64)
    size = _group_length(width, granularity)
    lengths = [np.full(rows * (width // size), size)]
    if width % size:
        lengths.append(np.full(rows, width % size))
    return np.concatenate(lengths).astype(np.int64)


def encode(x: np.ndarray, threshold: float, granularity: Granularity = DEFAULT_GRANULARITY) -> Encoded:
    """Encode `x` group by group (see the module docstring for groups, patterns and threshold units)."""
    x = np.asarray(x)
    threshold, granularity = check_threshold(threshold), check_granularity(granularity)
    _check_data(x)
    limit = threshold * distance_unit(x)
    tags, bases, selectors, exact = [], [], [], []
    rows = _rows(x)
    for part in _parts(rows, _group_length(rows.shape[1], granularity)) if rows.size else ():
        values = part.astype(np.float64)
        part_tags, part_bases = classify(values, limit, x.dtype.itemsize * 8)
        tags.append(part_tags)
        bases.append(part_bases[np.isin(part_tags, [Pattern.REPEATED, Pattern.TWO_BASES])])
        selectors.append((np.abs(values[part_tags == Pattern.TWO_BASES]) > limit).ravel())
        exact.append(part[part_tags == Pattern.EXACT].ravel())

    def join(arrays: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
        return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)

    return Encoded(x.shape, x.dtype, granularity, join(tags, np.uint8), join(bases, x.dtype),
                   join(selectors, bool), join(exact, x.dtype))


def _decode_part(tags: np.ndarray, length: int, bases: np.ndarray, selectors: np.ndarray,
                 exact: np.ndarray) -> np.ndarray:
    """Groups (len(tags), length) from the leading entries of each stream."""
    out = np.zeros((tags.size, length), bases.dtype)
    uses_base = np.isin(tags, [Pattern.REPEATED, Pattern.TWO_BASES])
    group_base = np.zeros(tags.size, bases.dtype)
    group_base[uses_base] = bases[: int(uses_base.sum())]
    out[tags == Pattern.REPEATED] = group_base[tags == Pattern.REPEATED, None]
    two = tags == Pattern.TWO_BASES
    chosen = selectors[: int(two.sum()) * length].reshape(-1, length)
    out[two] = np.where(chosen, group_base[two, None], 0)
    exact_groups = tags == Pattern.EXACT
    out[exact_groups] = exact[: int(exact_groups.sum()) * length].reshape(-1, length)
    return out


def decode(encoded: Encoded) -> np.ndarray:
    """The values the storage holds: every group rebuilt from its pattern."""
    shape, dtype = encoded.shape, encoded.dtype
    rows = np.zeros(_rows(np.empty(shape, np.uint8)).shape, dtype)
    if rows.size == 0:
        return rows.reshape(shape)
    size = _group_length(rows.shape[1], encoded.granularity)
    full = rows.shape[1] // size * size
    tags, bases, selectors, exact = encoded.tags, encoded.bases, encoded.selectors, encoded.exact
    for columns, length in ((slice(0, full), size), (slice(full, rows.shape[1]), rows.shape[1] - full)):
        if length == 0 or columns.stop == columns.start:
            continue
        count = rows.shape[0] * ((columns.stop - columns.start) // length)
        part_tags, tags = tags[:count], tags[count:]
        out = _decode_part(part_tags, length, bases, selectors, exact)
        bases = bases[int(np.isin(part_tags, [Pattern.REPEATED, Pattern.TWO_BASES]).sum()):]
        selectors = selectors[int((part_tags == Pattern.TWO_BASES).sum()) * length:]
        exact = exact[int((part_tags == Pattern.EXACT).sum()) * length:]
        rows[:, columns] = out.reshape(rows.shape[0], -1)
    return rows.reshape(shape)


@dataclasses.dataclass(frozen=True)
class TensorReport:
    """Compression and error of one approximated tensor (errors in the data's own units)."""

    name: str
    shape: list[int]
    dtype: str
    patterns: dict[str, int]
    original_bits: int
    compressed_bits: int
    compression_rate: float
    max_abs_error: float
    rms_error: float
    relative_rms_error: float  # rms error / rms of the data


def report(name: str, x: np.ndarray, encoded: Encoded, decoded: np.ndarray) -> TensorReport:
    diff = decoded.astype(np.float64) - x.astype(np.float64)
    rms = float(np.sqrt(np.mean(diff**2))) if x.size else 0.0
    scale = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if x.size else 0.0
    return TensorReport(name, list(x.shape), str(x.dtype), encoded.pattern_counts(), encoded.original_bits,
                        encoded.compressed_bits, encoded.compression_rate,
                        float(np.abs(diff).max()) if x.size else 0.0, rms, rms / scale if scale else 0.0)


def approximate(x: np.ndarray, threshold: float, granularity: Granularity = DEFAULT_GRANULARITY,
                name: str = "") -> tuple[np.ndarray, TensorReport]:
    """The values RDA storage returns for `x`, and its compression and error."""
    x = np.asarray(x)
    encoded = encode(x, threshold, granularity)
    decoded = decode(encoded)
    return decoded, report(name, x, encoded, decoded)


def compressed_nbytes(x: np.ndarray, threshold: float, granularity: Granularity = DEFAULT_GRANULARITY) -> int:
    """Bytes a buffer holding `x` in RDA storage needs (for the accelerator model's SRAM traffic)."""
    return (encode(x, threshold, granularity).compressed_bits + 7) // 8


def summarize(reports: list[TensorReport]) -> dict[str, float]:
    """Totals over tensors: the overall compression rate is bit-weighted, like the per-tensor rate."""
    original = sum(r.original_bits for r in reports)
    compressed = sum(r.compressed_bits for r in reports)
    return {"tensors": len(reports), "original_bytes": original / 8, "compressed_bytes": compressed / 8,
            "compression_rate": 1.0 - compressed / original if original else 0.0}
