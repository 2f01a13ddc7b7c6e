"""The cache's promise, checked field by field: an equal fingerprint means equal prepared rows.

`test_cache_fields.py` checks the markers against a reviewed list. This sweep does not trust
the list: it changes every top-level setting, one at a time, to another valid value its type
allows, and wherever the fingerprint stays the same it builds the data again and requires the
very same rows. A field that changes the prepared data without the `affects_data` marker fails
here whatever NON_DATA says; `test_the_sweep_finds_a_field_the_fingerprint_ignores` shows it can.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any, Callable

import pytest
from pydantic import ValidationError

from finetune.config.settings import Settings
from finetune.data import cache
from finetune.data.build import build_splits, recipe_template
from finetune.data.summary import Progress
from finetune.errors import FinetuneError
from finetune.model.tokenizer import load_tokenizer

# Values the type alone cannot suggest (paths that must exist), and fields whose change is valid
# only together with others (the companions go into the base and the changed recipe alike).
EXTRA_VALUES: dict[str, list[Any]] = {
    "base_model": ["<copy of the base>"],
    "tokenizer_config": ["<the base>"],
    "lora_target_modules": [["q_proj"]],
    "lora_modules_to_save": [["lm_head"]],
    "lora_model_dir": ["<an adapter dir>"],
    "dedup_threshold": [0.5],
    "dedup_ngram": [2],
}
COMPANIONS: dict[str, dict[str, Any]] = {
    "load_in_4bit": {"adapter": "qlora"},
    "load_in_8bit": {"adapter": "lora"},
    "early_stopping_patience": {"eval_steps": 2},
    "peft_use_dora": {"adapter": "lora"},
    "peft_use_rslora": {"adapter": "lora"},
    "lora_modules_to_save": {"adapter": "lora"},
    "lora_model_dir": {"adapter": "lora"},
    "lora_target_modules": {"adapter": "lora"},
    "chat_template_jinja": {"chat_template": "jinja"},
    "dedup_threshold": {"dedup": "near"},
    "dedup_ngram": {"dedup": "near"},
    # preference tuning: pair data (written by sweep_inputs), unpacked, an adapter (the reference)
    "rl": {"datasets": "<pair datasets>", "sample_packing": False},
    **{key: {"rl": "dpo", "datasets": "<pair datasets>", "sample_packing": False, "adapter": "lora"}
       for key in ("rl_beta", "dpo_loss_type", "dpo_label_smoothing", "precompute_ref_log_probs")},
}
SINGLE_VALUED = {"rl_adapter_ref_model"}  # accepted for Axolotl compatibility; false is its only valid value
SECTIONS = {"datasets", "special_tokens"}  # their fields are all marked; test_cache_fields changes each

Fingerprint = Callable[[Settings, Any, str], str]


def candidates(annotation: Any, current: Any) -> list[Any]:
    """Other values of this type for a field now holding `current` (invalid ones are skipped later)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return [value for value in args if value != current]
    if origin not in (list, dict) and args:  # Optional and other unions: every branch
        out = [None] if type(None) in args and current is not None else []
        return out + [value for arg in args if arg is not type(None) for value in candidates(arg, current)]
    if annotation is bool:
        return [not current] if isinstance(current, bool) else [True, False]
    if annotation in (int, float):
        base = current if isinstance(current, (int, float)) and not isinstance(current, bool) else 1
        return [annotation(base * 2 + 1), max(base // 2, 1) if annotation is int else base / 2 + 0.25]
    if annotation is str:
        return [f"{current}-x" if current else "x"]
    return []


class Sweep:
    """Builds rows in memory for recipe variants, with one tokenizer load per distinct tokenizer setting."""

    def __init__(self, recipe: dict[str, Any], fingerprint: Fingerprint) -> None:
        self.recipe = recipe
        self.fingerprint = fingerprint
        self.tokenizers: dict[str, Any] = {}
        self.known: dict[str, Any] = {}  # recipe JSON -> identity or rows, for the base built once

    def once(self, what: str, settings: Settings, make: Callable[[], Any]) -> Any:
        key = what + settings.model_dump_json()
        if key not in self.known:
            self.known[key] = make()
        return self.known[key]

    def identity(self, settings: Settings) -> tuple[str, Any] | None:
        """(fingerprint, tokenizer) as prepare_data computes them; None when the recipe fails before that."""
        key = json.dumps(
            [settings.base_model, settings.tokenizer_config, settings.trust_remote_code,
             settings.special_tokens.model_dump(mode="json")]
        )
        try:
            if key not in self.tokenizers:
                self.tokenizers[key] = load_tokenizer(settings)
            tokenizer = self.tokenizers[key]
            template = recipe_template(settings, tokenizer)
            return self.fingerprint(settings, tokenizer, template.jinja_source if template else ""), tokenizer
        except FinetuneError:
            return None

    def rows(self, settings: Settings, tokenizer: Any) -> Any:
        splits, summary = build_splits(settings, tokenizer, recipe_template(settings, tokenizer), Progress(False))
        columns = {
            f"{split}.{name}": (ragged.values.tolist(), ragged.offsets.tolist())
            for split, cols in splits.items()
            if cols is not None
            for name, ragged in cols.items()
        }
        return columns, summary

    def settings(self, changes: dict[str, Any]) -> Settings | None:
        try:
            return Settings.model_validate({**self.recipe, **changes})
        except ValidationError:
            return None

    def variant(self, name: str, companions: dict, current: Any, options: list, values: dict) -> Settings | None:
        """The recipe with `name` set to the first option that validates and differs from `current`."""
        for option in options:
            value = values.get(option, option) if isinstance(option, str) else option
            settings = self.settings({**companions, name: value})
            if settings is not None and getattr(settings, name) != current:
                return settings
        return None

    def unmarked_changes(self, fields: list[str], values: dict[str, Any]) -> tuple[list[str], list[str]]:
        """(fields whose change kept the fingerprint but changed the rows, fields with no valid other value)."""
        changed, untried = [], []
        for name in fields:
            field = Settings.model_fields[name]
            companions = {key: values.get(value, value) if isinstance(value, str) else value
                          for key, value in COMPANIONS.get(name, {}).items()}
            base = self.settings(companions) or self.settings({})
            current = getattr(base, name)
            options = candidates(field.annotation, current) + EXTRA_VALUES.get(name, [])
            variant = self.variant(name, companions, current, options, values)
            if variant is None:
                untried.append(name)
                continue
            before, after = self.once("id", base, lambda: self.identity(base)), self.identity(variant)
            if before is None or after is None or before[0] != after[0]:
                continue
            if self.once("rows", base, lambda: self.rows(base, before[1])) != self.rows(variant, after[1]):
                changed.append(name)
        return changed, untried


@pytest.fixture
def sweep_inputs(tmp_path: Path, tiny_llama_dir: Path, make_conversation) -> tuple[dict[str, Any], dict[str, Any]]:
    """A base recipe whose data exercises dedup, truncation, packing and the split; stand-in path values."""
    import shutil

    rows = [make_conversation(i) for i in range(12)] + [make_conversation(i) for i in range(3)]  # duplicates
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    copy = tmp_path / "base-copy"
    shutil.copytree(tiny_llama_dir, copy)
    (tmp_path / "adapter").mkdir()
    recipe = {
        "base_model": str(tiny_llama_dir),
        "chat_template": "llama3",
        "datasets": [{"path": str(data)}],
        "dataset_prepared_path": str(tmp_path / "prepared"),
        "sequence_len": 96,
        "excess_length_strategy": "truncate",
        "sample_packing": True,
        "val_set_size": 0.25,
        "dedup": True,
        "lora_target_linear": True,
        "special_tokens": {"pad_token": "<|finetune_right_pad_id|>"},
    }
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"messages": row["messages"][:-1], "chosen": row["messages"][-1]["content"],
                                         "rejected": "no idea"}) + "\n" for row in rows), encoding="utf-8")
    values = {
        "<pair datasets>": [{"path": str(pairs), "type": "chat_template.default"}],
        "<copy of the base>": str(copy),
        "<the base>": str(tiny_llama_dir),
        "<an adapter dir>": str(tmp_path / "adapter"),
    }
    return recipe, values


@pytest.mark.slow
def test_an_equal_fingerprint_means_equal_rows(sweep_inputs):
    recipe, values = sweep_inputs
    fields = [name for name in Settings.model_fields if name not in SECTIONS | SINGLE_VALUED]
    changed, untried = Sweep(recipe, cache.fingerprint).unmarked_changes(fields, values)
    assert not untried, f"no valid other value for {untried}; add one to EXTRA_VALUES (and COMPANIONS if needed)"
    assert not changed, (
        f"{changed} change the prepared rows but not the cache fingerprint; "
        "mark them json_schema_extra={'affects_data': True}"
    )


def test_the_sweep_finds_a_field_the_fingerprint_ignores(sweep_inputs):
    """A fingerprint blind to dedup and sequence_len (as if they were unmarked) is caught, learning_rate is not."""
    recipe, values = sweep_inputs

    def blind(settings: Settings, tokenizer: Any, source: str) -> str:
        hidden = settings.model_copy(update={"dedup": False, "sequence_len": 1})
        return cache.fingerprint(hidden, tokenizer, source)

    changed, untried = Sweep(recipe, blind).unmarked_changes(["dedup", "sequence_len", "learning_rate"], values)
    assert (changed, untried) == (["dedup", "sequence_len"], [])
