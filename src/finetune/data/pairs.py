"""Preference pairs: raw rows -> (prompt, chosen, rejected) -> token ids for TRL's DPOTrainer.

Formats (`datasets[].type`; errors name the row's `file:line` and what to change):

* `chat_template.default` (Axolotl): the prompt turns at `field_messages`; `field_chosen` and
  `field_rejected` each hold the reply as a message, a list of messages whose last one counts,
  or a plain string.
* `chat_template.argilla_chat`: `field_chosen` / `field_rejected` hold whole conversations that
  share every turn but the last, which is the (assistant) reply.
* `llama3.intel` / `chatml.intel` (Intel orca_dpo_pairs, TRL's flat layout): optional
  `field_system`, the user turn at `question` (or `prompt`), chosen/rejected strings.

Tokenizing: each side is rendered as `prompt + [assistant reply]` with the recipe's chat template
(one render and one tokenization per side, as SFT does) and the reply's tokens are those whose
first character lies in the reply's content or its end-of-turn marker; anything the template
writes after the end-of-turn marker is dropped. `prompt_ids` are the tokens before the first
reply token (the common prefix of both sides), `chosen_ids` / `rejected_ids` the reply tokens:
exactly the columns DPOTrainer reads, every completion token scored.

Filters (each counted in the summary): identical chosen and rejected replies; pairs whose
prompt + longer reply exceed `sequence_len` follow `excess_length_strategy` (drop, raise, or
truncate the replies; a prompt that alone fills sequence_len is dropped); with `dedup`, exact
duplicate pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from finetune.config.settings import DatasetSettings, Settings
from finetune.data.formats import Message, chat_messages
from finetune.data.pack import Ragged
from finetune.data.readers import Origins, read_dataset
from finetune.data.shards import SplitWriter
from finetune.data.stream import TOKENIZE_CHUNK, eval_count
from finetune.data.templates import ChatTemplate
from finetune.data.summary import NO_SPLIT, PrepareSummary, Progress, SplitStats, nonzero
from finetune.data.tokenize import IGNORE_INDEX, labels_from_spans, token_length_table, tokenize_with_starts
from finetune.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PAIR_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
PROMPT_FIELDS = ("question", "prompt")  # the user turn of the flat Intel/TRL layout, first found wins


@dataclass(frozen=True)
class Pair:
    """One preference pair: the prompt turns and the two candidate assistant replies."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str

    def key(self) -> tuple:
        return (tuple((m["role"], m["content"]) for m in self.prompt), self.chosen, self.rejected)


# --- formats --------------------------------------------------------------------------------


def format_pairs(rows: list[dict[str, Any]], origins: Origins, dataset: DatasetSettings) -> list[Pair]:
    """Every row of a preference dataset as a Pair (same order); DataError naming the row otherwise."""
    role_map = dataset.role_map
    role_key = dataset.message_property_mappings.get("role", "role")
    content_key = dataset.message_property_mappings.get("content", "content")
    out = []
    for index, row in enumerate(rows):
        origin = origins[index]
        if dataset.type == "chat_template.default":
            prompt = _prompt_turns(row, dataset, role_map, role_key, content_key, origins, index)
            chosen = _reply(row, dataset.field_chosen, "field_chosen", dataset, role_map, role_key, content_key, origin)
            rejected = _reply(row, dataset.field_rejected, "field_rejected", dataset, role_map, role_key,
                              content_key, origin)
        elif dataset.type == "chat_template.argilla_chat":
            prompt, chosen, rejected = _argilla(row, dataset, role_map, role_key, content_key, origin)
        else:
            prompt, chosen, rejected = _flat(row, dataset, origin)
        for name, text in ((dataset.field_chosen, chosen), (dataset.field_rejected, rejected)):
            if not text.strip():
                raise DataError(f"{origin}: `{name}`: the reply is empty; every pair needs two non-empty replies")
        out.append(Pair(tuple(prompt), chosen, rejected))
    return out


def _prompt_turns(row: dict[str, Any], dataset: DatasetSettings, role_map: dict[str, str], role_key: str,
                  content_key: str, origins: Origins, index: int) -> list[Message]:
    if dataset.field_messages not in row:
        keys = ", ".join(map(str, row)) or "none"
        raise DataError(
            f"{origins[index]}: missing the prompt turns `{dataset.field_messages}` (row keys: {keys}); "
            f"set `field_messages:` on the dataset at {dataset.where()}"
        )
    messages = chat_messages(row, dataset, role_map, role_key, content_key, origins, index)
    if not messages:
        raise DataError(f"{origins[index]}: `{dataset.field_messages}` is empty; a pair needs a prompt")
    return messages


def _missing(row: dict[str, Any], name: str, setting: str, dataset: DatasetSettings, origin: str) -> DataError:
    keys = ", ".join(map(str, row)) or "none"
    return DataError(
        f"{origin}: missing `{name}` ({dataset.type} pairs; row keys: {keys}); "
        f"set `{setting}:` on the dataset at {dataset.where()} if the column has another name"
    )


