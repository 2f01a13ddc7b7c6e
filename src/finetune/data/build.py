"""`prepare_data`: recipe datasets -> tokenized, masked, packed, cached train/eval splits.

Stages, in order (each drop is counted by reason in the summary):

1. read every dataset and normalize its rows (readers, formats);
2. filler (when `min_assistant_chars`): short assistant turns and the turns they answer are
   removed, and conversations left with no assistant turn dropped (finetune.data.neardup);
   dedup (when `dedup`): exact duplicate conversations, then with `dedup: near` also
   near-duplicates (MinHash + LSH); the first occurrence in dataset order is kept;
3. mix all datasets and shuffle with `seed`; `val_set_size` conversations (a fraction, rounded up,
   or a count) form the eval split: the first ones, or by `val_split` the newest or whole contacts
   (finetune.data.holdout);
4. tokenize + mask in batches, one render and one tokenization per conversation;
5. drop samples with no trainable token; then samples longer than `sequence_len`
   are dropped, truncated, or raise (`excess_length_strategy`);
6. pack train (and eval when `packs_eval`) into rows of `sequence_len` tokens;
7. save to `<dataset_prepared_path>/<fingerprint>/` atomically and load it back (memory-mapped).

A complete cache with the same fingerprint is reused unless `force`.

`prepare_data` runs these stages in bounded memory (finetune.data.stream: streamed reading, tokens in
on-disk shards, the plan from lengths alone). `build_splits` below runs them on the whole corpus in
memory: it is the reference the streaming path is tested against (same rows for the same recipe and
seed), and it is what the cache sweep (tests/data/test_cache_sweep.py) builds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from finetune.config.settings import Settings
from finetune.data import cache
from finetune.data.formats import Sample, format_table, sample_key
from finetune.data.holdout import SplitKeys, held_out
from finetune.data.neardup import conversation_text, drop_filler_turns, excerpts, has_assistant, near_duplicates
from finetune.data.pack import Ragged, pack
from finetune.data.pairs import build_pair_splits, write_pair_splits
from finetune.data.readers import Origins, read_dataset
from finetune.data.stream import EXAMPLE_CHARS, EXAMPLE_PAIRS, TOKENIZE_CHUNK, build_streamed, eval_count
from finetune.data.summary import NO_SPLIT, PrepareSummary, Progress, SplitStats, nonzero
from finetune.data.templates import ChatTemplate, resolve_template
from finetune.data.tokenize import IGNORE_INDEX, encode_completions, encode_conversations, token_length_table
from finetune.errors import DataError, RecipeError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["PreparedData", "build_splits", "prepare_data", "recipe_template"]


@dataclass(frozen=True)
class PreparedData:
    train: Any  # datasets.Dataset
    eval: Any  # datasets.Dataset | None
    path: Path
    summary: PrepareSummary
    from_cache: bool


def prepare_data(
    settings: Settings, tokenizer: PreTrainedTokenizerBase, *, force: bool = False, progress: bool = True
) -> PreparedData:
    """Prepare (or load from cache) the recipe's train/eval splits. See the module doc."""
    started = time.perf_counter()
    template = recipe_template(settings, tokenizer)
    key = cache.fingerprint(settings, tokenizer, template.jinja_source if template is not None else "")
    path = Path(settings.dataset_prepared_path) / key
    if not force:
        loaded = cache.load(path, key)
        if loaded is not None:
            splits, summary = loaded
            return PreparedData(splits["train"], splits["eval"], path, PrepareSummary.from_dict(summary), True)

    report = Progress(progress)

    def fill(directory: Path) -> dict[str, Any]:
        if settings.rl is not None:  # preference pairs: their own formats, filters and columns
            summary = write_pair_splits(settings, tokenizer, template, report, directory, key)
        else:
            summary = build_streamed(settings, tokenizer, template, report, directory, key)
        return replace(summary, seconds=round(time.perf_counter() - started, 3)).to_dict()

    summary = cache.commit(path, key, fill)
    loaded = cache.load(path, key)
    if loaded is None:  # pragma: no cover - a concurrent writer replaced it mid-read
        raise DataError(f"{path}: the prepared data vanished right after it was written; run again")
    report.done()
    return PreparedData(loaded[0]["train"], loaded[0]["eval"], path, PrepareSummary.from_dict(summary), False)


