"""The one batched generation path (`finetune report`; `serve` reuses it): prompts of token ids in, trimmed
replies out.

- Prompts are sorted by length and cut into batches of `batch_size`, each left-padded (the pad id, an
  attention mask of zeros over the padding), so every row's new tokens start at the same column and
  rows of similar length share a batch (little padding); replies come back in the prompts' order.
- Greedy decoding by default (`temperature` 0); `temperature` > 0 samples with `top_p`.
- A row stops at any of `stop_ids` (the trained end-of-turn ids, `finetune.runs.read.stop_token_ids`) or
  at any of `stop_strings` (`finetune.runs.read.stop_strings`: end-of-turn markers that the tokenizer splits into several tokens, e.g.
  `<|im_end|>` under chatml on a Llama 3 tokenizer): transformers' stop-string criterion ends that row,
  and the text is cut before the first stop string, so neither ever shows in a reply.
- Replies are decoded without special tokens and stripped of surrounding whitespace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from finetune.errors import FinetuneError
from finetune.runs.read import cut_at_stop

if TYPE_CHECKING:
    import torch
    from transformers import GenerationConfig


@dataclass(frozen=True)
class GenerationSettings:
    """How replies are generated; temperature 0 is greedy decoding."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    batch_size: int = 8

    def check(self) -> None:
        if self.temperature < 0:
            raise FinetuneError(f"--temperature {self.temperature}: must be 0 (greedy) or more")
        if not 0 < self.top_p <= 1:
            raise FinetuneError(f"--top-p {self.top_p}: must be in (0, 1]")
        if self.max_new_tokens <= 0:
            raise FinetuneError(f"--max-new-tokens {self.max_new_tokens}: must be positive")
        if self.batch_size <= 0:
            raise FinetuneError(f"--batch-size {self.batch_size}: must be positive")


@dataclass(frozen=True)
class Generated:
    """One reply: its text and how many tokens the model produced for it (up to and including the stop)."""

    text: str
    new_tokens: int


def trim(text: str, strings: Sequence[str]) -> str:
    """`text` cut before the first occurrence of any stop string, stripped (as `finetune chat` shows a reply)."""
    return cut_at_stop(text, strings)[0].strip()


def generation_config(*, temperature: float, top_p: float, max_new_tokens: int, stop_ids: Sequence[int],
                      pad_id: int, stop_strings: Sequence[str] = ()) -> GenerationConfig:
    """The one translation of sampling settings into transformers' GenerationConfig, for chat, report and serve:
    greedy at temperature 0 (no top-k anywhere), stopping at every stop id."""
    from transformers import GenerationConfig

    sample = temperature > 0
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=temperature if sample else None,
        top_p=top_p if sample else None,
        top_k=None,
        eos_token_id=list(stop_ids),
        pad_token_id=pad_id,
        stop_strings=list(stop_strings) or None,
    )


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of `prompts` left-padded to the longest, so every row's new tokens start at
    the same column."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if len(prompt):
            ids[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
            mask[row, width - len(prompt):] = 1
    return ids, mask


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    settings: GenerationSettings,
    *,
    stop_ids: Sequence[int],
    stop_strings: Sequence[str] = (),
    pad_id: int | None = None,
    on_batch: Callable[[list[int], list[Generated]], None] | None = None,
) -> list[Generated]:
    """Replies to `prompts` (token ids, already rendered with the chat template), in their order.

    `on_batch(indices, replies)` is called after each batch (progress, caching)."""
    if not prompts:
        return []
    settings.check()
    if not stop_ids:
        raise FinetuneError("generation needs at least one stop token id (the model's end-of-turn)")
    pad = pad_id if pad_id is not None else tokenizer.pad_token_id
    pad = int(pad if pad is not None else stop_ids[0])
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    out: list[Generated | None] = [None] * len(prompts)
    for first in range(0, len(order), settings.batch_size):
        indices = order[first:first + settings.batch_size]
        replies = _generate_batch(model, tokenizer, [prompts[i] for i in indices], settings, list(stop_ids),
                                  list(stop_strings), pad)
        for index, reply in zip(indices, replies):
            out[index] = reply
        if on_batch is not None:
            on_batch(indices, replies)
    return [reply for reply in out if reply is not None]


def _generate_batch(model: Any, tokenizer: Any, prompts: list[Sequence[int]], settings: GenerationSettings,
                    stop_ids: list[int], strings: list[str], pad: int) -> list[Generated]:
    import torch

    ids, mask = left_pad(prompts, pad)
    width = ids.shape[1]
    device = next(model.parameters()).device
    config = generation_config(temperature=settings.temperature, top_p=settings.top_p,
                               max_new_tokens=settings.max_new_tokens, stop_ids=stop_ids, pad_id=pad,
                               stop_strings=strings)
    with torch.no_grad():
        output = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                                tokenizer=tokenizer if strings else None)
    new = output[:, width:].tolist()
    stops = set(stop_ids)
    replies = []
    for tokens in new:
        end = next((i for i, token in enumerate(tokens) if token in stops), None)
        produced = tokens if end is None else tokens[:end]
        while end is None and produced and produced[-1] == pad:  # a row ended by a stop string, then padded
            produced = produced[:-1]
        count = len(produced) + (0 if end is None else 1)
        text = tokenizer.decode(produced, skip_special_tokens=True)
        replies.append(Generated(trim(text, strings), count))
    return replies
