"""YAML -> plain Python data plus the line of every key, so errors can say `recipe.yml:23`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from finetune.errors import RecipeError

Path_ = tuple[str | int, ...]


@dataclass
class RecipeSource:
    """A recipe's data and where each value came from (`path` -> 1-based line)."""

    file: str
    data: dict[str, Any]
    lines: dict[Path_, int] = field(default_factory=dict)
    # Values set with `--set key=value` point at the flag instead of a line.
    overrides: dict[Path_, str] = field(default_factory=dict)

    def where(self, path: Path_) -> str:
        """`file:line` for `path`, or its nearest located parent, or just the file."""
        path = tuple(path)
        for end in range(len(path), -1, -1):
            key = path[:end]
            if key in self.overrides:
                return f"--set {self.overrides[key]}"
            if key in self.lines:
                return f"{self.file}:{self.lines[key]}"
        return self.file


def load_yaml(path: str | Path) -> RecipeSource:
    """Read a recipe safely (no Python tags), keeping key lines; reject duplicate keys."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read recipe ({exc})") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, file: str = "<recipe>") -> RecipeSource:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise RecipeError(_syntax_error(exc, file)) from None
    if root is None:
        raise RecipeError(f"{file}: the recipe is empty; expected a mapping such as `base_model: ...`")
    if not isinstance(root, yaml.MappingNode):
        raise RecipeError(f"{file}:{root.start_mark.line + 1}: a recipe must be a mapping of `key: value` lines")
    lines: dict[Path_, int] = {}
    data = _to_python(root, (), lines, file)
    return RecipeSource(file=file, data=data, lines=lines)


def _syntax_error(exc: yaml.YAMLError, file: str) -> str:
    """`file:LINE: invalid YAML: ...` at the line where the parser noticed, naming the line where the
    construct it was reading began (an unclosed `[`, `{` or quote is usually the real mistake)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{file}:{mark.line + 1}" if mark is not None else file
    message = f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}"
    start, context = getattr(exc, "context_mark", None), getattr(exc, "context", None)
    if start is not None and context and (mark is None or start.line != mark.line):
        what = context.removeprefix("while parsing ").removeprefix("while scanning ")
        hint = "is a closing bracket or quote missing?" if "block" not in what else "check the indentation"
        message += f" (in {what} that starts at line {start.line + 1}; {hint})"
    return message


def _to_python(node: yaml.Node, path: Path_, lines: dict[Path_, int], file: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node, file)
            if not isinstance(key, str):
                key = str(key)
            line = key_node.start_mark.line + 1
            if key in out:
                raise RecipeError(
                    f"{file}:{line}: `{key}` is set twice (first at line {lines[path + (key,)]}); keep one"
                )
            lines[path + (key,)] = line
            out[key] = _to_python(value_node, path + (key,), lines, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            items.append(_to_python(item, path + (index,), lines, file))
        return items
    return _scalar(node, file)


def _scalar(node: yaml.Node, file: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise RecipeError(f"{file}:{node.start_mark.line + 1}: expected a plain key, found a nested structure")
    return _construct(node, file)


def _construct(node: yaml.ScalarNode, file: str) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{file}:{node.start_mark.line + 1}: {problem}") from None
    finally:
        loader.dispose()
