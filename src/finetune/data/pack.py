"""Deterministic sample packing (pure numpy + bisect).

Samples are packed into rows of at most `capacity` tokens by best-fit-decreasing:
longest first (ties broken by a seeded permutation), each into the open row with
the least room that still fits it. The rows are then shuffled with the same seed.
The plan is computed once, at preprocessing time, so every process and every
epoch sees the same rows and the step count is exact.

Inside a packed row `position_ids` restart at 0 for every sample; with no
attention mask, transformers turns those restarts into a block-diagonal mask so
samples never attend to each other. The first label of every sample is set to
-100: it would otherwise be predicted from the *previous* sample's last token
(in an unpacked row that label is never used, so this changes nothing there).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from finetune.data.tokenize import IGNORE_INDEX


@dataclass(frozen=True)
class Ragged:
    """Variable-length integer sequences stored as one flat array plus offsets (n + 1 of them)."""

    values: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_arrays(cls, arrays: list[np.ndarray], dtype: type = np.int32) -> "Ragged":
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        if arrays:
            np.cumsum([len(a) for a in arrays], out=offsets[1:])
        values = np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype=dtype)
        return cls(values, offsets)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        return self.values[self.offsets[index] : self.offsets[index + 1]]

    def take(self, indices: np.ndarray) -> "Ragged":
        """The sequences at `indices`, in that order (one vectorised gather)."""
        indices = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths[indices]
        offsets = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        shift = np.repeat(self.offsets[indices] - offsets[:-1], lengths)
        return Ragged(self.values[np.arange(offsets[-1], dtype=np.int64) + shift], offsets)

    def truncated(self, limit: int) -> "Ragged":
        """Every sequence cut to at most `limit` items."""
        lengths = np.minimum(self.lengths, limit)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        shift = np.repeat(self.offsets[:-1] - offsets[:-1], lengths)
        return Ragged(self.values[np.arange(offsets[-1], dtype=np.int64) + shift], offsets)

    def regroup(self, counts: np.ndarray) -> "Ragged":
        """Concatenate consecutive sequences: row i joins the next `counts[i]` of them."""
        ends = np.cumsum(np.asarray(counts, dtype=np.int64))
        offsets = np.concatenate([[0], self.offsets[ends]]).astype(np.int64)
        return Ragged(self.values, offsets)


@dataclass(frozen=True)
class PackedRows:
    """Packed rows: per row the tokens, labels, restarting positions and its samples' lengths."""

    input_ids: Ragged
    labels: Ragged
    position_ids: Ragged
    sample_lengths: Ragged

    @property
    def num_rows(self) -> int:
        return len(self.input_ids)


def plan_bins(lengths: np.ndarray, capacity: int, seed: int) -> list[np.ndarray]:
    """Best-fit-decreasing bins of sample indices, each summing to <= capacity; rows shuffled by `seed`.

    Deterministic for a given (lengths, capacity, seed).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) == 0:
        return []
    if lengths.max() > capacity or lengths.min() <= 0:
        raise ValueError(f"sample lengths must be in 1..{capacity}, got {lengths.min()}..{lengths.max()}")
    rng = np.random.default_rng(seed)
    tie_order = rng.permutation(len(lengths))
    order = tie_order[np.argsort(-lengths[tie_order], kind="stable")]
    smallest = int(lengths.min())
    shift = 32
    mask = (1 << shift) - 1
    open_keys: list[int] = []  # sorted (room << 32 | bin), only bins with room for the smallest sample
    bins: list[list[int]] = []
    for index, size in zip(order.tolist(), lengths[order].tolist()):
        at = bisect.bisect_left(open_keys, size << shift)
        if at < len(open_keys):
            key = open_keys.pop(at)
            room, target = (key >> shift) - size, key & mask
            bins[target].append(index)
        else:
            room, target = capacity - size, len(bins)
            bins.append([index])
        if room >= smallest:
            bisect.insort(open_keys, (room << shift) | target)
    row_order = rng.permutation(len(bins))
    return [np.asarray(bins[i], dtype=np.int64) for i in row_order]


def pack(input_ids: Ragged, labels: Ragged, capacity: int, seed: int) -> PackedRows:
    """Pack samples into rows of at most `capacity` tokens (see module doc)."""
    bins = plan_bins(input_ids.lengths, capacity, seed)
    order, counts = bin_order(bins)
    return packed_rows(input_ids.take(order), labels.take(order), counts)


def bin_order(bins: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(the sample indices of all bins, row after row; the number of samples in each row)."""
    order = np.concatenate(bins) if bins else np.zeros(0, dtype=np.int64)
    return order, np.array([len(b) for b in bins], dtype=np.int64)


def packed_rows(ids: Ragged, labs: Ragged, counts: np.ndarray) -> PackedRows:
    """Rows from samples already in row order: row i joins the next `counts[i]` samples.
    `labs` is changed in place (every sample's first label masked)."""
    sample_starts = ids.offsets[:-1]
    labs.values[sample_starts[ids.lengths > 0]] = IGNORE_INDEX
    positions = np.arange(len(ids.values), dtype=np.int64) - np.repeat(sample_starts, ids.lengths)
    position_ids = Ragged(positions.astype(ids.values.dtype), ids.offsets)
    sample_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=sample_offsets[1:])
    return PackedRows(
        input_ids=ids.regroup(counts),
        labels=labs.regroup(counts),
        position_ids=position_ids.regroup(counts),
        sample_lengths=Ragged(ids.lengths.astype(np.int32), sample_offsets),
    )


def packing_efficiency(total_tokens: int, rows: int, capacity: int) -> float:
    """Real tokens / (rows * capacity); 1.0 means no padding at all."""
    return float(total_tokens) / (rows * capacity) if rows else 0.0
