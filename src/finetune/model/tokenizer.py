"""Load the tokenizer a recipe names and apply its `special_tokens`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from finetune.config.settings import Settings, SpecialTokens
from finetune.errors import RecipeError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast


@dataclass(frozen=True)
class SpecialTokenReport:
    """What `apply_special_tokens` changed: roles set, and which tokens are new to the vocabulary."""

    assigned: dict[str, str] = field(default_factory=dict)
    new_tokens: list[str] = field(default_factory=list)


def load_tokenizer(settings: Settings) -> PreTrainedTokenizerFast:
    """The recipe's tokenizer (fast), with special tokens applied. Raises RecipeError naming the recipe line."""
    name = settings.tokenizer_config or settings.base_model
    key = "tokenizer_config" if settings.tokenizer_config else "base_model"
    require_local_or_cached(name, settings.where(key), key)
    try:
        if _is_plain_fast_tokenizer(name):
            # The generic fast class needs no torch import (AutoTokenizer pulls in ~3 s of it).
            from transformers import PreTrainedTokenizerFast as TokenizerClass
        else:
            from transformers import AutoTokenizer as TokenizerClass
        tokenizer = TokenizerClass.from_pretrained(name, trust_remote_code=settings.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{settings.where(key)}: cannot load the tokenizer from `{name}`: {exc}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise RecipeError(f"{settings.where(key)}: `{name}` has no fast tokenizer (tokenizer.json); finetune needs one")
    apply_special_tokens(tokenizer, settings.special_tokens)
    return tokenizer


def apply_special_tokens(tokenizer: PreTrainedTokenizerBase, tokens: SpecialTokens) -> SpecialTokenReport:
    """Set bos/eos/pad/unk and additional special tokens; report which are new to the vocabulary."""
    vocab = tokenizer.get_vocab()
    assigned: dict[str, str] = {}
    new: list[str] = []
    for role in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = getattr(tokens, role)
        if value is None:
            continue
        if value not in vocab:
            new.append(value)
        assigned[role] = value
    if assigned:
        tokenizer.add_special_tokens(assigned)
    new.extend(token for token in tokens.additional_special_tokens if token not in vocab and token not in new)
    if tokens.additional_special_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(tokens.additional_special_tokens)})
    return SpecialTokenReport(assigned=assigned, new_tokens=new)


def _is_plain_fast_tokenizer(name: str) -> bool:
    """True for a local tokenizer that declares the generic fast class (Llama 3 does)."""
    config = Path(name).expanduser() / "tokenizer_config.json"
    if not config.is_file() or not (config.parent / "tokenizer.json").is_file():
        return False
    try:
        declared = json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class")
    except (OSError, ValueError):
        return False
    return declared in ("PreTrainedTokenizerFast", "TokenizersBackend")


def require_local_or_cached(name: str, where: str, key: str) -> None:
    """Fail early, with the recipe line, when a model is neither a local directory nor in the HF cache."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise RecipeError(f"{where}: {key} `{name}` is a file; expected a model directory or a hub id")
        return
    looks_like_path = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1
    if looks_like_path:
        raise RecipeError(f"{where}: {key} `{name}`: no such directory")
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return
    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise RecipeError(
            f"{where}: {key} `{name}` is not a local directory and is not in the Hugging Face cache "
            "(HF_HUB_OFFLINE=1); download it first (`hf download {name}`) or point it at a local directory"
        )


def eos_ids(first: int | Sequence[int] | None, *rest: int | Sequence[int] | None) -> list[int]:
    """One eos list: `first` (the trained end-of-turn id) then every other id, each once, in order.

    Each argument is None, an id or a list of ids, as `eos_token_id` is in configs.
    """
    ids: list[int] = []
    for value in (first, *rest):
        for item in [] if value is None else [value] if isinstance(value, int) else list(value):
            if isinstance(item, int) and item >= 0 and item not in ids:
                ids.append(item)
    return ids
