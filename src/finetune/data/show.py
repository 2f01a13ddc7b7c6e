"""Render prepared rows for humans: which tokens are trained, which are masked, where samples start.

On a terminal, trained text is green and masked text dim grey. Otherwise (a file, a
pipe, a test) masked text is wrapped in `⟦...⟧` and trained text is left plain.
Within a packed row, each sample starts with a `── sample i/n ──` line.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping

import numpy as np

from finetune.data.tokenize import IGNORE_INDEX
MASK_OPEN, MASK_CLOSE = "⟦", "⟧"
GREEN, DIM, BOLD, RESET = "\033[32m", "\033[2m", "\033[1m", "\033[0m"


def sample_lengths(row: Mapping[str, Any]) -> list[int]:
    """Lengths of the samples in a row: the `lengths` column, else position_ids restarts, else one sample."""
    if row.get("lengths") is not None:
        return [int(n) for n in row["lengths"]]
    positions = row.get("position_ids")
    if positions is None:
        return [len(row["input_ids"])]
    starts = np.flatnonzero(np.asarray(positions) == 0).tolist() + [len(positions)]
    return [end - start for start, end in zip(starts, starts[1:]) if end > start]


def render_row(row: Mapping[str, Any], tokenizer: Any, *, color: bool, title: str = "row") -> str:
    ids = np.asarray(row["input_ids"], dtype=np.int64)
    trained = np.asarray(row["labels"], dtype=np.int64) != IGNORE_INDEX
    lengths = sample_lengths(row)
    head = f"{title} · {len(ids):,} tokens · {int(trained.sum()):,} trained · {len(lengths)} sample(s)"
    out = [f"{BOLD}══ {head} ══{RESET}" if color else f"══ {head} ══"]
    start = 0
    for number, length in enumerate(lengths, 1):
        end = start + length
        if len(lengths) > 1:
            count = int(trained[start:end].sum())
            line = f"── sample {number}/{len(lengths)} · {length:,} tokens · {count:,} trained ──"
            out.append(f"{DIM}{line}{RESET}" if color else line)
        out.append(_render_span(ids[start:end], trained[start:end], tokenizer, color))
        start = end
    return "\n".join(out)


def render_rows(dataset: Any, tokenizer: Any, count: int, *, color: bool | None = None) -> str:
    """The first `count` rows of a prepared split, with a legend."""
    color = sys.stdout.isatty() if color is None else color
    legend = (
        f"legend: {GREEN}trained{RESET} {DIM}masked{RESET}"
        if color
        else f"legend: plain = trained, {MASK_OPEN}...{MASK_CLOSE} = masked (no loss)"
    )
    blocks = [legend]
    for index in range(min(count, len(dataset))):
        blocks.append(render_row(dataset[index], tokenizer, color=color, title=f"row {index}"))
    return "\n\n".join(blocks)


def _render_span(ids: np.ndarray, trained: np.ndarray, tokenizer: Any, color: bool) -> str:
    if len(ids) == 0:
        return ""
    cuts = np.flatnonzero(np.diff(trained.astype(np.int8))) + 1
    bounds = [0, *cuts.tolist(), len(ids)]
    parts = []
    for start, end in zip(bounds, bounds[1:]):
        text = tokenizer.decode(ids[start:end].tolist(), skip_special_tokens=False)
        if trained[start]:
            parts.append(f"{GREEN}{text}{RESET}" if color else text)
        else:
            parts.append(f"{DIM}{text}{RESET}" if color else f"{MASK_OPEN}{text}{MASK_CLOSE}")
    return "".join(parts)


def render_pairs(dataset: Any, tokenizer: Any, count: int, *, color: bool | None = None) -> str:
    """The first `count` prepared preference pairs: the prompt (masked) and both replies (scored)."""
    color = sys.stdout.isatty() if color is None else color
    legend = (
        f"legend: {GREEN}scored reply{RESET} {DIM}prompt (not scored){RESET}"
        if color
        else f"legend: plain = scored reply, {MASK_OPEN}...{MASK_CLOSE} = prompt (not scored)"
    )
    blocks = [legend]
    for index in range(min(count, len(dataset))):
        row = dataset[index]
        prompt = np.asarray(row["prompt_ids"], dtype=np.int64)
        lines = [f"══ pair {index} · prompt {len(prompt):,} tokens ══"]
        lines.append(_render_span(prompt, np.zeros(len(prompt), dtype=bool), tokenizer, color))
        for side in ("chosen", "rejected"):
            reply = np.asarray(row[f"{side}_ids"], dtype=np.int64)
            lines.append(f"── {side} · {len(reply):,} scored tokens ──")
            lines.append(_render_span(reply, np.ones(len(reply), dtype=bool), tokenizer, color))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
