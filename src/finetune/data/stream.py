"""Preprocessing in bounded memory, in three passes: the path `prepare_data` takes at every corpus size.

The stages and rules are those of finetune.data.build's module doc; this is how they run without
holding the corpus. Memory is bounded by `preprocess_shard_size`, not by the corpus.

1. Stream (`tokenize_to_shards`): each dataset is read `TOKENIZE_CHUNK` rows at a time (JSON lines
   straight from the file); every row is normalized and goes through the empty, filler, exact-duplicate
   (a 16-byte hash per kept conversation) and near-duplicate (MinHash signatures in memory, kept texts
   on disk) rules in dataset order; the kept ones are rendered, tokenized and masked on every core
   (finetune.data.parallel) and written to Arrow shards of `preprocess_shard_size` samples. In memory
   stay a few numbers per conversation: its length, trained-token counts, origin (and val_split key).
2. Plan (`plan_splits`), from those numbers only: the seeded permutation of the kept conversations,
   the eval split (`val_split`: its head, or chosen by each row's `start` or `contact`, read in pass 1 as
   one number per conversation: finetune.data.holdout), the trainable and length rules, and the packing plan (finetune.data.pack
   on the lengths).
3. Assemble (`write_split`): rows a shard's worth of samples at a time, gathered from the shards and
   appended to the split's `save_to_disk` directory (finetune.data.shards).

The rows are exactly those of the in-memory `build.build_splits` for the same recipe and seed (tested).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finetune.config.settings import Settings
from finetune.data.formats import Sample, format_table, sample_key
from finetune.data.holdout import SplitKeys, held_out
from finetune.data.neardup import NearDuplicateFinder, conversation_text, drop_filler_turns, excerpts, has_assistant
from finetune.data.pack import bin_order, packed_rows, plan_bins
from finetune.data.parallel import EncodeOptions, Encoder, Job, WorkerDied, encode_batches, resolve_workers
from finetune.data.readers import Origins, dataset_path
from finetune.data.stream_readers import iter_dataset
from finetune.data.shards import SplitWriter, TextStore, TokenShards, TokenShardWriter
from finetune.data.summary import NO_SPLIT, PrepareSummary, Progress, SplitStats, nonzero
from finetune.data.tokenize import IGNORE_INDEX, token_length_table
from finetune.errors import DataError, RecipeError

TOKENIZE_CHUNK = 1000  # rows read, filtered and encoded together (one progress update each)
EXAMPLE_PAIRS = 2  # near-duplicate pairs kept in the summary for `preprocess --show`
EXAMPLE_CHARS = 160  # each side of a pair, truncated
KEY_DTYPES = {"d": np.float64, "q": np.int64}  # val_split keys: seconds, contact numbers


def build_streamed(
    settings: Settings, tokenizer: Any, template: Any, report: Progress, directory: Path, key: str
) -> PrepareSummary:
    """Write `<directory>/train` (and `eval`) for the recipe; the summary (seconds 0). Scratch files go
    under `<directory>/work` and are removed."""
    work = Path(directory) / "work"
    tokenized = tokenize_to_shards(settings, tokenizer, template, work, report)
    plans, truncated, dropped = plan_splits(tokenized, settings)
    train, evaluation = (plan.stats if plan else NO_SPLIT for plan in (plans["train"], plans["eval"]))
    if train.samples == 0:
        raise DataError(f"no training samples left after filtering; dropped: {nonzero(dropped)}")
    for name, plan in plans.items():
        if plan is not None:
            fingerprint = hashlib.sha256(f"{key}/{name}".encode()).hexdigest()[:16]
            chunk = settings.preprocess_shard_size
            for done in write_split(tokenized.shards, plan, Path(directory) / name, fingerprint, chunk):
                report.update(f"writing {name} rows:", done, plan.stats.rows, tokenized.tokens, unit="rows")
    shutil.rmtree(work, ignore_errors=True)
    return PrepareSummary.of_splits(
        tokenized.read_counts, dropped, truncated, train, evaluation, sequence_len=settings.sequence_len,
        packed=settings.sample_packing, filler_turns=tokenized.filler_turns,
        near_duplicate_examples=tokenized.examples, tokenized_tokens=tokenized.tokens,
    )


def eval_count(settings: Settings, total: int) -> int:
    """Conversations for eval: ceil(fraction * total) for a fraction, or the count; RecipeError if none left."""
    size = settings.val_set_size
    if size == 0:
        return 0
    count = int(size) if size >= 1 else math.ceil(round(size * total, 6))
    if count >= total:
        raise RecipeError(
            f"{settings.where('val_set_size')}: val_set_size {size:g} takes {count} of the {total} conversations, "
            "leaving none to train on; lower it"
        )
    return count


# --- pass 1: stream, filter, tokenize to shards ------------------------------------------------------


@dataclass(frozen=True)
class Tokenized:
    """The kept conversations after pass 1, in dataset order: their tokens on disk, a few numbers each here."""

    shards: TokenShards
    lengths: np.ndarray  # tokens
    trained: np.ndarray  # tokens with a label
    trained_within: np.ndarray  # tokens with a label among the first sequence_len
    dataset_index: np.ndarray
    numbers: np.ndarray  # line or record number in its file
    split_keys: np.ndarray | None  # per conversation, what val_split plans with (finetune.data.holdout)
    contacts: list[str]  # with val_split: contact, the contact of each number in split_keys
    sources: list[tuple[str, str]]  # per dataset: (source, "line" | "record")
    read_counts: dict[str, int]
    dropped: dict[str, int]
    filler_turns: int
    examples: list[dict[str, Any]]

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    def origin(self, index: int) -> str:
        source, unit = self.sources[int(self.dataset_index[index])]
        return Origins(source, (int(self.numbers[index]),), unit)[0]


class RowRules:
    """The empty, filler, exact- and near-duplicate rules, one conversation at a time in dataset order."""

    def __init__(self, settings: Settings, work: Path) -> None:
        self.min_chars = settings.min_assistant_chars
        self.exact = bool(settings.dedup)
        self.seen: set[bytes] = set()
        self.dropped = {
            "empty": 0,
            "duplicate": 0,
            "no trainable tokens": 0,
            f"longer than {settings.sequence_len} tokens": 0,
        }
        if self.min_chars:
            self.dropped["only filler replies"] = 0
        self.filler_turns = 0
        self.examples: list[dict[str, Any]] = []
        self.near: NearDuplicateFinder | None = None
        self.kept_texts: TextStore | None = None
        if settings.dedup == "near":
            self.dropped["near duplicate"] = 0
            self.kept_texts = TextStore(work / "kept-texts.bin")
            self.near = NearDuplicateFinder(
                threshold=settings.dedup_threshold,
                ngram=settings.dedup_ngram,
                seed=settings.seed,
                kept_texts=self.kept_texts,
            )
        # where each conversation the near rule saw came from (for the example pairs)
        self.sources: dict[tuple[str, str], int] = {}
        self.seen_source, self.seen_number = array("i"), array("q")

    def keep(self, sample: Sample, origins: Origins, at: int) -> Sample | None:
        """The sample as kept (filler removed), or None when a rule drops it (counted)."""
        if len(sample) == 0:
            self.dropped["empty"] += 1
            return None
        if self.min_chars:
            cleaned, removed = drop_filler_turns(sample, self.min_chars)
            self.filler_turns += removed
            if removed and not has_assistant(cleaned):
                self.dropped["only filler replies"] += 1
                return None
            sample = cleaned
        if self.exact:
            digest = hashlib.blake2b(json.dumps(sample_key(sample)).encode(), digest_size=16).digest()
            if digest in self.seen:
                self.dropped["duplicate"] += 1
                return None
            self.seen.add(digest)
        if self.near is not None:
            return self._near(sample, origins, at)
        return sample

    def _near(self, sample: Sample, origins: Origins, at: int) -> Sample | None:
        assert self.near is not None
        index = self.near.seen
        pair = self.near.check(sample)
        self.seen_source.append(self.sources.setdefault((origins.source, origins.unit), len(self.sources)))
        self.seen_number.append(origins.numbers[at])
        if pair is None:
            return sample
        self.dropped["near duplicate"] += 1
        if len(self.examples) < EXAMPLE_PAIRS:
            texts = excerpts(self.near.kept_texts[pair.kept], conversation_text(sample), EXAMPLE_CHARS)
            self.examples.append(
                {
                    "similarity": pair.similarity,
                    "kept": f"{self._origin(pair.kept)}: {texts[0]}",
                    "removed": f"{self._origin(index)}: {texts[1]}",
                }
            )
        return None

    def close(self) -> None:
        if self.kept_texts is not None:
            self.kept_texts.close()

    def _origin(self, index: int) -> str:
        source, unit = list(self.sources)[self.seen_source[index]]
        return Origins(source, (self.seen_number[index],), unit)[0]


def tokenize_to_shards(settings: Settings, tokenizer: Any, template: Any, work: Path, report: Progress) -> Tokenized:
    """Pass 1 (see the module doc)."""
    work.mkdir(parents=True, exist_ok=True)
    rules = RowRules(settings, work)
    writer = TokenShardWriter(work / "tokens", settings.preprocess_shard_size)
    encoder = Encoder(tokenizer, template, token_length_table(tokenizer))
    lengths, trained, within, numbers = array("q"), array("q"), array("q"), array("q")
    dataset_index = array("i")
    keys = SplitKeys(settings.val_split, settings.where("val_split")) if settings.val_split != "random" else None
    split_keys = keys.array() if keys is not None else None
    sources: list[tuple[str, str]] = []
    read_counts: dict[str, int] = {}
    input_bytes = sum(_size(dataset_path(dataset)) for dataset in settings.datasets)
    bytes_read = 0

    def jobs() -> Iterator[Job]:
        nonlocal bytes_read
        for index, dataset in enumerate(settings.datasets):
            report.stage(f"reading {dataset.path}")
            options = EncodeOptions(
                completion=dataset.type == "completion",
                roles_to_train=tuple(dataset.roles_to_train),
                train_on_eos=dataset.train_on_eos,
                train_on_inputs=settings.train_on_inputs,
            )
            read = 0
            for batch in iter_dataset(dataset, TOKENIZE_CHUNK):
                table = batch.table
                if read == 0:
                    sources.append((table.source, table.origins.unit))
                samples = format_table(table, dataset)
                read += len(samples)
                bytes_read += batch.bytes_read
                kept, at, kept_keys = [], [], []
                for position, sample in enumerate(samples):
                    key = keys.read(table.rows[position], table.origins[position]) if keys is not None else None
                    sample = rules.keep(sample, table.origins, position)
                    if sample is not None:
                        kept.append(sample)
                        at.append(position)
                        kept_keys.append(key)
                if kept:
                    numbers_kept = [table.origins.numbers[i] for i in at]
                    yield Job(kept, options, table.origins[at[0]], tag=(index, numbers_kept, kept_keys))
            label = sources[index][0]
            read_counts[label if label not in read_counts else f"{label} (#{index + 1})"] = read

    limit, tokens = settings.sequence_len, 0
    try:
        for job, ids, labels in encode_batches(encoder, jobs(), resolve_workers(settings.preprocess_workers)):
            index, rows, row_keys = job.tag
            if split_keys is not None:
                split_keys.extend(row_keys)
            writer.add(ids, labels)
            mask = labels.values != IGNORE_INDEX
            position = np.arange(len(ids.values), dtype=np.int64) - np.repeat(ids.offsets[:-1], ids.lengths)
            lengths.extend(ids.lengths.tolist())
            trained.extend(_per_sample(mask, ids.offsets).tolist())
            within.extend(_per_sample(mask & (position < limit), ids.offsets).tolist())
            dataset_index.extend([index] * len(rows))
            numbers.extend(rows)
            tokens += len(ids.values)
            report.streaming(len(lengths), tokens, bytes_read / input_bytes if input_bytes else None)
    except WorkerDied as exc:
        raise WorkerDied(f"{settings.where('preprocess_workers')}: {exc}") from None
    report.update("tokenizing", len(lengths), len(lengths), tokens)
    rules.close()
    return Tokenized(
        shards=writer.close(),
        lengths=np.frombuffer(lengths, dtype=np.int64),
        trained=np.frombuffer(trained, dtype=np.int64),
        trained_within=np.frombuffer(within, dtype=np.int64),
        dataset_index=np.frombuffer(dataset_index, dtype=np.int32),
        numbers=np.frombuffer(numbers, dtype=np.int64),
        split_keys=None if split_keys is None else np.frombuffer(split_keys, dtype=KEY_DTYPES[split_keys.typecode]),
        contacts=keys.names if keys is not None else [],
        sources=sources,
        read_counts=read_counts,
        dropped=rules.dropped,
        filler_turns=rules.filler_turns,
        examples=rules.examples,
    )


def _per_sample(mask: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    cumulative = np.concatenate([[0], np.cumsum(mask)])
    return cumulative[offsets[1:]] - cumulative[offsets[:-1]]


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


# --- pass 2: the plan, from lengths and counts -----------------------------------------------------


@dataclass(frozen=True)
class SplitPlan:
    """One split's rows: the samples (indices into the shards) in row order and how they are grouped."""

    order: np.ndarray
    counts: np.ndarray | None  # samples per packed row; None: one sample per row
    truncate_to: int | None
    stats: SplitStats


