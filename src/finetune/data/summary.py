"""What preprocessing did (`PrepareSummary`, saved as the cache's summary.json) and its progress line."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from finetune.data.pack import packing_efficiency


@dataclass(frozen=True)
class PrepareSummary:
    """What preprocessing did; every dropped conversation is counted under a reason."""

    read: dict[str, int]  # dataset path -> conversations read
    dropped: dict[str, int]  # reason -> count
    truncated: int
    train_samples: int
    eval_samples: int
    train_rows: int
    eval_rows: int
    tokens: int  # real tokens in the train split
    trained_tokens: int  # train tokens with a label
    eval_tokens: int
    packing_efficiency: float | None  # train; None when not packed
    sequence_len: int
    seconds: float
    filler_turns: int = 0  # assistant turns removed by min_assistant_chars (in kept or dropped conversations)
    near_duplicate_examples: list[dict[str, Any]] = field(default_factory=list)  # {similarity, kept, removed}
    tokenized_tokens: int = 0  # every token rendered and tokenized (before the length rules), for tokens/s

    @classmethod
    def of_splits(cls, read: dict[str, int], dropped: dict[str, int], truncated: int, train: "SplitStats",
                  evaluation: "SplitStats", *, sequence_len: int, packed: bool, **extra: Any) -> "PrepareSummary":
        """The summary of a build from its split counts (`extra`: filler_turns, near_duplicate_examples, ...)."""
        return cls(
            read=read, dropped=dropped, truncated=truncated,
            train_samples=train.samples, eval_samples=evaluation.samples,
            train_rows=train.rows, eval_rows=evaluation.rows,
            tokens=train.tokens, trained_tokens=train.trained_tokens, eval_tokens=evaluation.tokens,
            packing_efficiency=packing_efficiency(train.tokens, train.rows, sequence_len) if packed else None,
            sequence_len=sequence_len, seconds=0.0, **extra,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrepareSummary":
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})

    def format_table(self) -> str:
        width = max([len(p) for p in self.read] + [len(r) for r in self.dropped] + [24])
        lines = ["conversations read"]
        lines += [f"  {path:<{width}} {count:>12,}" for path, count in self.read.items()]
        lines.append("dropped")
        lines += [f"  {reason:<{width}} {count:>12,}" for reason, count in self.dropped.items() if count]
        if not any(self.dropped.values()):
            lines.append(f"  {'(none)':<{width}} {0:>12,}")
        lines.append(f"  {'truncated (kept)':<{width}} {self.truncated:>12,}")
        if self.filler_turns:
            lines.append(f"  {'filler turns removed':<{width}} {self.filler_turns:>12,}")
        share = self.trained_tokens / self.tokens if self.tokens else 0.0
        rows = [
            ("train samples", f"{self.train_samples:,}"),
            ("train rows", f"{self.train_rows:,}"),
            ("eval samples", f"{self.eval_samples:,}"),
            ("eval rows", f"{self.eval_rows:,}"),
            ("train tokens", f"{self.tokens:,}"),
            ("trained tokens", f"{self.trained_tokens:,} ({share:.1%})"),
            ("eval tokens", f"{self.eval_tokens:,}"),
        ]
        if self.packing_efficiency is not None:
            rows.append((f"packing efficiency @{self.sequence_len}", f"{self.packing_efficiency:.2%}"))
        rows.append(("seconds", f"{self.seconds:.1f}"))
        if self.tokenized_tokens and self.seconds:
            rows.append(("tokens/s (tokenized)", f"{self.tokenized_tokens / self.seconds:,.0f}"))
        lines += [f"{name:<{width + 2}} {value:>12}" for name, value in rows]
        return "\n".join(lines)

    def format_near_duplicates(self) -> str:
        """The example near-duplicate pairs (kept vs removed, truncated); empty when there are none."""
        lines = []
        for number, pair in enumerate(self.near_duplicate_examples, 1):
            lines.append(f"near-duplicate {number} (Jaccard {pair['similarity']:.2f})")
            lines.append(f"  kept:    {pair['kept']}")
            lines.append(f"  removed: {pair['removed']}")
        return "\n".join(lines)


class SplitStats(NamedTuple):
    """Counts of one prepared split."""

    samples: int
    rows: int
    tokens: int
    trained_tokens: int


NO_SPLIT = SplitStats(0, 0, 0, 0)


def nonzero(counts: dict[str, int]) -> str:
    """`reason count, ...` of the non-zero counts (what filtering dropped), or "nothing"."""
    return ", ".join(f"{reason} {count}" for reason, count in counts.items() if count) or "nothing"


class Progress:
    """One rate-limited status line on stderr (overwritten in place on a terminal)."""

    def __init__(self, enabled: bool, interval: float = 0.5) -> None:
        self.enabled = enabled
        self.interval = interval
        self.tty = enabled and sys.stderr.isatty()
        self.started = time.perf_counter()
        self.last = 0.0
        self.pending = False

    def stage(self, text: str) -> None:
        self._emit(text, force=True)

    def update(self, what: str, done: int, total: int, tokens: int, unit: str = "conversations") -> None:
        rate = tokens / max(time.perf_counter() - self.started, 1e-9)
        self._emit(f"{what} {done:,}/{total:,} {unit} ({rate:,.0f} tok/s)", force=done == total)

    def streaming(self, rows: int, tokens: int, fraction: float | None) -> None:
        """Rows and tokens so far, the rate, and an ETA from the share of the input read (when known)."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        text = f"tokenizing {rows:,} conversations, {tokens:,} tokens ({tokens / elapsed:,.0f} tok/s)"
        if fraction is not None and 0 < fraction < 1:
            text += f", {fraction:.0%} read, ETA {elapsed * (1 - fraction) / fraction:,.0f} s"
        self._emit(text, force=False)

    def done(self) -> None:
        if self.enabled and self.tty and self.pending:
            print(file=sys.stderr, flush=True)
        self.pending = False

    def _emit(self, text: str, *, force: bool) -> None:
        now = time.perf_counter()
        if not self.enabled or (not force and now - self.last < self.interval):
            return
        self.last = now
        if self.tty:
            print(f"\r\033[K{text}", end="", file=sys.stderr, flush=True)
            self.pending = True
        else:
            print(text, file=sys.stderr, flush=True)
