"""Replay: a generated reply that repeats a training reply, memorised rather than learned.

Words are runs of letters, digits, `'` or `_`, lowercased. A reply REPLAYS the training data when
- it shares a span of at least SPAN (8) consecutive words with one training reply, or
- it is, word for word, a whole training reply of at least MIN_EXACT (4) words (shorter ones, "ok",
  "haha", "see you", are everyday phrases, not memorised text).

The replay rate is the share of a model's generated replies that replay; the report lists them with
the training reply they repeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from finetune.report.style import words

SPAN = 8
MIN_EXACT = 4


def _normal(text: str) -> tuple[str, ...]:
    return tuple(w.lower() for w in words(text))


@dataclass
class TrainingReplies:
    """The index of the training replies: their word spans of SPAN words and their whole texts."""

    spans: dict[tuple[str, ...], int]
    whole: dict[tuple[str, ...], int]
    texts: list[str]

    @classmethod
    def of(cls, replies: Iterable[str]) -> "TrainingReplies":
        spans: dict[tuple[str, ...], int] = {}
        whole: dict[tuple[str, ...], int] = {}
        texts: list[str] = []
        for text in replies:
            tokens = _normal(text)
            index = len(texts)
            texts.append(text)
            if len(tokens) >= MIN_EXACT:
                whole.setdefault(tokens, index)
            for start in range(len(tokens) - SPAN + 1):
                spans.setdefault(tokens[start:start + SPAN], index)
        return cls(spans, whole, texts)

    def match(self, reply: str) -> str | None:
        """The training reply `reply` repeats (see the module doc), or None."""
        tokens = _normal(reply)
        if tokens in self.whole:
            return self.texts[self.whole[tokens]]
        for start in range(len(tokens) - SPAN + 1):
            hit = self.spans.get(tokens[start:start + SPAN])
            if hit is not None:
                return self.texts[hit]
        return None


def replays(index: TrainingReplies, replies: Sequence[str]) -> list[tuple[int, str]]:
    """(position in `replies`, the training reply it repeats) for every replaying reply."""
    out = []
    for position, reply in enumerate(replies):
        hit = index.match(reply)
        if hit is not None:
            out.append((position, hit))
    return out