def plan_splits(tokenized: Tokenized, settings: Settings) -> tuple[dict[str, SplitPlan | None], int, dict[str, int]]:
    """({"train": plan, "eval": plan or None}, truncated count, drops by reason)."""
    total = len(tokenized.lengths)
    permutation = np.random.default_rng(settings.seed).permutation(total)
    n_eval = eval_count(settings, total)
    held = held_out(settings, n_eval, permutation, tokenized.split_keys, tokenized.contacts)
    dropped = dict(tokenized.dropped)
    lengths = tokenized.lengths[permutation]
    trained = tokenized.trained[permutation]
    limit = settings.sequence_len
    trainable = trained > 0
    dropped["no trainable tokens"] += int(np.count_nonzero(~trainable))
    too_long = trainable & (lengths > limit)
    count = int(np.count_nonzero(too_long))
    keep, truncated, truncate_to = trainable, 0, None
    if count and settings.excess_length_strategy == "raise":
        first = int(np.flatnonzero(too_long)[0])
        raise DataError(
            f"{tokenized.origin(int(permutation[first]))}: this sample is {int(lengths[first]):,} tokens, longer "
            f"than sequence_len {limit} ({count} samples are); raise sequence_len or set "
            f"excess_length_strategy: drop or truncate ({settings.where('excess_length_strategy')})"
        )
    if count and settings.excess_length_strategy == "drop":
        dropped[f"longer than {limit} tokens"] += count
        keep = trainable & ~too_long
    elif count:  # truncate
        lengths, trained, truncate_to = np.minimum(lengths, limit), tokenized.trained_within[permutation], limit
        lost = too_long & ~(trained > 0)
        dropped["no trainable tokens after truncation"] = int(np.count_nonzero(lost))
        truncated = count - int(np.count_nonzero(lost))
        keep = trainable & (trained > 0)
    is_eval = held[permutation]
    plans: dict[str, SplitPlan | None] = {}
    for name, selected, packed in (
        ("train", keep & ~is_eval, settings.sample_packing),
        ("eval", keep & is_eval, settings.packs_eval),
    ):
        if name == "eval" and n_eval == 0:
            plans[name] = None
            continue
        index = np.flatnonzero(selected)
        counts = None
        order = permutation[index]
        if packed:
            positions, counts = bin_order(plan_bins(lengths[index], limit, settings.seed))
            order = order[positions]
        rows = len(counts) if counts is not None else len(index)
        stats = SplitStats(len(index), rows, int(lengths[index].sum()), int(trained[index].sum()))
        plans[name] = SplitPlan(order, counts, truncate_to, stats)
    return plans, truncated, dropped


