"""The held-out conversations the report scores, and the training data it compares against.

Held-out: the recipe's validation split exactly as `prepare_data` builds it (`val_set_size`, and
`val_split` where the recipe has one), or every conversation of `--dataset FILE` (formatted like the
recipe's first dataset). The first `--max-conversations` of them are used, in split order.

Both sides are read from the TOKENIZED rows, so the prompts are exactly what the model was trained on
(same template, same system prompt, same masking):
- SFT rows: each run of trained label tokens is one of your replies; its context (the prompt the model
  answers) is every token of the conversation before it. A conversation with three assistant turns gives
  three samples. Eval packing is switched off for this, so a context never holds another conversation.
- preference pairs (DPO): the prompt is `prompt_ids` and your reply is the chosen one (`chosen_ids`).

The held-out loss rows are the ones `finetune evaluate` scores (the recipe's eval rows as prepared,
packed or not); for pairs, the prompt + chosen reply with the reply's tokens trained.

Training side: the training replies (label runs; chosen replies for pairs) feed the replay index; the
whole training text and the people's names (rows' `contact` fields and speaker prefixes in contexts)
feed the leak index.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from finetune.config.settings import Settings
from finetune.data.build import prepare_data
from finetune.data.readers import read_dataset
from finetune.data.tokenize import IGNORE_INDEX
from finetune.errors import FinetuneError
from finetune.infer.common import dataset_settings
from finetune.infer.generate import trim
from finetune.report.leaks import TrainingSecrets, contact_names, speaker_names
from finetune.report.replay import TrainingReplies

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One held-out reply of yours: the conversation it belongs to, the prompt ids, their text, your reply."""

    conversation: int
    prompt_ids: tuple[int, ...]
    context: str
    real: str


@dataclass
class HeldOut:
    samples: list[Sample]
    loss_rows: Any  # what the held-out loss is computed on
    conversations: int
    how: str


@dataclass
class Training:
    replies: TrainingReplies
    secrets: TrainingSecrets
    conversations: int


def label_runs(labels: Sequence[int]) -> Iterator[tuple[int, int]]:
    """(start, end) of every run of trained (not IGNORE_INDEX) labels."""
    start = None
    for position, label in enumerate(labels):
        if label != IGNORE_INDEX and start is None:
            start = position
        elif label == IGNORE_INDEX and start is not None:
            yield start, position
            start = None
    if start is not None:
        yield start, len(labels)


def choose(settings: Settings, tokenizer: Any, *, dataset: str | None, max_conversations: int,
           stop_strings: Sequence[str], progress: bool) -> tuple[HeldOut, Training]:
    """The held-out samples and the training index (module doc)."""
    scored = dataset_settings(settings, dataset) if dataset else settings
    prepared = prepare_data(scored, tokenizer, progress=progress)
    loss_rows = prepared.train if dataset else prepared.eval
    if loss_rows is None or len(loss_rows) == 0:
        raise FinetuneError(f"{settings.where('val_set_size')}: no validation split to report on; "
                            "set val_set_size (and val_split) or pass --dataset FILE")
    pairs = settings.rl is not None
    if pairs:
        rows = loss_rows
        loss_rows = [{"input_ids": list(r["prompt_ids"]) + list(r["chosen_ids"]),
                      "labels": [IGNORE_INDEX] * len(r["prompt_ids"]) + list(r["chosen_ids"])} for r in rows]
    elif scored.packs_eval:  # contexts from unpacked rows: a packed row holds several conversations
        unpacked = scored.model_copy(update={"eval_sample_packing": False} if not dataset else {"sample_packing": False})
        again = prepare_data(unpacked, tokenizer, progress=progress)
        rows = again.train if dataset else again.eval
    else:
        rows = loss_rows
    count = min(len(rows), max_conversations)
    samples = []
    for index in range(count):
        row = rows[index]
        if pairs:
            samples.append(_sample(tokenizer, index, row["prompt_ids"], row["chosen_ids"], stop_strings))
            continue
        ids, labels = list(row["input_ids"]), list(row["labels"])
        for start, end in label_runs(labels):
            samples.append(_sample(tokenizer, index, ids[:start], ids[start:end], stop_strings))
    how = (f"--dataset {dataset}: its first {count} of {len(rows)} conversations" if dataset else
           f"the recipe's validation split ({_split_words(settings)}): its first {count} of {len(rows)} conversations")
    held = HeldOut(samples, loss_rows, count, how)
    training = training_index(settings, tokenizer, prepared.train if not dataset else
                              prepare_data(settings, tokenizer, progress=progress).train, pairs, stop_strings)
    return held, training


def _split_words(settings: Settings) -> str:
    words = f"val_set_size {settings.val_set_size}"
    split = getattr(settings, "val_split", None)
    return f"{words}, val_split {split}" if split else f"{words}, shuffled with seed {settings.seed}"


def _sample(tokenizer: Any, index: int, prompt: Sequence[int], reply: Sequence[int], strings: Sequence[str]) -> Sample:
    return Sample(index, tuple(int(t) for t in prompt), tokenizer.decode(list(prompt), skip_special_tokens=False),
                  trim(tokenizer.decode(list(reply), skip_special_tokens=True), strings))


def training_index(settings: Settings, tokenizer: Any, rows: Any, pairs: bool, strings: Sequence[str]) -> Training:
    """The replay and leak indexes of the training rows (module doc)."""
    replies: list[str] = []
    texts: list[str] = []
    names: set[str] = set()
    for row in rows:
        if pairs:
            replies.append(trim(tokenizer.decode(list(row["chosen_ids"]), skip_special_tokens=True), strings))
            context = tokenizer.decode(list(row["prompt_ids"]), skip_special_tokens=True)
            texts += [context, replies[-1]]
            names |= speaker_names(context)
            continue
        ids, labels = list(row["input_ids"]), list(row["labels"])
        last = 0
        for start, end in label_runs(labels):
            context = tokenizer.decode(ids[last:start], skip_special_tokens=True)
            replies.append(trim(tokenizer.decode(ids[start:end], skip_special_tokens=True), strings))
            texts += [context, replies[-1]]
            names |= speaker_names(context)
            last = end
    for dataset in settings.datasets:  # the rows' `contact` fields (importers write them)
        try:
            table = read_dataset(dataset)
        except Exception as exc:  # noqa: BLE001 - names are a bonus; the data was read fine by prepare_data
            logger.info("contact names not read from %s: %s", dataset.path, exc)
            continue
        for row in table.rows:
            names |= contact_names(row.get("contact"))
    return Training(TrainingReplies.of(replies), TrainingSecrets.of(texts, names), len(rows))