def build_splits(
    settings: Settings, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate | None, report: Progress
) -> tuple[dict[str, dict[str, Ragged] | None], PrepareSummary]:
    """Stages 1-6 of the module doc in memory: the train/eval columns and their summary (seconds 0)."""
    if settings.rl is not None:  # preference pairs: their own formats, filters and columns
        return build_pair_splits(settings, tokenizer, template, report)
    corpus = _read_all(settings, report)
    dropped = {"empty": 0, "duplicate": 0, "no trainable tokens": 0, f"longer than {settings.sequence_len} tokens": 0}
    corpus = corpus.without_empty(dropped)
    filler_turns = 0
    if settings.min_assistant_chars:
        corpus, filler_turns = corpus.without_filler(settings.min_assistant_chars, dropped)
    if settings.dedup:
        corpus = corpus.deduplicated(dropped)
    examples: list[dict[str, Any]] = []
    if settings.dedup == "near":
        report.stage(f"near-duplicates in {len(corpus):,} conversations")
        corpus, examples = corpus.near_deduplicated(settings, dropped)
    permutation = np.random.default_rng(settings.seed).permutation(len(corpus))
    n_eval = eval_count(settings, len(corpus))
    held = held_out(settings, n_eval, permutation, corpus.split_keys, corpus.contacts)
    corpus = corpus.take(permutation)
    ids, labels = _tokenize(corpus, settings, tokenizer, template, report)
    keep, truncated, ids, labels = _filter(ids, labels, corpus, settings, dropped)
    is_eval = held[permutation]
    splits: dict[str, dict[str, Ragged] | None] = {}
    stats: dict[str, SplitStats] = {}
    plan = (("train", keep & ~is_eval, settings.sample_packing), ("eval", keep & is_eval, settings.packs_eval))
    for name, selected, packed in plan:
        index = np.flatnonzero(selected)
        if name == "eval" and n_eval == 0:
            splits[name], stats[name] = None, NO_SPLIT
            continue
        split_ids, split_labels = ids.take(index), labels.take(index)
        columns = _rows(split_ids, split_labels, packed, settings.sequence_len, settings.seed)
        splits[name] = columns
        trained = int(np.count_nonzero(columns["labels"].values != IGNORE_INDEX))
        stats[name] = SplitStats(len(index), len(columns["input_ids"]), len(split_ids.values), trained)
    train, evaluation = stats["train"], stats["eval"]
    if train.samples == 0:
        raise DataError(f"no training samples left after filtering; dropped: {nonzero(dropped)}")
    summary = PrepareSummary.of_splits(
        corpus.read_counts, dropped, truncated, train, evaluation, sequence_len=settings.sequence_len,
        packed=settings.sample_packing, filler_turns=filler_turns, near_duplicate_examples=examples,
    )
    return splits, summary