# --- pass 3: assemble rows ----------------------------------------------------------------------------


def write_split(
    shards: TokenShards, plan: SplitPlan, directory: Path, fingerprint: str, chunk: int
) -> Iterator[int]:
    """The split's rows into a `save_to_disk` directory, about `chunk` samples at a time; yields the rows
    written so far after each chunk (and 0 first)."""
    yield 0
    packed = plan.counts is not None
    names = ("input_ids", "labels", "position_ids", "lengths") if packed else ("input_ids", "labels")
    counts = plan.counts if plan.counts is not None else np.ones(len(plan.order), dtype=np.int64)
    ends = np.cumsum(counts)
    writer = SplitWriter(directory, names)
    row = 0
    while row < len(counts):
        first = int(ends[row - 1]) if row else 0
        stop = max(int(np.searchsorted(ends, first + chunk, side="right")), row + 1)
        ids, labels = shards.gather(plan.order[first : int(ends[stop - 1])])
        if plan.truncate_to is not None:
            ids, labels = ids.truncated(plan.truncate_to), labels.truncated(plan.truncate_to)
        if packed:
            rows = packed_rows(ids, labels, counts[row:stop])
            columns = {
                "input_ids": rows.input_ids,
                "labels": rows.labels,
                "position_ids": rows.position_ids,
                "lengths": rows.sample_lengths,
            }
        else:
            columns = {"input_ids": ids, "labels": labels}
        writer.write(columns)
        row = stop
        yield row
    writer.close(fingerprint)