def _reply(row: dict[str, Any], name: str, setting: str, dataset: DatasetSettings, role_map: dict[str, str],
           role_key: str, content_key: str, origin: str) -> str:
    """A reply given as a string, a message, or a list of messages whose last one counts."""
    if name not in row or row[name] is None:
        raise _missing(row, name, setting, dataset, origin)
    value = row[name]
    if type(value) is str:
        return value
    if isinstance(value, list):
        if not value:
            raise DataError(f"{origin}: `{name}` is an empty list; expected the reply message (or a string)")
        value = value[-1]
    if type(value) is not dict:
        raise DataError(f"{origin}: `{name}`: expected a string, a message or a list of messages, "
                        f"got {type(value).__name__}")
    role, content = value.get(role_key, "assistant"), value.get(content_key)
    if role_map.get(role, role) != "assistant":
        raise DataError(f"{origin}: `{name}`: the reply's role is `{role}`; the scored reply must be the "
                        f"assistant's (map it under `roles:` at {dataset.where()})")
    if type(content) is not str:
        raise DataError(f"{origin}: `{name}.{content_key}`: expected a string, got {type(content).__name__}")
    return content


def _argilla(row: dict[str, Any], dataset: DatasetSettings, role_map: dict[str, str], role_key: str,
             content_key: str, origin: str) -> tuple[list[Message], str, str]:
    sides = []
    for name, setting in ((dataset.field_chosen, "field_chosen"), (dataset.field_rejected, "field_rejected")):
        if name not in row or row[name] is None:
            raise _missing(row, name, setting, dataset, origin)
        if not isinstance(row[name], list) or len(row[name]) < 2:
            raise DataError(f"{origin}: `{name}`: expected a conversation (a list of at least a prompt and a "
                            f"reply message), got {type(row[name]).__name__}")
        view = dataset.model_copy(update={"field_messages": name})  # keeps where() for the errors
        messages = chat_messages(row, view, role_map, role_key, content_key, _Only(origin), 0)
        if messages[-1]["role"] != "assistant":
            raise DataError(f"{origin}: `{name}`: the last message is `{messages[-1]['role']}`; it must be the "
                            "assistant's reply")
        sides.append(messages)
    chosen, rejected = sides
    if chosen[:-1] != rejected[:-1]:
        raise DataError(f"{origin}: `{dataset.field_chosen}` and `{dataset.field_rejected}` differ before their "
                        "last message; argilla_chat pairs must share the prompt turns")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def _flat(row: dict[str, Any], dataset: DatasetSettings, origin: str) -> tuple[list[Message], str, str]:
    field = next((name for name in PROMPT_FIELDS if name in row), None)
    if field is None:
        keys = ", ".join(map(str, row)) or "none"
        raise DataError(f"{origin}: missing the prompt (`question` or `prompt`; row keys: {keys}) of a "
                        f"{dataset.type} pair")
    texts = {}
    for name, setting, required in ((field, None, True), (dataset.field_system, "field_system", False),
                                    (dataset.field_chosen, "field_chosen", True),
                                    (dataset.field_rejected, "field_rejected", True)):
        value = row.get(name)
        if value is None:
            if required:
                raise _missing(row, name, setting or name, dataset, origin)
            value = ""
        if type(value) is not str:
            raise DataError(f"{origin}: `{name}`: expected a string, got {type(value).__name__}")
        texts[name] = value
    prompt = [{"role": "system", "content": texts[dataset.field_system]}] if texts[dataset.field_system] else []
    prompt.append({"role": "user", "content": texts[field]})
    return prompt, texts[dataset.field_chosen], texts[dataset.field_rejected]


class _Only:
    """Origins of a single row (chat_messages looks its row up by index)."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def __getitem__(self, index: int) -> str:
        return self.origin


# --- tokenize ---------------------------------------------------------------------------------


def encode_pairs(pairs: list[Pair], *, template: ChatTemplate, tokenizer: PreTrainedTokenizerBase, token_lengths: Any = None
                 ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(prompt_ids, chosen_ids, rejected_ids) of each pair (see the module doc)."""
    conversations = []
    for pair in pairs:
        for reply in (pair.chosen, pair.rejected):
            conversations.append([*pair.prompt, {"role": "assistant", "content": reply}])
    rendered = template.render_batch(conversations)
    tokenized = tokenize_with_starts(tokenizer, [r.text for r in rendered], token_lengths)
    replies = []
    for rend, (ids, starts) in zip(rendered, tokenized):
        spans = [rend.content_spans[-1]] + ([rend.eot_spans[-1]] if rend.eot_spans[-1] is not None else [])
        spans = sorted(span for span in spans if span[1] > span[0])
        scored = np.flatnonzero(labels_from_spans(ids, starts, spans) != IGNORE_INDEX)
        if len(scored) == 0:
            replies.append((ids, len(ids), len(ids)))
        else:
            replies.append((ids, int(scored[0]), int(scored[-1]) + 1))
    out = []
    for (c_ids, c_start, c_end), (r_ids, r_start, r_end) in zip(replies[0::2], replies[1::2]):
        shared = _common_prefix(c_ids[:c_start], r_ids[:r_start])
        out.append((c_ids[:shared], c_ids[shared:c_end], r_ids[shared:r_end]))
    return out


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


