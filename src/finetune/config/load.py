"""Recipe file (+ `--set` overrides) -> frozen `Settings`, or a `RecipeError` naming file:line.

The order is: read YAML with lines -> apply overrides -> rewrite deprecated spellings
(with a notice each) -> validate with pydantic -> remember where every block came from.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import BaseModel, ValidationError

from finetune.config.settings import Section, Settings
from finetune.config.yaml_source import RecipeSource, load_yaml, parse_yaml
from finetune.errors import RecipeError

# Old spelling -> current spelling, for the notices and for "did you mean" suggestions.
DEPRECATED_TOP = {"flash_attention": "attn_implementation: flash_attention_2", "sdp_attention": "attn_implementation: sdpa"}
DEPRECATED_DATASET = {
    "message_field_role": "message_property_mappings: {role: ...}",
    "message_field_content": "message_property_mappings: {content: ...}",
}
MAX_ERRORS = 10


@dataclass(frozen=True)
class LoadedRecipe:
    settings: Settings
    source: RecipeSource
    notices: list[str] = field(default_factory=list)


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> LoadedRecipe:
    """Load and validate a recipe file; `overrides` are `key.sub=value` strings."""
    return _validate(load_yaml(path), overrides)


def load_recipe_text(text: str, overrides: Sequence[str] = (), file: str = "<recipe>") -> LoadedRecipe:
    """Same as `load_recipe` for YAML text (tests, examples)."""
    return _validate(parse_yaml(text, file), overrides)


def _validate(source: RecipeSource, overrides: Sequence[str]) -> LoadedRecipe:
    for override in overrides:
        _apply_override(source, override)
    notices = _rewrite_deprecated(source)
    try:
        settings = Settings.model_validate(source.data)
    except ValidationError as exc:
        raise RecipeError(_format_errors(exc, source)) from None
    _attach(settings, source, ())
    return LoadedRecipe(settings=settings, source=source, notices=notices)


# --- overrides ---------------------------------------------------------------------------


def _apply_override(source: RecipeSource, override: str) -> None:
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"--set {override}: expected KEY=VALUE, e.g. --set lora_r=16 or --set datasets.0.path=x.jsonl")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError(f"--set {override}: the value is not valid YAML ({exc})") from None
    path: list[str | int] = [int(part) if part.isdigit() else part for part in key.split(".")]
    node: Any = source.data
    for depth, part in enumerate(path[:-1]):
        nxt = path[depth + 1]
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise RecipeError(f"--set {override}: `{'.'.join(map(str, path[:depth]))}` has no item {part}")
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise RecipeError(f"--set {override}: `{'.'.join(map(str, path[:depth]))}` is not a mapping")
        if part not in node or node[part] is None:
            node[part] = [] if isinstance(nxt, int) else {}
        node = node[part]
    last = path[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last > len(node):
            raise RecipeError(f"--set {override}: no list item {last}")
        if last == len(node):
            node.append(value)
        else:
            node[last] = value
    elif isinstance(node, dict):
        node[str(last)] = value
    else:
        raise RecipeError(f"--set {override}: cannot set a key inside a plain value")
    source.overrides[tuple(path)] = override


# --- deprecated spellings ------------------------------------------------------------------


def _rewrite_deprecated(source: RecipeSource) -> list[str]:
    data, notices = source.data, []

    def moved(old: tuple, new: tuple, old_text: str, new_text: str) -> None:
        if old in source.lines:
            source.lines.setdefault(new, source.lines[old])
        notices.append(f"{source.where(old)}: `{old_text}` is deprecated; write `{new_text}`")

    for old, attn in (("flash_attention", "flash_attention_2"), ("sdp_attention", "sdpa")):
        if old not in data:
            continue
        enabled = data.pop(old)
        if enabled:
            current = data.get("attn_implementation")
            if current not in (None, attn):
                raise RecipeError(
                    f"{source.where((old,))}: `{old}: true` contradicts `attn_implementation: {current}`; keep one"
                )
            data["attn_implementation"] = attn
        moved((old,), ("attn_implementation",), f"{old}: {str(bool(enabled)).lower()}", f"attn_implementation: {attn}")
    for index, dataset in enumerate(data.get("datasets") or []):
        if not isinstance(dataset, dict):
            continue
        for old, prop in (("message_field_role", "role"), ("message_field_content", "content")):
            if old not in dataset:
                continue
            value = dataset.pop(old)
            mappings = dataset.setdefault("message_property_mappings", {"role": "role", "content": "content"})
            if isinstance(mappings, dict):
                mappings.setdefault("role", "role")
                mappings.setdefault("content", "content")
                mappings[prop] = value
            base = ("datasets", index)
            moved(base + (old,), base + ("message_property_mappings",), f"{old}: {value}",
                  f"message_property_mappings: {{{prop}: {value}}}")
    return notices


# --- error messages --------------------------------------------------------------------------


def _format_errors(exc: ValidationError, source: RecipeSource) -> str:
    lines = [line for error in exc.errors() for line in _describe(error, source)]
    extra = len(lines) - MAX_ERRORS
    return "\n".join(lines[:MAX_ERRORS] + ([f"... and {extra} more"] if extra > 0 else []))


def _describe(error: Any, source: RecipeSource) -> list[str]:
    """The message lines of one pydantic error (the cross-field check gives one per contradiction)."""
    loc = tuple(error["loc"])
    if error["type"] == "contradictions":
        return [f"{source.where(key if isinstance(key, tuple) else (key,))}: {message}"
                for key, message in error["ctx"]["found"]]
    message = error["msg"].removeprefix("Value error, ")
    dotted = ".".join(str(part) for part in loc)
    if error["type"] == "extra_forbidden":
        return [f"{source.where(loc)}: {dotted}: unknown key{_suggest(loc)}"]
    if error["type"] == "missing":
        return [f"{source.where(loc[:-1]) if len(loc) > 1 else source.file}: missing required key `{dotted}`"]
    got = error.get("input")
    shown = f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
    return [f"{source.where(loc)}: {dotted}: {message}{shown}"]


def _suggest(loc: tuple) -> str:
    model = _model_at(loc[:-1])
    if model is None:
        return ""
    key = str(loc[-1])
    known = list(model.model_fields)
    if model is Settings:
        known += list(DEPRECATED_TOP)
    elif model.__name__ == "DatasetSettings":
        known += list(DEPRECATED_DATASET)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f", did you mean `{close[0]}`?"
    if model is Settings:
        for name in known:  # a key that belongs one level down, e.g. `field_messages` at the top
            sub = _model_at((name, 0)) or _model_at((name,))
            if sub is not None and sub is not Settings and key in sub.model_fields:
                return f"; `{key}` belongs under `{name}:`"
    return "; run `finetune keys` for the valid keys"


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The settings class that holds the keys at `loc` (e.g. ('datasets', 0) -> DatasetSettings)."""
    model: Any = Settings
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        model = _unwrap(model.model_fields[part].annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    for arg in typing.get_args(annotation) or ():
        inner = _unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation


def _attach(model: BaseModel, source: RecipeSource, path: tuple) -> None:
    if isinstance(model, Section):
        model._source, model._path = source, path
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            _attach(value, source, path + (name,))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, BaseModel):
                    _attach(item, source, path + (name, index))
