"""Which kept conversations form the validation split (`val_split`), from a few numbers per conversation.

* random: the first `n_eval` of the seeded permutation (the rule of every release so far).
* newest: the `n_eval` newest by the row's `start` (ISO 8601; without an offset: UTC); ties go to the
  later row in dataset order.
* contact: whole contacts by the row's `contact`. The contacts present are sorted by name and put in a
  seeded random order; walking it, a contact is held out (all its conversations) when they still fit in
  what `n_eval` lacks; if the walk ends short of `n_eval`, the smallest remaining contact (the first of
  equals in that order) is added. So at least `n_eval` conversations are held out, one large contact is
  never taken for a small split when smaller ones fit, and the choice depends only on the data and the seed.

`SplitKeys` reads each row's field as it is read (a float of seconds, or a contact number, per row), so
the streamed build (finetune.data.stream) and the in-memory one (finetune.data.build) plan the same split.
A row without the field, or with one that is not a time or a name, is a DataError naming the row and
the recipe line of `val_split`.
"""

from __future__ import annotations

import logging
from array import array
from datetime import datetime, timezone
from typing import Any

import numpy as np

from finetune.config.settings import Settings
from finetune.errors import DataError, RecipeError

logger = logging.getLogger(__name__)

FIELD = {"newest": "start", "contact": "contact"}


class SplitKeys:
    """Per row, the number `val_split` plans with: seconds since 1970 (newest) or a contact number (contact)."""

    def __init__(self, rule: str, where: str) -> None:
        self.rule, self.where = rule, where
        self.field = FIELD[rule]
        self.contacts: dict[str, int] = {}  # name -> number, in order of first appearance

    def array(self) -> array:
        """An empty typed array for keys of this rule (float seconds, or contact numbers)."""
        return array("d" if self.rule == "newest" else "q")

    @property
    def names(self) -> list[str]:
        return list(self.contacts)

    def read(self, row: dict[str, Any], origin: str) -> float | int:
        """The row's key; DataError naming `origin` when it has none or a bad one."""
        value = row.get(self.field)
        if value is None or value == "":
            raise DataError(
                f"{origin}: this row has no `{self.field}`, which val_split: {self.rule} ({self.where}) needs on "
                f"every row ({self._expected()}); `finetune import` writes it, or use val_split: random"
            )
        if self.rule == "newest":
            return self._seconds(value, origin)
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise DataError(f"{origin}: `contact` must be a name (a string), got {type(value).__name__} "
                            f"(val_split: contact, {self.where})")
        return self.contacts.setdefault(str(value), len(self.contacts))

    def _seconds(self, value: Any, origin: str) -> float:
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.strip())
            except ValueError:
                pass
        if not isinstance(value, datetime):
            raise DataError(f"{origin}: `start` is {value!r}, not {self._expected()} "
                            f"(val_split: newest, {self.where})")
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()

    def _expected(self) -> str:
        if self.rule == "newest":
            return "an ISO 8601 time such as 2023-01-05T21:41:00+00:00"
        return "the contact's name, such as \"Alice\""


def held_out(settings: Settings, n_eval: int, permutation: np.ndarray, keys: np.ndarray | None,
             names: list[str]) -> np.ndarray:
    """A mask over the conversations (dataset order): True for the validation split (see the module doc)."""
    total = len(permutation)
    mask = np.zeros(total, dtype=bool)
    if n_eval == 0:
        return mask
    if settings.val_split == "random":
        mask[permutation[:n_eval]] = True
        return mask
    assert keys is not None and len(keys) == total
    if settings.val_split == "newest":
        newest = np.lexsort((np.arange(total), keys))[total - n_eval :]
        mask[newest] = True
        first = datetime.fromtimestamp(float(keys[newest[0]]), timezone.utc).isoformat()
        logger.info("val_split: newest: the %d conversations from %s on are held out", n_eval, first)
        return mask
    counts = np.bincount(keys.astype(np.int64), minlength=len(names))
    number = {name: i for i, name in enumerate(names)}
    present = sorted(name for name in names if counts[number[name]])
    order = [number[present[i]] for i in np.random.default_rng(settings.seed).permutation(len(present))]
    chosen, held = [], 0
    for contact in order:
        if held + counts[contact] <= n_eval:
            chosen.append(contact)
            held += int(counts[contact])
            if held == n_eval:
                break
    if held < n_eval:
        rest = [contact for contact in order if contact not in chosen]
        smallest = min(rest, key=lambda contact: counts[contact]) if rest else None
        if smallest is not None:
            chosen.append(smallest)
            held += int(counts[smallest])
    if held >= total:
        raise RecipeError(
            f"{settings.where('val_split')}: val_split: contact would hold out all {total} conversations (they "
            f"belong to {len(present)} contact{'s' if len(present) != 1 else ''}); it needs several contacts, "
            "each smaller than what is left to train on: lower val_set_size or use val_split: newest or random"
        )
    mask[np.isin(keys, np.asarray(chosen, dtype=keys.dtype))] = True
    logger.info("val_split: contact: %d of %d contacts held out (%d conversations)", len(chosen), len(present), held)
    return mask