# --- build ------------------------------------------------------------------------------------


def build_pair_splits(settings: Settings, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, report: Progress
                      ) -> tuple[dict[str, dict[str, Ragged] | None], PrepareSummary]:
    """The pair train/eval columns (PAIR_COLUMNS) and their summary, as build.build_splits does for SFT."""
    pairs: list[Pair] = []
    where: list[str] = []
    read: dict[str, int] = {}
    for index, dataset in enumerate(settings.datasets):
        report.stage(f"reading {dataset.path}")
        table = read_dataset(dataset)
        formatted = format_pairs(table.rows, table.origins, dataset)
        pairs.extend(formatted)
        where.extend(table.origins[i] for i in range(len(formatted)))
        read[table.source if table.source not in read else f"{table.source} (#{index + 1})"] = len(formatted)
    long_reason = f"longer than {settings.sequence_len} tokens"
    dropped = {"identical chosen and rejected": 0, "duplicate": 0, long_reason: 0}
    keep = list(range(len(pairs)))
    if settings.dedup:
        seen: set = set()
        unique = []
        for i in keep:
            if pairs[i].key() not in seen:
                seen.add(pairs[i].key())
                unique.append(i)
        dropped["duplicate"] = len(keep) - len(unique)
        keep = unique
    order = np.asarray(keep, dtype=np.int64)[np.random.default_rng(settings.seed).permutation(len(keep))]
    n_eval = eval_count(settings, len(order))
    lengths = token_length_table(tokenizer)
    encoded: list[Any] = []
    for start in range(0, len(order), TOKENIZE_CHUNK):
        chunk = order[start : start + TOKENIZE_CHUNK].tolist()
        try:
            encoded.extend(encode_pairs([pairs[i] for i in chunk], template=template, tokenizer=tokenizer,
                                        token_lengths=lengths))
        except DataError as exc:
            raise DataError(f"{where[chunk[0]]} (or a later row of this batch): {exc}") from None
        report.update("tokenizing", len(encoded), len(order), sum(len(p) + len(c) + len(r) for p, c, r in encoded))
    kept, truncated = [], 0
    for position, (index, (prompt, chosen, rejected)) in enumerate(zip(order.tolist(), encoded)):
        room = settings.sequence_len - len(prompt)
        if max(len(chosen), len(rejected)) > room:
            if settings.excess_length_strategy == "raise":
                raise DataError(
                    f"{where[index]}: this pair is {len(prompt) + max(len(chosen), len(rejected)):,} tokens (prompt + "
                    f"longer reply), longer than sequence_len {settings.sequence_len}; raise sequence_len or set "
                    f"excess_length_strategy: drop or truncate ({settings.where('excess_length_strategy')})"
                )
            if settings.excess_length_strategy == "drop" or room <= 0:
                dropped[long_reason] += 1
                continue
            chosen, rejected = chosen[:room], rejected[:room]
            truncated += 1
        if np.array_equal(chosen, rejected):
            dropped["identical chosen and rejected"] += 1
            continue
        kept.append((position < n_eval, prompt, chosen, rejected))
    splits: dict[str, dict[str, Ragged] | None] = {}
    stats: dict[str, SplitStats] = {}
    for name, is_eval in (("train", False), ("eval", True)):
        rows = [row[1:] for row in kept if row[0] == is_eval]
        if is_eval and n_eval == 0:
            splits[name], stats[name] = None, NO_SPLIT
            continue
        columns = {column: Ragged.from_arrays([row[i] for row in rows]) for i, column in enumerate(PAIR_COLUMNS)}
        splits[name] = columns
        scored = len(columns["chosen_ids"].values) + len(columns["rejected_ids"].values)
        stats[name] = SplitStats(len(rows), len(rows), scored + 2 * len(columns["prompt_ids"].values), scored)
    if stats["train"].samples == 0:
        raise DataError(f"no training pairs left after filtering; dropped: {nonzero(dropped)}")
    summary = PrepareSummary.of_splits(read, dropped, truncated, stats["train"], stats["eval"],
                                       sequence_len=settings.sequence_len, packed=False)
    return splits, summary


def write_pair_splits(settings: Settings, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, report: Progress,
                      directory: Path, fingerprint: str) -> PrepareSummary:
    """`build_pair_splits`, written into the cache's `directory` as `save_to_disk` splits; returns the summary.

    Pairs are built in memory (preference sets are thousands of pairs, not millions); SFT data streams
    (finetune.data.stream)."""
    splits, summary = build_pair_splits(settings, tokenizer, template, report)
    for name, columns in splits.items():
        if columns is not None:
            writer = SplitWriter(directory / name, PAIR_COLUMNS)
            writer.write(columns)
            writer.close(fingerprint)
    return summary
