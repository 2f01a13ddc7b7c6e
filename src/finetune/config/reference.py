"""The recipe reference page (docs/recipe-reference.md), generated from the field docs."""

from __future__ import annotations

from finetune.config.describe import key_reference

HEADER = """\
# Recipe reference

Every key a recipe may hold, generated from the field docs in `src/finetune/config/settings.py`
by `python scripts/gen_recipe_reference.py` (a test fails when this page is stale).
`finetune keys` prints the same list. Unknown keys are errors.

| key | type | default | meaning |
|---|---|---|---|
"""


def reference_markdown() -> str:
    rows = [
        f"| `{key}` | {_cell(type_)} | {_cell(default)} | {_cell(meaning)} |"
        for key, type_, default, meaning in key_reference()
    ]
    return HEADER + "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
