"""The batch collator: prepared rows -> padded torch tensors.

Rows are padded to the longest in the batch, or to `sequence_len` with
`pad_to_sequence_len`; padding gets label -100 and the tokenizer's pad id.

* Packed rows (`position_ids` present) get `position_ids` and NO `attention_mask`:
  transformers then builds a block-diagonal causal mask from the position restarts
  (only when no attention mask and no KV cache are passed, so train with
  `use_cache=False`). Padding gets its own position run 0, 1, ... so it forms a
  block of its own and no real token attends to it. The label at each sample's
  first position is -100: nothing in its own sample precedes it.
* Unpacked rows get an `attention_mask` (1 = token, 0 = padding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from finetune.config.settings import Settings
from finetune.data.tokenize import IGNORE_INDEX
from finetune.errors import RecipeError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Collator:
    """Callable collator; `pad_to` is a fixed length (pad_to_sequence_len) or None for the batch maximum."""

    pad_id: int
    pad_to: int | None = None

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        if not rows:
            raise ValueError("cannot collate an empty batch")
        ids = [np.asarray(row["input_ids"], dtype=np.int64) for row in rows]
        labels = [np.asarray(row["labels"], dtype=np.int64) for row in rows]
        packed = "position_ids" in rows[0] and rows[0]["position_ids"] is not None
        longest = max(len(row) for row in ids)
        width = longest if self.pad_to is None else self.pad_to
        if longest > width:
            raise ValueError(f"a row has {longest} tokens, more than the padded length {width}")
        batch_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        batch_labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
        for i, (row_ids, row_labels) in enumerate(zip(ids, labels)):
            batch_ids[i, : len(row_ids)] = row_ids
            batch_labels[i, : len(row_labels)] = row_labels
        out = {"input_ids": torch.from_numpy(batch_ids), "labels": torch.from_numpy(batch_labels)}
        if packed:
            positions = np.zeros((len(rows), width), dtype=np.int64)
            for i, row in enumerate(rows):
                row_positions = np.asarray(row["position_ids"], dtype=np.int64)
                positions[i, : len(row_positions)] = row_positions
                positions[i, len(row_positions) :] = np.arange(width - len(row_positions))
            # A sample's first label would be predicted from the previous sample's last token: never train it.
            # (Prepared data already stores it as -100; this also guards hand-made rows.)
            batch_labels[positions == 0] = IGNORE_INDEX
            out["position_ids"] = torch.from_numpy(positions)
        else:
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for i, row_ids in enumerate(ids):
                mask[i, : len(row_ids)] = 1
            out["attention_mask"] = torch.from_numpy(mask)
        return out


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad id; RecipeError when it has none (set `special_tokens: {pad_token: ...}`)."""
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        raise RecipeError(
            "the tokenizer has no pad token; set `special_tokens: {pad_token: ...}` in the recipe "
            "(for Llama 3.1: `<|finetune_right_pad_id|>`)"
        )
    return int(pad_id)


def make_collator(settings: Settings, tokenizer: PreTrainedTokenizerBase) -> Collator:
    """The collator a recipe implies: the tokenizer's pad id; pad to sequence_len when pad_to_sequence_len."""
    pad_to = settings.sequence_len if settings.pad_to_sequence_len else None
    return Collator(pad_id=pad_token_id(tokenizer), pad_to=pad_to)
