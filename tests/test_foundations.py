"""Issue 12 "Sound foundations": answers that used to be wrong without a word."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from finetune.config import load_recipe_text
from finetune.errors import RecipeError
from finetune.plan.estimate import plan_memory

SRC = Path(__file__).resolve().parents[1] / "src" / "finetune"

RECIPE = """
base_model: NousResearch/Meta-Llama-3.1-8B
load_in_4bit: true
chat_template: llama3
datasets:
  - path: /path/to/training_data.json
    type: chat_template
output_dir: ./outputs/lora-out
sequence_len: 4096
adapter: qlora
lora_target_linear: true
micro_batch_size: 1
bf16: true
gradient_checkpointing: true
"""


def _settings(deepspeed: str):
    return load_recipe_text(RECIPE, [f"deepspeed={deepspeed}"]).settings


@pytest.mark.parametrize("deepspeed", ["/path/to/deepspeed_configs/my_zero3.json", "/nowhere/my_zero2.json"])
def test_plan_never_guesses_the_zero_stage_from_a_file_name(deepspeed: str) -> None:
    # a missing custom file is an error for `train`; `plan` used to say "fits" with the stage read off the name.
    with pytest.raises(RecipeError, match="deepspeed"):
        plan_memory(_settings(deepspeed), world_size=2)


def test_plan_resolves_a_bundled_stand_in_like_train() -> None:
    plan = plan_memory(_settings("/path/to/deepspeed_configs/zero2.json"), world_size=2)
    assert plan.zero_stage == 2 and Path(plan.deepspeed).name == "zero2.json" and Path(plan.deepspeed).is_file()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


def test_plan_and_launch_do_not_import_each_other() -> None:
    # launch prints the plan (launch -> plan); plan must not reach back into launch (no circle).
    assert not {"finetune.train.launch", "finetune.train"} & _imports(SRC / "plan" / "estimate.py")
    assert not {"finetune.plan.estimate", "finetune.train.launch"} & _imports(SRC / "config" / "deepspeed.py")


def test_ignore_index_is_defined_once() -> None:
    # The untrained-label value lives in finetune.data.tokenize; the collator, packer and loss import it.
    homes, literals = [], []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "IGNORE_INDEX" for t in node.targets):
                homes.append(path.relative_to(SRC).as_posix())
            elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
                if getattr(node.operand, "value", None) == 100:
                    literals.append(f"{path.relative_to(SRC).as_posix()}:{node.lineno}")
    assert homes == ["data/tokenize.py"]
    assert literals == [f"data/tokenize.py:{_line_of(SRC / 'data' / 'tokenize.py', 'IGNORE_INDEX = -100')}"]


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in line)