# --- corpus -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """Normalized samples of all datasets, with where each came from (dataset index, row index)."""

    samples: list[Sample]
    dataset_index: np.ndarray
    row_index: np.ndarray
    origins: list[Origins]
    read_counts: dict[str, int] = field(default_factory=dict)
    split_keys: np.ndarray | None = None  # what val_split plans with (finetune.data.holdout)
    contacts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def origin(self, index: int) -> str:
        return self.origins[self.dataset_index[index]][int(self.row_index[index])]

    def take(self, indices: np.ndarray) -> "Corpus":
        return Corpus(
            [self.samples[i] for i in indices.tolist()],
            self.dataset_index[indices],
            self.row_index[indices],
            self.origins,
            self.read_counts,
            None if self.split_keys is None else self.split_keys[indices],
            self.contacts,
        )

    def without_empty(self, dropped: dict[str, int]) -> "Corpus":
        keep = np.array([len(sample) > 0 for sample in self.samples], dtype=bool)
        dropped["empty"] += int(np.count_nonzero(~keep))
        return self if keep.all() else self.take(np.flatnonzero(keep))

    def deduplicated(self, dropped: dict[str, int]) -> "Corpus":
        seen: set[Any] = set()
        keep = []
        for index, sample in enumerate(self.samples):
            key = sample_key(sample)
            if key not in seen:
                seen.add(key)
                keep.append(index)
        dropped["duplicate"] += len(self.samples) - len(keep)
        return self.take(np.asarray(keep, dtype=np.int64))

    def without_filler(self, min_chars: int, dropped: dict[str, int]) -> tuple["Corpus", int]:
        """Filler assistant turns removed (see neardup.drop_filler_turns); conversations that lose
        every assistant turn dropped as "only filler replies". Returns the corpus and the turns removed."""
        samples, keep, turns = [], [], 0
        for index, sample in enumerate(self.samples):
            cleaned, removed = drop_filler_turns(sample, min_chars)
            turns += removed
            if not removed or has_assistant(cleaned):
                samples.append(cleaned)
                keep.append(index)
        dropped["only filler replies"] = len(self.samples) - len(keep)
        kept = self.take(np.asarray(keep, dtype=np.int64))
        return replace(kept, samples=samples), turns

    def near_deduplicated(self, settings: Settings, dropped: dict[str, int]) -> tuple["Corpus", list[dict[str, Any]]]:
        """Near-duplicates removed (first occurrence kept), and up to EXAMPLE_PAIRS example pairs."""
        found = near_duplicates(
            self.samples, threshold=settings.dedup_threshold, ngram=settings.dedup_ngram, seed=settings.seed
        )
        dropped["near duplicate"] = len(found)
        examples = [
            {"similarity": pair.similarity, **self._excerpts(pair.kept, pair.removed)} for pair in found[:EXAMPLE_PAIRS]
        ]
        removed = {pair.removed for pair in found}
        keep = np.asarray([i for i in range(len(self.samples)) if i not in removed], dtype=np.int64)
        return (self.take(keep) if removed else self), examples

    def _excerpts(self, kept: int, removed: int) -> dict[str, str]:
        texts = excerpts(conversation_text(self.samples[kept]), conversation_text(self.samples[removed]), EXAMPLE_CHARS)
        return {"kept": f"{self.origin(kept)}: {texts[0]}", "removed": f"{self.origin(removed)}: {texts[1]}"}


def _read_all(settings: Settings, report: Progress) -> Corpus:
    samples: list[Sample] = []
    dataset_index: list[np.ndarray] = []
    origins: list[Origins] = []
    counts: dict[str, int] = {}
    keys = SplitKeys(settings.val_split, settings.where("val_split")) if settings.val_split != "random" else None
    split_keys: list[float | int] = []
    for index, dataset in enumerate(settings.datasets):
        report.stage(f"reading {dataset.path}")
        table = read_dataset(dataset)
        formatted = format_table(table, dataset)
        if keys is not None:
            split_keys += [keys.read(row, table.origins[i]) for i, row in enumerate(table.rows)]
        samples.extend(formatted)
        dataset_index.append(np.full(len(formatted), index, dtype=np.int32))
        origins.append(table.origins)
        label = table.source if table.source not in counts else f"{table.source} (#{index + 1})"
        counts[label] = len(formatted)
    row_index = np.concatenate([np.arange(len(d), dtype=np.int64) for d in dataset_index])
    if keys is None:
        return Corpus(samples, np.concatenate(dataset_index), row_index, origins, counts)
    values = np.asarray(split_keys, dtype=np.float64 if settings.val_split == "newest" else np.int64)
    return Corpus(samples, np.concatenate(dataset_index), row_index, origins, counts, values, keys.names)


# --- tokenize, filter, rows -------------------------------------------------------------------------


def recipe_template(settings: Settings, tokenizer: PreTrainedTokenizerBase) -> ChatTemplate | None:
    """The recipe's chat template (None when every dataset is plain completion text)."""
    if all(dataset.type == "completion" for dataset in settings.datasets):
        return None
    try:
        return resolve_template(settings.chat_template, settings.chat_template_jinja, tokenizer)
    except RecipeError as exc:
        raise RecipeError(f"{settings.where('chat_template')}: {exc}") from None


def _tokenize(
    corpus: Corpus, settings: Settings, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate | None,
    report: Progress,
) -> tuple[Ragged, Ragged]:
    """Token ids and labels of every sample (same order), one batched call per dataset chunk."""
    token_lengths = token_length_table(tokenizer)
    encoded: list[Any] = [None] * len(corpus)
    done = tokens = 0
    for index, dataset in enumerate(settings.datasets):
        positions = np.flatnonzero(corpus.dataset_index == index)
        for start in range(0, len(positions), TOKENIZE_CHUNK):
            chunk = positions[start : start + TOKENIZE_CHUNK].tolist()
            samples = [corpus.samples[i] for i in chunk]
            try:
                if dataset.type == "completion":
                    pairs = encode_completions(samples, tokenizer=tokenizer)
                else:
                    pairs = encode_conversations(
                        samples,
                        template=template,
                        tokenizer=tokenizer,
                        roles_to_train=dataset.roles_to_train,
                        train_on_eos=dataset.train_on_eos,
                        train_on_inputs=settings.train_on_inputs,
                        token_lengths=token_lengths,
                    )
            except DataError as exc:
                raise DataError(f"{_first_origin(corpus, chunk)} (or a later row of this batch): {exc}") from None
            for i, pair in zip(chunk, pairs):
                encoded[i] = pair
                tokens += len(pair[0])
            done += len(chunk)
            report.update("tokenizing", done, len(corpus), tokens)
    ids = Ragged.from_arrays([pair[0] for pair in encoded])
    labels = Ragged.from_arrays([pair[1] for pair in encoded])
    # The first label of a sample is never predicted (the model shifts labels); mask it so stored
    # labels are exactly the trained tokens and packed samples never predict across a boundary.
    labels.values[ids.offsets[:-1][ids.lengths > 0]] = IGNORE_INDEX
    return ids, labels


def _first_origin(corpus: Corpus, chunk: list[int]) -> str:
    return corpus.origin(chunk[0]) if chunk else "<data>"


def _filter(
    ids: Ragged, labels: Ragged, corpus: Corpus, settings: Settings, dropped: dict[str, int]
) -> tuple[np.ndarray, int, Ragged, Ragged]:
    """(keep mask, truncated count, ids, labels) after the trainable and length rules."""
    trainable = _trained_counts(labels) > 0
    dropped["no trainable tokens"] += int(np.count_nonzero(~trainable))
    too_long = trainable & (ids.lengths > settings.sequence_len)
    count = int(np.count_nonzero(too_long))
    truncated = 0
    if count and settings.excess_length_strategy == "raise":
        first = int(np.flatnonzero(too_long)[0])
        raise DataError(
            f"{corpus.origin(first)}: this sample is {int(ids.lengths[first]):,} tokens, longer than sequence_len "
            f"{settings.sequence_len} ({count} samples are); raise sequence_len or set "
            f"excess_length_strategy: drop or truncate ({settings.where('excess_length_strategy')})"
        )
    if count and settings.excess_length_strategy == "drop":
        dropped[f"longer than {settings.sequence_len} tokens"] += count
        return trainable & ~too_long, 0, ids, labels
    if count:  # truncate
        ids, labels = ids.truncated(settings.sequence_len), labels.truncated(settings.sequence_len)
        still = _trained_counts(labels) > 0
        lost = too_long & ~still
        dropped["no trainable tokens after truncation"] = int(np.count_nonzero(lost))
        truncated = count - int(np.count_nonzero(lost))
        trainable &= still
    return trainable, truncated, ids, labels


def _trained_counts(labels: Ragged) -> np.ndarray:
    cumulative = np.concatenate([[0], np.cumsum(labels.values != IGNORE_INDEX)])
    return cumulative[labels.offsets[1:]] - cumulative[labels.offsets[:-1]]


def _rows(ids: Ragged, labels: Ragged, packed: bool, sequence_len: int, seed: int) -> dict[str, Ragged]:
    if not packed:
        return {"input_ids": ids, "labels": labels}
    rows = pack(ids, labels, sequence_len, seed)
    return {
        "input_ids": rows.input_ids,
        "labels": rows.labels,
        "position_ids": rows.position_ids,
        "lengths": rows.sample_lengths,
    }

